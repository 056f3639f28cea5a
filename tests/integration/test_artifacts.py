"""Lock, fetch, mirrors and bundles against the RKE2/Zarf stand-ins on a loopback mirror."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagefactory.recipes.load import RecipeBook
from tests.conftest import RECIPES
from tests.standins.mirror import ReleaseMirror, upstream_bases
from tests.standins.release import make_rke2_release, make_zarf_release
from tests.standins.updates_mirror import UpstreamSite

RKE2_OLD, RKE2_NEW, ZARF = "v1.31.4+rke2r1", "v1.31.5+rke2r1", "v0.84.0"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    rel = make_rke2_release(tmp_path / "mirror", RKE2_OLD)
    make_rke2_release(tmp_path / "mirror", RKE2_NEW)
    zarf = make_zarf_release(tmp_path / "mirror", ZARF)
    recipes = tmp_path / "recipes"
    shutil.copytree(RECIPES, recipes)
    with ReleaseMirror(tmp_path / "mirror") as mirror:
        mirror.channels["stable"] = RKE2_OLD
        offline_upstreams(recipes, tmp_path / "mirror", mirror.url)
        config = tmp_path / "imagefactory.yaml"
        config.write_text(yaml.safe_dump({"upstream": upstream_bases(mirror.url)}))
        yield {"tmp": tmp_path, "recipes": recipes, "config": config, "mirror": mirror, "rke2": rel,
               "zarf": zarf, "work": tmp_path / "work"}


def offline_upstreams(recipes: Path, root: Path, url: str) -> None:
    """Point the copied recipes' base sources and package mirrors at the loopback mirror and serve
    what `lock update` reads there (apt Release files, SHA256SUMS): no test talks to the internet."""
    up = UpstreamSite(root)
    date = "Sat, 30 Nov 2026 00:00:00 UTC"
    up.release("debian", "bookworm", date)
    up.release("debian", "bookworm-updates", date)
    up.release("debian-security", "bookworm-security", date)
    for codename in ("jammy", "noble"):
        for suite in (codename, f"{codename}-updates", f"{codename}-security"):
            up.release("ubuntu", suite, date)
    for rel in ("22.04", "24.04"):
        up.cloud_image(f"cloud/releases/{rel}/release", f"ubuntu-{rel}-server-cloudimg-amd64.img",
                       rel.encode())
    suse = root / "suse/install/SLE-Micro-5.5-GM"
    suse.mkdir(parents=True)
    qcow = "SLE-Micro.x86_64-5.5.0-Default-qcow-GM.qcow2"
    (suse / qcow).write_bytes(b"sle micro")
    (suse / f"{qcow}.sha256").write_text(f"{hashlib.sha256(b'sle micro').hexdigest()}  {qcow}\n")
    for p in recipes.glob("*.yaml"):
        text = (p.read_text().replace("http://deb.debian.org", url)
                .replace("http://archive.ubuntu.com", url)
                .replace("https://cloud-images.ubuntu.com", f"{url}/cloud")
                .replace("https://download.suse.com", f"{url}/suse"))
        data = yaml.safe_load(text)
        if data.get("builder") == "packer" or p.stem.startswith(("ubuntu-", "debian-12-packer")):
            ubuntu = "ubuntu" in p.stem or p.stem in ("rke2-node", "rke2-node-packer")
            mirrors = [f"{url}/ubuntu"] if ubuntu else [f"{url}/debian"]
            data.setdefault("packer", {})["package_mirrors"] = mirrors
            text = yaml.safe_dump(data, sort_keys=False)
        p.write_text(text)


def cli(site: dict[str, Any], *args: str, workdir: Path | None = None,
        config: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagefactory.cli", "--recipes", str(site["recipes"]),
         "--config", str(config or site["config"]), "--workdir", str(workdir or site["work"]), *args],
        capture_output=True, text=True, timeout=300)


def lock(site: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((site["recipes"] / "imagefactory.lock").read_text())
    return data


def test_lock_update_resolves_channels_and_records_hashes(site: dict[str, Any]) -> None:
    r = cli(site, "--json", "lock", "update")
    assert r.returncode == 0, r.stderr
    entries = lock(site)["recipes"]
    # every recipe: the RKE2 ones with their artifacts, all with their base source (nightly)
    assert set(entries) == set(RecipeBook(site["recipes"]).names())
    assert entries["debian-12-base"]["source"]["security"]["suite"] == "bookworm-security"
    assert len(entries["ubuntu-22.04-cloud"]["source"]["sha256"]) == 64
    assert entries["ubuntu-22.04-base"]["source"]["updates"]["suite"] == "jammy-updates"
    e = entries["rke2-node-debian"]
    assert e["rke2"] == {"version": RKE2_OLD, "channel": "stable", "arch": "amd64"}
    names = {a["name"]: a for a in e["artifacts"]}
    assert set(names) == {"sha256sum-amd64.txt", "rke2.linux-amd64.tar.gz", "install.sh",
                          "rke2-images-core.linux-amd64.tar.zst", "rke2-images-canal.linux-amd64.tar.zst",
                          "checksums.txt", f"zarf_{ZARF}_Linux_amd64", f"zarf-init-amd64-{ZARF}.tar.zst"}
    assert names["rke2.linux-amd64.tar.gz"]["sha256"] == site["rke2"].sha256["rke2.linux-amd64.tar.gz"]
    assert names["rke2.linux-amd64.tar.gz"]["url"].endswith("/v1.31.4%2Brke2r1/rke2.linux-amd64.tar.gz")
    assert not any(n.endswith(".txt") and n.startswith("rke2-images") for n in names)
    assert "/v1-release/channels/stable" in site["mirror"].requests
    # an SELinux node (SLE Micro) also pins rke2-selinux - the newest build by rpmvercmp (0.18,
    # not 0.9) - and the repository's key, from the repository install.sh configures
    sle = {a["name"]: a for a in entries["rke2-node-sle-micro"]["artifacts"]}
    rpm = sle["rke2-selinux-0.18-1.slemicro.noarch.rpm"]
    assert rpm["role"] == "rke2-selinux" and rpm["url"].endswith(
        "/rpm/rke2/stable/common/slemicro/noarch/rke2-selinux-0.18-1.slemicro.noarch.rpm")
    served = site["tmp"] / "mirror/rpm/rke2/stable/common/slemicro/noarch" / rpm["name"]
    assert rpm["sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
    assert sle["public.key"]["role"] == "rke2-rpm-key"
    assert not any(a["role"].startswith("rke2-selinux") for a in e["artifacts"])  # no SELinux on Debian
    # A channel move shows up as a diff, and only the next `lock update` applies it.
    site["mirror"].channels["stable"] = RKE2_NEW
    r = cli(site, "--json", "lock", "update", "rke2-node-debian")
    changes = json.loads(r.stdout)["changes"]["rke2-node-debian"]
    assert f"rke2: {RKE2_OLD} -> {RKE2_NEW}" in changes


def test_fetch_verifies_and_caches(site: dict[str, Any]) -> None:
    assert cli(site, "lock", "update", "rke2-node-debian").returncode == 0
    r = cli(site, "--json", "artifacts", "fetch", "rke2-node-debian")
    assert r.returncode == 0, r.stderr
    paths = json.loads(r.stdout)["artifacts"]
    assert len(paths) == 8 and all("/cache/sha256/" in p for p in paths.values())
    before = len(site["mirror"].requests)
    assert cli(site, "artifacts", "fetch", "rke2-node-debian").returncode == 0
    assert len(site["mirror"].requests) == before  # all from the cache


def test_tampered_artifact_is_refused(site: dict[str, Any]) -> None:
    assert cli(site, "lock", "update", "rke2-node-debian").returncode == 0
    core = site["rke2"].directory / "rke2-images-core.linux-amd64.tar.zst"
    data = bytearray(core.read_bytes())
    data[100] ^= 0xFF  # one byte
    core.write_bytes(bytes(data))
    r = cli(site, "artifacts", "fetch", "rke2-node-debian")
    assert r.returncode == 1
    expected = site["rke2"].sha256["rke2-images-core.linux-amd64.tar.zst"]
    assert "rke2-images-core.linux-amd64.tar.zst" in r.stderr
    assert f"sha256 mismatch: expected {expected}, got " in r.stderr
    assert not (site["work"] / "cache/sha256" / expected).exists()


def test_missing_artifact_offline_says_how_to_get_it(site: dict[str, Any]) -> None:
    assert cli(site, "lock", "update", "rke2-node-debian").returncode == 0
    offline = site["tmp"] / "offline.yaml"
    offline.write_text(yaml.safe_dump({"upstream": upstream_bases(site["mirror"].url), "offline": True}))
    r = cli(site, "artifacts", "fetch", "rke2-node-debian", config=offline)
    assert r.returncode == 1
    assert "is not available; tried: cache" in r.stderr
    assert "imagefactory artifacts fetch rke2-node-debian" in r.stderr
    assert "artifacts import bundle.tar" in r.stderr


def test_file_mirror_serves_content_addressed_blobs(site: dict[str, Any]) -> None:
    assert cli(site, "lock", "update", "rke2-node-debian").returncode == 0
    assert cli(site, "artifacts", "fetch", "rke2-node-debian").returncode == 0
    mirror_dir = site["tmp"] / "blob-mirror"
    shutil.copytree(site["work"] / "cache", mirror_dir, ignore=shutil.ignore_patterns("tmp"))
    cfg = site["tmp"] / "mirrored.yaml"
    cfg.write_text(yaml.safe_dump({"mirrors": [f"file://{mirror_dir}"], "offline": True}))
    r = cli(site, "artifacts", "fetch", "rke2-node-debian", workdir=site["tmp"] / "w2", config=cfg)
    assert r.returncode == 0, r.stderr


def test_export_import_roundtrip_and_corrupt_bundle(site: dict[str, Any]) -> None:
    assert cli(site, "lock", "update", "rke2-node-debian").returncode == 0
    bundle = site["tmp"] / "bundle.tar"
    assert cli(site, "artifacts", "export", "rke2-node-debian", "-o", str(bundle)).returncode == 0
    other = site["tmp"] / "disconnected"
    r = cli(site, "--json", "artifacts", "import", str(bundle), workdir=other)
    assert r.returncode == 0, r.stderr
    assert len(list((other / "cache/sha256").iterdir())) == 8
    # A corrupted copy: one byte of one blob changed. Nothing may enter the cache.
    bad = site["tmp"] / "bad.tar"
    with tarfile.open(bundle) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            f = src.extractfile(m)
            data = f.read() if f else b""
            if m.name.startswith("sha256/") and m.size > 200:
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            dst.addfile(m, io.BytesIO(data))
    fresh = site["tmp"] / "fresh"
    r = cli(site, "artifacts", "import", str(bad), workdir=fresh)
    assert r.returncode == 1 and "sha256 mismatch" in r.stderr
    assert not (fresh / "cache/sha256").exists() or not list((fresh / "cache/sha256").iterdir())


def test_stale_or_missing_lock_fails_before_building(site: dict[str, Any]) -> None:
    r = cli(site, "build", "rke2-node-debian")
    assert r.returncode == 2 and "no lock entry for rke2-node-debian" in r.stderr
    assert cli(site, "lock", "update", "rke2-node-debian").returncode == 0
    recipe = site["recipes"] / "rke2-node-debian.yaml"
    recipe.write_text(recipe.read_text().replace("images: [core, canal]", "images: [core, calico]"))
    r = cli(site, "build", "rke2-node-debian")
    assert r.returncode == 2 and "does not match the recipe" in r.stderr
    assert "imagefactory lock update rke2-node-debian" in r.stderr
    assert not (site["work"] / "builds").exists()


def test_zarf_init_version_mismatch_in_lock_is_refused(site: dict[str, Any]) -> None:
    assert cli(site, "lock", "update", "rke2-node-debian").returncode == 0
    data = lock(site)
    for a in data["recipes"]["rke2-node-debian"]["artifacts"]:
        if a["role"] == "zarf-init":
            a["name"] = "zarf-init-amd64-v0.83.0.tar.zst"
    (site["recipes"] / "imagefactory.lock").write_text(json.dumps(data))
    r = cli(site, "build", "rke2-node-debian")
    assert r.returncode == 2
    assert "zarf-init-amd64-v0.83.0.tar.zst does not match the binary version v0.84.0" in r.stderr


def test_zarf_packages_are_locked_and_fetched_by_hash(site: dict[str, Any]) -> None:
    pkg = site["tmp"] / "mirror/packages/zarf-package-demo-amd64-1.0.0.tar.zst"
    pkg.parent.mkdir(parents=True)
    pkg.write_bytes(b"demo package v1\n")
    recipe = site["recipes"] / "rke2-node-debian.yaml"
    url = f"{site['mirror'].url}/packages/{pkg.name}"
    recipe.write_text(recipe.read_text().replace("  init_package: true\n",
                                                 f"  init_package: true\n  packages: [{url}]\n"))
    assert cli(site, "lock", "update", "rke2-node-debian").returncode == 0
    locked = {a["name"]: a for a in lock(site)["recipes"]["rke2-node-debian"]["artifacts"]}
    assert locked[pkg.name]["sha256"] == hashlib.sha256(b"demo package v1\n").hexdigest()
    assert locked[pkg.name]["role"] == "zarf-package"
    pkg.write_bytes(b"demo package v2, republished under the same URL\n")
    r = cli(site, "artifacts", "fetch", "rke2-node-debian")
    assert r.returncode == 1 and f"{pkg.name} from {url}: sha256 mismatch" in r.stderr


def _cloud_recipe(site: dict[str, Any], sums: str) -> tuple[Path, str]:
    d = site["tmp"] / "mirror/releases/22.04/release"
    d.mkdir(parents=True)
    image = d / "ubuntu-22.04-server-cloudimg-amd64.img"
    image.write_bytes(b"QFI\xfb" + b"\0" * 4096)
    (d / "SHA256SUMS").write_text(sums.format(sha=hashlib.sha256(image.read_bytes()).hexdigest()))
    base = f"{site['mirror'].url}/releases/22.04/release"
    recipe = site["recipes"] / "ubuntu-22.04-cloud.yaml"
    text = recipe.read_text()
    text = text.replace(f"{site['mirror'].url}/cloud/releases/22.04/release", base)  # see offline_upstreams
    recipe.write_text(text)
    return image, f"{base}/{image.name}"


def test_cloud_image_fetched_and_verified_against_sha256sums(site: dict[str, Any]) -> None:
    other = "0" * 64
    image, _ = _cloud_recipe(site, "{sha} *ubuntu-22.04-server-cloudimg-amd64.img\n"
                                   f"{other} *other.img\n")
    r = cli(site, "--json", "artifacts", "fetch", "ubuntu-22.04-cloud")
    assert r.returncode == 0, r.stderr
    cached = Path(json.loads(r.stdout)["artifacts"][image.name])
    assert cached.read_bytes() == image.read_bytes()


def test_cloud_image_checksum_mismatch_is_refused(site: dict[str, Any]) -> None:
    image, url = _cloud_recipe(site, "{sha} *ubuntu-22.04-server-cloudimg-amd64.img\n")
    image.write_bytes(image.read_bytes() + b"republished behind the same URL")
    r = cli(site, "artifacts", "fetch", "ubuntu-22.04-cloud")
    assert r.returncode == 1
    assert f"error: {image.name} from {url}: sha256 mismatch: expected " in r.stderr
    assert "Traceback" not in r.stderr


def test_cloud_image_missing_from_sums(site: dict[str, Any]) -> None:
    _cloud_recipe(site, "{sha} *something-else.img\n")
    r = cli(site, "artifacts", "fetch", "ubuntu-22.04-cloud")
    assert r.returncode == 1 and "lists no ubuntu-22.04-server-cloudimg-amd64.img" in r.stderr


def test_build_rke2_node_fails_early_when_the_cloud_image_is_unreachable(site: dict[str, Any]) -> None:
    """The Packer path of the RKE2 node (`build rke2-node-packer`, Ubuntu 22.04 from Canonical's
    cloud image): with the inputs locked, an unreachable cloud image stops the build at its first
    step, naming the URL and how to pre-stage."""
    assert cli(site, "lock", "update", "rke2-node-packer").returncode == 0
    base = f"{site['mirror'].url}/releases/22.04/release"  # the stand-in serves no such image
    recipe = site["recipes"] / "ubuntu-22.04-cloud.yaml"
    recipe.write_text(recipe.read_text().replace(f"{site['mirror'].url}/cloud/releases/22.04/release", base))
    r = cli(site, "build", "rke2-node-packer", "--skip-tests")
    assert r.returncode == 1, r.stderr
    assert f"error: cannot get the cloud image {base}/ubuntu-22.04-server-cloudimg-amd64.img" in r.stderr
    assert "pre-stage it: pin 'source.checksum" in r.stderr and "<mirror>/sha256/<hex>" in r.stderr
    log = next((site["work"] / "builds/rke2-node-packer").glob("*.failed.log")).read_text()
    assert "==> fetch-source" in log and "==> packer-template" not in log  # nothing ran after it
    assert "Traceback" not in r.stderr
    offline = site["tmp"] / "offline.yaml"
    offline.write_text(yaml.safe_dump({"upstream": upstream_bases(site["mirror"].url), "offline": True}))
    r = cli(site, "build", "rke2-node-packer", "--skip-tests", config=offline)
    assert r.returncode == 2 and "offline: cannot read" in r.stderr and "SHA256SUMS" in r.stderr


def _unhaul(haul: Path, dest: Path) -> Path:
    """What `hauler store load` leaves: the haul's OCI layout as a store directory."""
    data = subprocess.run(["zstd", "-dcq", str(haul)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def test_hauler_haul_and_store_roundtrip(site: dict[str, Any]) -> None:
    """`artifacts export --format hauler` writes a haul Hauler's file layout describes (OCI layout,
    file layers titled with the upstream name, digest = the locked sha256); import takes a haul or
    a store directory, checked against the lock, ignoring content that is not ours."""
    assert cli(site, "lock", "update", "rke2-node-debian").returncode == 0
    locked = {a["name"]: a["sha256"] for a in lock(site)["recipes"]["rke2-node-debian"]["artifacts"]}
    haul = site["tmp"] / "haul.tar.zst"
    r = cli(site, "artifacts", "export", "rke2-node-debian", "--format", "hauler", "-o", str(haul))
    assert r.returncode == 0, r.stderr
    store = _unhaul(haul, site["tmp"] / "store")
    assert json.loads((store / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store / "index.json").read_text())
    titles = {}
    for desc in index["manifests"]:
        blob = store / "blobs/sha256" / desc["digest"].removeprefix("sha256:")
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == desc["digest"].removeprefix("sha256:")
        man = json.loads(blob.read_text())
        assert desc["annotations"]["kind"] == "dev.hauler/image"
        layer = man["layers"][0]
        assert layer["mediaType"] == "application/vnd.content.hauler.file.layer.v1"
        assert man["config"]["mediaType"] == "application/vnd.content.hauler.file.http.config.v1+json"
        name = layer["annotations"]["org.opencontainers.image.title"]
        assert desc["annotations"]["org.opencontainers.image.ref.name"] == f"hauler/{name}:latest"
        titles[name] = layer["digest"].removeprefix("sha256:")
    assert titles == locked

    # the haul, into a disconnected workdir
    other = site["tmp"] / "disconnected"
    r = cli(site, "--json", "artifacts", "import", str(haul), "--recipe", "rke2-node-debian", workdir=other)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["missing"] == []
    assert sorted(p.name for p in (other / "cache/sha256").iterdir()) == sorted(locked.values())
    r = cli(site, "artifacts", "import", str(haul), workdir=other)
    assert r.returncode == 2 and "--recipe" in r.stderr

    # a store directory with an unrelated image beside ours (ignored), one of ours left out
    gz_layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "1" * 64}
    extra = json.dumps({"schemaVersion": 2, "layers": [gz_layer]}).encode()
    digest = hashlib.sha256(extra).hexdigest()
    (store / "blobs/sha256" / digest).write_bytes(extra)
    index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "digest": f"sha256:{digest}", "size": len(extra),
                               "annotations": {"kind": "dev.hauler/image",
                                               "org.opencontainers.image.ref.name": "rancher/x:1"}})
    dropped = next(n for n in locked if n.startswith("zarf_"))
    index["manifests"] = [d for d in index["manifests"]
                          if json.loads((store / "blobs/sha256" / d["digest"][7:]).read_text())["layers"][0]
                          .get("annotations", {}).get("org.opencontainers.image.title") != dropped]
    (store / "index.json").write_text(json.dumps(index))
    third = site["tmp"] / "third"
    r = cli(site, "--json", "artifacts", "import", str(store), "--recipe", "rke2-node-debian", workdir=third)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["missing"] == [dropped]
    assert (store / "blobs/sha256" / locked[dropped]).is_file()  # the store is left as it was

    # another release under a locked name: refused, nothing imported
    bundle_name = next(n for n in locked if n.startswith("rke2.linux"))
    for d in index["manifests"]:
        blob = store / "blobs/sha256" / d["digest"][7:]
        man = json.loads(blob.read_text())
        if man["layers"][0].get("annotations", {}).get("org.opencontainers.image.title") == bundle_name:
            man["layers"][0]["digest"] = "sha256:" + "2" * 64
            data = json.dumps(man).encode()
            new = hashlib.sha256(data).hexdigest()
            (store / "blobs/sha256" / new).write_bytes(data)
            d["digest"] = f"sha256:{new}"
    (store / "index.json").write_text(json.dumps(index))
    fourth = site["tmp"] / "fourth"
    r = cli(site, "artifacts", "import", str(store), "--recipe", "rke2-node-debian", workdir=fourth)
    assert r.returncode == 1 and f"{bundle_name}" in r.stderr and "differs from the lock" in r.stderr
    assert not (fourth / "cache/sha256").exists() or not list((fourth / "cache/sha256").iterdir())


def test_hauler_haul_with_a_path_outside_the_layout_is_refused(site: dict[str, Any]) -> None:
    assert cli(site, "lock", "update", "rke2-node-debian").returncode == 0
    evil = site["tmp"] / "evil.tar.zst"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("index.json", b'{"manifests": []}'), ("../../escape", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    evil.write_bytes(subprocess.run(["zstd", "-q"], input=buf.getvalue(), capture_output=True,
                                    check=True).stdout)
    r = cli(site, "artifacts", "import", str(evil), "--recipe", "rke2-node-debian")
    assert r.returncode == 2 and "unexpected member ../../escape" in r.stderr
    assert not (site["tmp"] / "escape").exists()
