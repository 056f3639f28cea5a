"""Delta delivery to a site through bundles, with real qcow2 images (qemu-img), the real chunker
(pyfastcdc) and the CLI: a first bundle carries the whole image, its successor only the chunks
that changed; at the site every chunk, table, index and the reassembled disk is verified before
the disk appears, and bundles that are altered, truncated or for another site are refused."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagefactory.catalogue import signing, trust
from imagefactory.catalogue.stores import LocalDirStore
from imagefactory.fsutil import digests, file_identity
from tests.conftest import require_root
from tests.harvester import HarvesterDouble
from tests.integration.conftest import S3Server
from tests.publishing import FaultProxy, fake_build

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
NAME = "debian-12-base"


def disk(path: Path, version: int) -> bytes:
    """A 48 MiB disk: random data, zeros, more data, zeros. Version 2 inserts 4 KiB inside the
    second data region (everything after it shifts) and rewrites 64 KiB further on."""
    rnd = random.Random(7)
    a, b = rnd.randbytes(8 * MiB), bytearray(rnd.randbytes(24 * MiB))
    if version == 2:
        b[4 * MiB:4 * MiB] = random.Random(8).randbytes(4096)
        b[14 * MiB:14 * MiB + 65536] = random.Random(9).randbytes(65536)
        del b[-4096:]
    data = a + bytes(8 * MiB) + bytes(b) + bytes(8 * MiB)
    assert len(data) == 48 * MiB
    path.write_bytes(data)
    return data


def build(work: Path, version: str, raw: Path) -> Path:
    """A build directory (tests/publishing.fake_build) whose image is a real zstd qcow2 of `raw`."""
    d = fake_build(work, name=NAME, version=version, size=1024)
    image = d / "image.qcow2"
    image.unlink()
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zstd",
                    str(raw), str(image)], check=True)
    m = json.loads((d / "manifest.json").read_text())
    sha256, sha512 = digests(image)
    m["image"].update(size=image.stat().st_size, sha256=sha256, sha512=sha512, identity=file_identity(image))
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagefactory.cli", "--workdir", str(cwd / "w"),
                           "--config", str(cwd / "imagefactory.yaml"), *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def factory(tmp_path: Path) -> dict[str, Any]:
    """A factory workdir with a key pair, two published versions of one image and a site."""
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "imagefactory.cli", "--workdir", str(tmp_path / "w"), "keys",
                    "generate", "-o", str(keys)], check=True, capture_output=True)
    (tmp_path / "imagefactory.yaml").write_text(yaml.safe_dump({"signing": {
        "public_key": str(keys / "imagefactory.pub"), "private_key": str(keys / "imagefactory.key")}}))
    raws = {}
    for n, version in ((1, "20261201.010101-aaaa"), (2, "20261202.010101-bbbb")):
        raws[n] = tmp_path / f"disk{n}.raw"
        disk(raws[n], n)
        d = build(tmp_path / "w", version, raws[n])
        r = cli("publish", str(d), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    r = cli("site", "add", "edge-1", "--store", "/media/usb/edge-1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    site = tmp_path / "site-store"
    r = cli("site", "init", "edge-1", "--dir", str(site), "--public-key", str(keys / "imagefactory.pub"),
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return {"root": tmp_path, "raws": raws, "site": site, "v1": f"{NAME}:20261201.010101-aaaa",
            "v2": f"{NAME}:20261202.010101-bbbb"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_first_image_whole_then_only_the_delta(factory: dict[str, Any]) -> None:
    root, site = factory["root"], factory["site"]
    r = cli("--json", "site", "plan", "edge-1", factory["v1"], cwd=root)
    assert r.returncode == 0, r.stderr
    full = json.loads(r.stdout)
    assert full["base"] == [] and full["images"][0]["full_bytes"] > 30 * MiB  # random data: incompressible
    r = cli("--json", "site", "export", "edge-1", factory["v1"], "-o", str(root / "b1.tar"), cwd=root)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bundle_bytes"] <= 1.05 * full["bytes"]
    r = cli("--json", "site", "import", str(root / "b1.tar"), "--dir", str(site), cwd=root)
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    disk1 = site / "images" / NAME / factory["v1"].split(":")[1] / "disk.raw"
    assert sha256(disk1) == sha256(factory["raws"][1])
    assert os.stat(disk1).st_blocks * 512 < 40 * MiB  # the zero runs are holes
    # before the acknowledgement the factory still plans the whole image for v2...
    r = cli("--json", "site", "plan", "edge-1", factory["v2"], cwd=root)
    before = json.loads(r.stdout)["bytes"]
    assert before > 30 * MiB
    r = cli("--json", "site", "ack", "edge-1", done["acknowledgement"], cwd=root)
    assert r.returncode == 0 and json.loads(r.stdout)["acknowledged"] == [factory["v1"]], r.stderr
    # ...after it, only the chunks that changed
    r = cli("--json", "site", "plan", "edge-1", factory["v2"], "--max-bytes", "3MiB", cwd=root)
    assert r.returncode == 0, r.stderr
    delta = json.loads(r.stdout)
    assert delta["base"] == [factory["v1"]] and 0 < delta["bytes"] < 0.05 * before
    r = cli("--json", "site", "plan", "edge-1", factory["v2"], "--max-bytes", "1000", cwd=root)
    assert r.returncode == 1 and "over the budget of 1000" in r.stderr
    r = cli("--json", "site", "export", "edge-1", factory["v2"], "-o", str(root / "b2.tar"), cwd=root)
    assert r.returncode == 0, r.stderr
    assert (root / "b2.tar").stat().st_size <= 1.05 * delta["bytes"] + 10240
    r = cli("--json", "site", "import", str(root / "b2.tar"), "--dir", str(site), cwd=root)
    assert r.returncode == 0, r.stderr
    disk2 = site / "images" / NAME / factory["v2"].split(":")[1] / "disk.raw"
    assert sha256(disk2) == sha256(factory["raws"][2])
    ack = json.loads((site / "acknowledgement.json").read_text())
    assert ack["images"] == sorted([factory["v1"], factory["v2"]]) and ack["site"] == "edge-1"
    r = cli("site", "list", cwd=root)
    assert r.returncode == 0 and "edge-1" in r.stdout


def test_the_site_signs_its_acknowledgements(factory: dict[str, Any]) -> None:
    """`site init` made the site a key; its acknowledgements are signed with it. Once the factory
    has the site's public key, an altered, unsigned, foreign or older acknowledgement is refused
    and nothing is recorded: the factory's view of the site is what the site said."""
    root, site = factory["root"], factory["site"]
    pub = site / "site-key/site.pub"
    assert (site / "site-key/site.key").stat().st_mode & 0o077 == 0
    r = cli("--json", "site", "export", "edge-1", factory["v1"], "-o", str(root / "b1.tar"), cwd=root)
    assert r.returncode == 0, r.stderr
    assert cli("site", "import", str(root / "b1.tar"), "--dir", str(site), cwd=root).returncode == 0
    first = json.loads((site / "acknowledgement.json").read_text())
    assert first["signature"]["value"]
    (root / "ack1.json").write_text(json.dumps(first))

    def ack(doc: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
        path = root / "carried.json"
        path.write_text(json.dumps(doc))
        return cli("--json", "site", "ack", "edge-1", str(path), *extra, cwd=root)

    def held() -> list[str]:
        return list(json.loads(cli("--json", "site", "show", "edge-1", cwd=root).stdout)["acknowledged"])

    altered = {**first, "images": [*first["images"], factory["v2"]]}  # claims v2 as well
    r = ack(altered, "--site-key", str(pub))
    assert r.returncode == 2 and "not signed by the site's key" in r.stderr, r.stderr
    assert held() == []
    other_dir = root / "other-key"
    subprocess.run([sys.executable, "-m", "imagefactory.cli", "--workdir", str(root / "w"), "keys",
                    "generate", "-o", str(other_dir)], check=True, capture_output=True)
    r = ack(first, "--site-key", str(other_dir / "imagefactory.pub"))  # the right file, the wrong key
    assert r.returncode == 2 and "not signed by the site's key" in r.stderr, r.stderr
    # the genuine one, with the site's key: recorded, and the key with it
    r = ack(first, "--site-key", str(pub))
    assert r.returncode == 0, r.stderr
    assert held() == [factory["v1"]]
    unsigned = {k: v for k, v in first.items() if k != "signature"}
    r = ack(unsigned)
    assert r.returncode == 2 and "not signed by the site's key" in r.stderr
    r = ack(first, "--site-key", str(other_dir / "imagefactory.pub"))
    assert r.returncode == 2 and "already has another key" in r.stderr
    # a newer acknowledgement (v2 imported), then the older one replayed: refused
    r = cli("--json", "site", "export", "edge-1", factory["v2"], "-o", str(root / "b2.tar"), cwd=root)
    assert r.returncode == 0, r.stderr
    assert cli("site", "import", str(root / "b2.tar"), "--dir", str(site), cwd=root).returncode == 0
    second = json.loads((site / "acknowledgement.json").read_text())
    assert ack(second).returncode == 0 and held() == sorted([factory["v1"], factory["v2"]])
    r = ack(first)
    assert r.returncode == 2 and "older than the one recorded" in r.stderr
    assert held() == sorted([factory["v1"], factory["v2"]])


@pytest.mark.parametrize("size", ["16m", "44m"])  # full while storing chunks; while writing the disk
def test_a_site_store_that_fills_up_then_has_room(factory: dict[str, Any], size: str) -> None:
    """The site's store and disks on a small file system, a 32 MiB image (incompressible: its
    chunks take 32 MiB, its disk 32 MiB more): the import fails with a clear message (exit 1, no
    traceback), nothing is visible and no partial disk is left; with room again the same bundle
    imports, reusing the chunks that were stored and verified."""
    require_root()
    root = factory["root"]
    small = root / "small-site"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small)], check=True)
    try:
        keys = root / "keys"
        r = cli("site", "init", "edge-1", "--dir", str(small / "s"), "--public-key",
                str(keys / "imagefactory.pub"), cwd=root)
        assert r.returncode == 0, r.stderr
        r = cli("--json", "site", "export", "edge-1", factory["v1"], "-o", str(root / "b1.tar"), cwd=root)
        assert r.returncode == 0, r.stderr
        r = cli("site", "import", str(root / "b1.tar"), "--dir", str(small / "s"), cwd=root)
        assert r.returncode == 1, r.stderr
        assert "No space left on device" in r.stderr and "free space" in r.stderr, r.stderr
        assert ("cannot write its disk" in r.stderr) is (size == "44m"), r.stderr
        assert "Traceback" not in r.stderr
        assert not list((small / "s").rglob("disk.raw")) and not list((small / "s").rglob("*.part"))
        stored = len(list((small / "s/chunks").rglob("*")))
        assert stored > 0  # what was verified before the disk filled up is kept
        subprocess.run(["mount", "-o", "remount,size=200m", str(small)], check=True)
        r = cli("--json", "site", "import", str(root / "b1.tar"), "--dir", str(small / "s"), cwd=root)
        assert r.returncode == 0, r.stderr
        done = json.loads(r.stdout)
        assert done["chunks_present"] > 0 and done["images"] == [factory["v1"]]
        disk1 = small / "s/images" / NAME / factory["v1"].split(":")[1] / "disk.raw"
        assert sha256(disk1) == sha256(factory["raws"][1])
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_ctrl_c_during_a_sync_then_the_same_sync_resumes(factory: dict[str, Any]) -> None:
    """`site sync` into a site store (a mounted directory) at 2 MB/s, SIGINT once chunks have
    arrived: exit 130 with what to do, no delivery written (so `site apply` makes nothing
    visible); the same sync again skips what arrived and the site makes the disk visible."""
    root = factory["root"]
    target = root / "edge-2-store"
    assert cli("site", "add", "edge-2", "--store", str(target), cwd=root).returncode == 0
    r = cli("site", "init", "edge-2", "--dir", str(target), "--public-key",
            str(root / "keys/imagefactory.pub"), cwd=root)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen([sys.executable, "-m", "imagefactory.cli", "--workdir", str(root / "w"),
                             "--config", str(root / "imagefactory.yaml"), "site", "sync", "edge-2",
                             factory["v1"], "--rate", "2MB"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((target / "chunks").rglob("*"))) < 20:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "no delivery was written" in err and "resumes" in err and "Traceback" not in err, err
    sent = len([p for p in (target / "chunks").rglob("*") if p.is_file()])
    assert sent >= 20 and not list(target.glob("deliveries/*"))
    r = cli("--json", "site", "apply", "--dir", str(target), cwd=root)
    assert r.returncode == 0 and json.loads(r.stdout)["images"] == [], r.stdout + r.stderr
    r = cli("--json", "site", "sync", "edge-2", factory["v1"], cwd=root)
    assert r.returncode == 0, r.stderr
    resumed = json.loads(r.stdout)
    assert resumed["chunks_present"] >= sent - 1 and resumed["chunks_sent"] > 0  # one may have been mid-PUT
    r = cli("--json", "site", "apply", "--dir", str(target), cwd=root)
    assert r.returncode == 0 and json.loads(r.stdout)["images"] == [factory["v1"]], r.stderr
    disk1 = target / "images" / NAME / factory["v1"].split(":")[1] / "disk.raw"
    assert sha256(disk1) == sha256(factory["raws"][1])


def test_the_site_uploads_a_verified_disk_to_its_harvester(factory: dict[str, Any]) -> None:
    """`site upload` at the site: the disk it made visible goes to the site's Harvester (the API
    double, which checks the SHA-512 Longhorn checks) under the catalogue's name, with the disk's
    digests; a disk changed on the site's file system is refused before anything is created, a
    version revoked since it became visible is refused, and an image the site does not hold is a
    clear error."""
    root, site = factory["root"], factory["site"]
    h = HarvesterDouble(tick=0.02).start()
    try:
        kube = str(h.kubeconfig(root / "kubeconfig", namespace="default"))
        for ref in ("v1", "v2"):
            r = cli("site", "export", "edge-1", factory[ref], "-o", str(root / f"{ref}.tar"), cwd=root)
            assert r.returncode == 0, r.stderr
        r = cli("site", "import", str(root / "v1.tar"), "--dir", str(site), cwd=root)
        assert r.returncode == 0, r.stderr

        def upload(ref: str, namespace: str = "default") -> subprocess.CompletedProcess[str]:
            return cli("--json", "site", "upload", ref, "--dir", str(site), "--kubeconfig", kube,
                       "-n", namespace, cwd=root)

        disk1 = site / "images" / NAME / factory["v1"].split(":")[1] / "disk.raw"
        good = disk1.read_bytes()
        disk1.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
        r = upload(factory["v1"])
        assert r.returncode == 1 and "is not the signed manifest's" in r.stderr, r.stderr
        assert h.uploads == [] and not h.objects("virtualmachineimages", "default")
        disk1.write_bytes(good)
        r = upload(factory["v1"])
        assert r.returncode == 0, r.stderr
        done = json.loads(r.stdout)
        assert done["source"] == "upload" and done["reused"] is False and done["sha256"] == sha256(disk1)
        obj = h.get_object("virtualmachineimages", "default", done["name"])
        assert obj is not None
        assert obj["spec"]["checksum"] == hashlib.sha512(good).hexdigest() == h.uploads[-1]["sha512"]
        assert h.uploads[-1]["bytes"] == len(good)
        assert json.loads(upload(factory["v1"]).stdout)["reused"] is True
        r = upload(f"{NAME}:20991231.000000-none")
        assert r.returncode == 2 and "not visible at site edge-1" in r.stderr, r.stderr
        # v1 revoked at the factory; the revocation reaches the site with v2's delivery
        assert cli("images", "revoke", factory["v1"], "--reason", "CVE-2026-0003", cwd=root).returncode == 0
        r = cli("site", "export", "edge-1", factory["v2"], "-o", str(root / "v2b.tar"), cwd=root)
        assert r.returncode == 0, r.stderr
        assert cli("site", "import", str(root / "v2b.tar"), "--dir", str(site), cwd=root).returncode == 0
        uploads = len(h.uploads)
        r = upload(factory["v1"], "other")
        assert r.returncode == 2 and "is revoked: CVE-2026-0003" in r.stderr, r.stderr
        assert len(h.uploads) == uploads
    finally:
        h.stop()
    assert h.errors == []


def _rewrite(src: Path, dest: Path, change: Any, extra: tuple[tuple[str, bytes], ...] = ()) -> None:
    """Copy a bundle member by member, letting `change(name, data)` alter, drop (None) or keep,
    then add the `extra` members. Written in one pass (tarfile's append mode re-parses the file)
    and read back: a file this test made must hold exactly what it meant, or the test says so."""
    members: list[tuple[str, bytes]] = []
    with tarfile.open(src) as tin:
        for m in tin:
            f = tin.extractfile(m)
            assert f is not None
            data = change(m.name, f.read())
            if data is not None:
                members.append((m.name, data))
    members += extra
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tout:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    with tarfile.open(dest) as back:
        got = [(m.name, hashlib.sha256(back.extractfile(m).read()).hexdigest())  # type: ignore[union-attr]
               for m in back]
    want = [(name, hashlib.sha256(data).hexdigest()) for name, data in members]
    assert got == want, f"{dest} does not hold what the test wrote into it (the host changed it)"


def test_altered_truncated_and_foreign_bundles_are_refused(factory: dict[str, Any]) -> None:
    root, site = factory["root"], factory["site"]
    r = cli("site", "export", "edge-1", factory["v1"], "-o", str(root / "b.tar"), cwd=root)
    assert r.returncode == 0, r.stderr
    visible = site / "images" / NAME / factory["v1"].split(":")[1] / "disk.raw"

    def refused(bundle: Path, message: str) -> None:
        r = cli("site", "import", str(bundle), "--dir", str(site), cwd=root)
        assert r.returncode in (1, 2) and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert not visible.exists() and not list(site.rglob("*.part"))

    # one chunk's content changed (same name): refused before it is stored
    first: list[str] = []

    def flip(name: str, data: bytes) -> bytes:
        if name.startswith("chunks/") and not first:
            first.append(name)
            return data[:-1] + bytes([data[-1] ^ 1])
        return data
    _rewrite(root / "b.tar", root / "chunk.tar", flip)
    refused(root / "chunk.tar", "chunk")
    assert not (site / first[0]).exists()
    # a chunk left out: the disk cannot be reassembled, nothing becomes visible
    dropped: list[str] = []

    def drop(name: str, data: bytes) -> bytes | None:
        if name.startswith("chunks/") and not dropped:
            dropped.append(name)
            return None
        return data
    _rewrite(root / "b.tar", root / "short.tar", drop)
    refused(root / "short.tar", "is missing")
    # the signed index changed (a chunk table of another image): the signature does not verify
    _rewrite(root / "b.tar", root / "index.tar",
             lambda n, d: d.replace(b'"stored_bytes"', b'"stored_bytez"') if n.startswith("chunked/") else d)
    refused(root / "index.tar", "does not verify")
    # a member outside the bundle's names
    _rewrite(root / "b.tar", root / "evil.tar", lambda n, d: d, extra=(("../../etc/cron.d/x", b"x\n"),))
    refused(root / "evil.tar", "unexpected member")
    assert not (root / "etc").exists()
    # truncated in transit
    (root / "cut.tar").write_bytes((root / "b.tar").read_bytes()[:5 * MiB])
    refused(root / "cut.tar", "not a readable bundle")
    # exported for another site
    r = cli("site", "add", "edge-2", "--store", "/srv/edge-2", cwd=root)
    assert r.returncode == 0
    r = cli("site", "export", "edge-2", factory["v1"], "-o", str(root / "other.tar"), cwd=root)
    assert r.returncode == 0, r.stderr
    refused(root / "other.tar", "the bundle is for site 'edge-2', this is site 'edge-1'")
    # and the genuine bundle still imports (what the refused ones stored was verified chunks only)
    r = cli("site", "import", str(root / "b.tar"), "--dir", str(site), cwd=root)
    assert r.returncode == 0, r.stderr
    assert sha256(visible) == sha256(factory["raws"][1])


def test_the_site_checks_the_catalogues_tuf_metadata(factory: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle carries the catalogue's TUF metadata for its images; the site verifies it against
    the root it trusts: an image revoked since an older bundle was made is refused when that bundle
    is replayed after a newer one; expired metadata is refused unless the site's policy accepts it."""
    root, site = factory["root"], factory["site"]
    key = signing.load_private_key(str(root / "keys/imagefactory.key"))
    store = LocalDirStore("local", root / "w/catalogue")
    r = cli("site", "export", "edge-1", factory["v1"], "-o", str(root / "b1.tar"), cwd=root)
    assert r.returncode == 0, r.stderr
    with tarfile.open(root / "b1.tar") as t:
        names = t.getnames()
    assert "tuf/timestamp.json" in names and "tuf/1.root.json" in names
    assert {n.rsplit(".", 2)[-2] for n in names if n.startswith("images/")} == {"manifest", "channels"}
    # v1 revoked at the factory; the site first gets v2's bundle (newer metadata: v1 revoked)
    r = cli("images", "revoke", factory["v1"], "--reason", "CVE-2026-0002", cwd=root)
    assert r.returncode == 0, r.stderr
    r = cli("site", "export", "edge-1", factory["v2"], "-o", str(root / "b2.tar"), cwd=root)
    assert r.returncode == 0, r.stderr
    r = cli("site", "import", str(root / "b2.tar"), "--dir", str(site), cwd=root)
    assert r.returncode == 0, r.stderr
    # the older bundle, validly signed, replayed: its metadata is older than what the site has, so
    # the current (revoked) manifest of v1 is what counts, and the bundle does not carry it
    r = cli("site", "import", str(root / "b1.tar"), "--dir", str(site), cwd=root)
    assert r.returncode == 2 and "is revoked: CVE-2026-0002" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (site / "images" / NAME / factory["v1"].split(":")[1] / "disk.raw").exists()
    # a fresh site, given the old bundle and then the revocation, refuses v1 the same way
    fresh = root / "fresh-site"
    pub = str(root / "keys/imagefactory.pub")
    r = cli("site", "init", "edge-1", "--dir", str(fresh), "--public-key", pub, cwd=root)
    assert r.returncode == 0, r.stderr
    r = cli("site", "import", str(root / "b2.tar"), "--dir", str(fresh), cwd=root)
    assert r.returncode == 0, r.stderr
    # b1's chunks without its (older) metadata: the site has b2's, in which v1 is revoked ...
    _rewrite(root / "b1.tar", root / "b1-new-meta.tar",
             lambda n, d: None if n.startswith(("tuf/", "images/")) else d)
    r = cli("site", "import", str(root / "b1-new-meta.tar"), "--dir", str(fresh), cwd=root)
    assert r.returncode == 2 and "is revoked: CVE-2026-0002" in r.stderr, r.stderr

    # expired metadata: refused by default, accepted (with a warning) under a site's explicit policy
    # (b2 with the factory's metadata once its timestamp has expired: what a site that was offline
    # for longer than the timestamp's lifetime finally receives)
    monkeypatch.setitem(trust.EXPIRY, "timestamp", dt.timedelta(seconds=-3600))
    trust.refresh_timestamp(store, trust.Keys.single(key))
    ts = (root / "w/catalogue/tuf/timestamp.json").read_bytes()
    snap = f"tuf/{json.loads(ts)['signed']['meta']['snapshot.json']['version']}.snapshot.json"
    _rewrite(root / "b2.tar", root / "b3.tar", lambda n, d: ts if n == "tuf/timestamp.json" else d,
             extra=((snap, (root / "w/catalogue" / snap).read_bytes()),))
    strict, lenient = root / "strict", root / "lenient"
    for d, extra in ((strict, []), (lenient, ["--max-expired", "30d"])):
        r = cli("site", "init", "edge-1", "--dir", str(d), "--public-key", pub, *extra, cwd=root)
        assert r.returncode == 0, r.stderr
    r = cli("site", "import", str(root / "b3.tar"), "--dir", str(strict), cwd=root)
    assert r.returncode == 1 and "expired" in r.stderr, r.stderr
    r = cli("site", "import", str(root / "b3.tar"), "--dir", str(lenient), cwd=root)
    assert r.returncode == 0, r.stderr
    assert "expired" in r.stderr and "accepted under this site's policy" in r.stderr, r.stderr


def test_bad_input_is_a_clear_error(factory: dict[str, Any]) -> None:
    root = factory["root"]
    r = cli("site", "add", "Bad_Name", "--store", "/x", cwd=root)
    assert r.returncode == 2 and "site name 'Bad_Name' is not valid" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("site", "plan", "nowhere", factory["v1"], cwd=root)
    assert r.returncode == 2 and "no site named 'nowhere'" in r.stderr
    r = cli("site", "plan", "edge-1", factory["v1"], "--max-bytes", "lots", cwd=root)
    assert r.returncode == 2 and "--max-bytes: 'lots' is not a size" in r.stderr
    r = cli("site", "import", str(root / "imagefactory.yaml"), "--dir", str(root / "nosite"), cwd=root)
    assert r.returncode == 2 and "is not a site store" in r.stderr


# --- sync over a slow, dropping link ---------------------------------------------------------------


@pytest.fixture
def bucket() -> str:
    return f"site-{uuid.uuid4().hex[:12]}"

SMALL = {"v1": f"{NAME}:20261203.010101-cccc", "v2": f"{NAME}:20261204.010101-dddd"}


def small_disk(path: Path, version: int) -> None:
    """12 MiB: 2 MiB of data, zeros, 6 MiB of data, zeros; version 2 inserts 4 KiB in the second."""
    rnd = random.Random(11)
    a, b = rnd.randbytes(2 * MiB), bytearray(rnd.randbytes(6 * MiB))
    if version == 2:
        b[3 * MiB:3 * MiB] = random.Random(12).randbytes(4096)
        del b[-4096:]
    path.write_bytes(a + bytes(2 * MiB) + bytes(b) + bytes(2 * MiB))


def test_sync_through_a_slow_dropping_link_resumes(tmp_path: Path, s3: S3Server, bucket: str) -> None:
    """The site's S3 server behind a 4 Mbit/s proxy that drops every connection twice mid-transfer,
    then is down for a whole run: the sync retries a dropped chunk, a failed run is resumed by the
    next without sending any stored chunk again, the wire carries at most 1.05x the plan, and the
    site's `apply` makes the disks visible and acknowledges them; the successor moves only its
    delta."""
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "imagefactory.cli", "--workdir", str(tmp_path / "w"), "keys",
                    "generate", "-o", str(keys)], check=True, capture_output=True)
    proxy = FaultProxy(s3.port)
    proxy.rate = 4_000_000 / 8
    stores = {name: {"type": "s3", "endpoint": endpoint, "bucket": bucket, "prefix": "edge-1/",
                     "create_bucket": True, "retries": 4, "retry_wait": 0.2}
              for name, endpoint in (("edge-1-link", proxy.endpoint), ("edge-1-local", s3.endpoint))}
    (tmp_path / "imagefactory.yaml").write_text(yaml.safe_dump({
        "signing": {"public_key": str(keys / "imagefactory.pub"),
                    "private_key": str(keys / "imagefactory.key")},
        "stores": stores}))
    env = {f"IMAGEFACTORY_STORE_EDGE_1_{kind}_{k}": v for kind in ("LINK", "LOCAL")
           for k, v in (("ACCESS_KEY", s3.creds.access_key), ("SECRET_KEY", s3.creds.secret_key))}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "imagefactory.cli", "--workdir", str(tmp_path / "w"),
                               "--config", str(tmp_path / "imagefactory.yaml"), *args],
                              capture_output=True, text=True, timeout=600, env={**os.environ, **env})

    raws = {}
    for n in (1, 2):
        raws[n] = tmp_path / f"small{n}.raw"
        small_disk(raws[n], n)
        r = run("publish", str(build(tmp_path / "w", SMALL[f"v{n}"].split(":")[1], raws[n])))
        assert r.returncode == 0, r.stderr
    site_images = tmp_path / "site-images"
    assert run("site", "add", "edge-1", "--store", "edge-1-link").returncode == 0
    r = run("site", "init", "edge-1", "--site-store", "edge-1-local", "--images", str(site_images),
            "--public-key", str(keys / "imagefactory.pub"))
    assert r.returncode == 0, r.stderr

    planned = json.loads(run("--json", "site", "plan", "edge-1", SMALL["v1"]).stdout)["bytes"]
    up0 = proxy.bytes_up
    proxy.cut_after(planned // 6)
    proxy.on_bytes(planned // 3, lambda: proxy.cut_after(1000))
    proxy.on_bytes(planned // 2, proxy.down)  # and then the link goes down for the rest of the run
    r = run("--json", "site", "sync", "edge-1", SMALL["v1"])
    assert r.returncode == 1 and "retrying" in r.stderr, r.stderr
    assert proxy.cuts >= 2
    proxy.refuse = False
    r = run("--json", "site", "sync", "edge-1", SMALL["v1"])
    assert r.returncode == 0, r.stderr
    second = json.loads(r.stdout)
    assert second["chunks_present"] > 0 and second["chunks_sent"] > 0  # resumed, not restarted
    assert proxy.bytes_up - up0 <= 1.05 * planned
    r = run("--json", "site", "apply", "--site-store", "edge-1-local", "--images", str(site_images))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == [SMALL["v1"]]
    disk1 = site_images / NAME / SMALL["v1"].split(":")[1] / "disk.raw"
    assert sha256(disk1) == sha256(raws[1])

    # the next sync reads the site's acknowledgement first: only the successor's delta moves
    up1 = proxy.bytes_up
    r = run("--json", "site", "sync", "edge-1", SMALL["v2"], "--rate", "2Mbit")
    assert r.returncode == 0, r.stderr
    delta = json.loads(r.stdout)
    assert delta["base"] == [SMALL["v1"]] and delta["bytes"] < 0.1 * planned
    assert proxy.bytes_up - up1 <= 1.05 * delta["bytes"] + 4096
    r = run("--json", "site", "apply", "--site-store", "edge-1-local", "--images", str(site_images))
    assert r.returncode == 0 and json.loads(r.stdout)["images"] == [SMALL["v2"]], r.stderr
    assert sha256(site_images / NAME / SMALL["v2"].split(":")[1] / "disk.raw") == sha256(raws[2])
    assert json.loads(run("--json", "site", "show", "edge-1").stdout)["acknowledged"] == [SMALL["v1"]]
    run("site", "sync", "edge-1", SMALL["v2"])  # reads the new acknowledgement
    assert json.loads(run("--json", "site", "show", "edge-1").stdout)["acknowledged"] == \
        sorted(SMALL.values())
    proxy.close()
