"""`build --all --if-changed` end to end against the upstream doubles on 127.0.0.1 (mirror
Releases, cloud-image SHA256SUMS, RKE2 channel redirects), with the build itself replaced by a fake
that writes a real build directory (image, manifest with the build key, packages, test results):
what is built and skipped, publishing with build keys and changelogs, one version per build key,
promote-on-green, a failed parent blocking its children, summaries (JSON, Markdown, JUnit)."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagefactory import build as build_module
from imagefactory.builders import inplace
from imagefactory.buildkey import build_key_of
from imagefactory.catalogue.catalogue import AlreadyPublished, Catalogue
from imagefactory.catalogue.publish import publish
from imagefactory.catalogue.stores import LocalDirStore
from imagefactory.config import FactoryConfig
from imagefactory.errors import BuildError
from imagefactory.lock import LockFile, resolve_entry
from imagefactory.nightly import runner as runner_module
from imagefactory.nightly.render import render_junit, render_summary
from imagefactory.nightly.runner import Publishing, run_plan
from imagefactory.recipes import LoadedRecipe, RecipeBook
from tests.publishing import PACKAGES, fake_build
from tests.standins.mirror import upstream_bases
from tests.standins.updates_mirror import UpstreamSite
from tests.unit.test_nightly import DATE2, RKE2_NEW, upstream_site

_versions = itertools.count(1)


class FakeBuilds:
    """Stands in for `build.build`: a real build directory, no mmdebstrap, no VM."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.built: list[str] = []
        self.fail: set[str] = set()
        self.packages: dict[str, str] = {p["name"]: p["version"] for p in PACKAGES}
        self.green = True
        self.bases: list[tuple[str, str | None]] = []  # (recipe, version of the base it was given)

    def __call__(self, loaded: LoadedRecipe, workdir: Path, **kw: Any) -> dict[str, Any]:
        name = loaded.recipe.name
        self.built.append(name)
        base = kw.get("base")
        self.bases.append((name, base.version if base is not None else None))
        if name in self.fail:
            raise BuildError(f"{name}: the bootstrap step failed (fake)")
        version = f"20261130.{next(_versions):06d}-beef"
        d = fake_build(
            self.workdir, name=name, version=version, size=4096, seed=len(self.built), tests_ok=self.green
        )
        m = json.loads((d / "manifest.json").read_text())
        m["build_key"] = build_key_of(loaded)  # what the real build records
        m["packages"] = [{"name": n, "version": v} for n, v in sorted(self.packages.items())]
        if loaded.recipe.builder == "rootfs":  # the file index and disk facts a real build leaves
            root = d.parent / f"{version}-root"
            (root / "etc").mkdir(parents=True)
            inplace.save_index(inplace.index(root), d / inplace.INDEX_FILE)
            m["disk"] = {"reproducible": {"seed": name, "epoch": 1764892800},
                         "files_sha256": hashlib.sha256((d / inplace.INDEX_FILE).read_bytes()).hexdigest()}
            m["recipe"]["merged"] = {"disk": loaded.recipe.disk.model_dump(mode="json")}
        (d / "manifest.json").write_text(json.dumps(m))
        return {**m, "path": str(d)}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with upstream_site(tmp_path) as s:
        fake = FakeBuilds(tmp_path / "work")
        monkeypatch.setattr(build_module, "build", fake)
        monkeypatch.setattr(runner_module, "build", fake)  # the runner's own name for it
        store = LocalDirStore("local", tmp_path / "catalogue")
        store.prepare()
        yield {**s, "fake": fake, "store": store, "key": Ed25519PrivateKey.generate()}


def relock(site: dict[str, Any]) -> None:
    book, lock = RecipeBook(site["recipes"]), LockFile(site["recipes"])
    lock.update({n: resolve_entry(site["cfg"], book.load(n).recipe)[0] for n in book.names()})


def nightly(
    site: dict[str, Any], promote: bool = False, names: list[str] | None = None
) -> dict[str, tuple[str, ...]]:
    """One `build --all --if-changed` run; returns status -> recipes (sorted)."""
    site["fake"].built.clear()
    key: Ed25519PrivateKey = site["key"]
    pub = Publishing(site["store"], lambda: (key, key.public_key()), promote_on_green=promote)
    _plan, results = run_plan(
        RecipeBook(site["recipes"]),
        site["tmp"] / "work",
        names,
        if_changed=True,
        publishing=pub,
        config=site["cfg"],
        local_store=None,
    )
    site["results"] = results
    out: dict[str, list[str]] = {"built": [], "skipped": [], "failed": []}
    for r in results:
        out[r.status].append(r.recipe)
    return {k: tuple(sorted(v)) for k, v in out.items()}


def all_names(site: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(RecipeBook(site["recipes"]).names()))


def test_exactly_the_affected_recipes_rebuild(site: dict[str, Any]) -> None:
    relock(site)
    first = nightly(site)
    assert first["built"] == all_names(site) and first["failed"] == ()
    # parents before children, as the plan orders them
    order = site["fake"].built
    assert order.index("deb-base") < order.index("deb-child") and order.index("ubu-base") < order.index(
        "ubu-rke2"
    )
    assert nightly(site) == {"built": (), "skipped": all_names(site), "failed": ()}
    assert site["fake"].built == []
    up: UpstreamSite = site["up"]
    # a changed SHA256SUMS (new cloud image) -> the Ubuntu recipes that use it, not the pinned one
    up.cloud_image("cloud/jammy", "jammy-server-cloudimg-amd64.img", b"image 2")
    relock(site)
    assert nightly(site)["built"] == ("ubu-base", "ubu-rke2")
    # a channel redirect to a new RKE2 patch -> the RKE2 recipes
    site["mirror"].channels["stable"] = RKE2_NEW
    relock(site)
    assert nightly(site)["built"] == ("deb-rke2", "ubu-rke2")
    # a new package version in the Debian mirror -> every recipe on it (deb-packer: its base image rebuilds)
    up.release("debian", "bookworm", DATE2, packages="base,openssl")
    relock(site)
    built = nightly(site)["built"]
    assert built == tuple(sorted(n for n in all_names(site) if n.startswith("deb-"))), built
    assert nightly(site)["built"] == ()


def test_published_manifests_carry_key_and_changelog(site: dict[str, Any]) -> None:
    relock(site)
    nightly(site, names=["deb-base"])
    cat = Catalogue(site["store"])
    first = cat.read_manifest("deb-base", cat.resolve("deb-base")[1])[0]
    assert len(first["inputs"]["build_key"]) == 64 and "source" in first["inputs"]["build_inputs"]
    assert first["changelog"]["previous"] is None
    # security updates arrive: the next image records what was upgraded since the previous one
    site["up"].release("debian-security", "bookworm-security", DATE2, packages="openssl")
    relock(site)
    site["fake"].packages["openssh-server"] = "1:9.2p1-2+deb12u9"
    site["fake"].packages["libssl3"] = "3.0.17-1~deb12u3"
    assert nightly(site, names=["deb-base"])["built"] == ("deb-base",)
    assert site["results"][0].upgraded == 1
    second = cat.read_manifest("deb-base", cat.resolve("deb-base")[1])[0]
    log = second["changelog"]
    assert log["previous"] == f"deb-base:{first['version']}"
    assert log["upgraded"] == [{"name": "openssh-server", "from": "1:9.2p1-2", "to": "1:9.2p1-2+deb12u9"}]
    assert log["added"] == [{"name": "libssl3", "version": "3.0.17-1~deb12u3"}] and log["removed"] == []
    assert any(r.startswith("security:") for r in site["results"][0].reasons)
    # the rebuild was written over the image it succeeds (`build --base`, the nightly's default)
    assert site["fake"].bases == [("deb-base", None), ("deb-base", first["version"])]


def test_one_version_per_build_key(site: dict[str, Any], tmp_path: Path) -> None:
    """Two runners built the same inputs: the second publish is refused and reported as skipped."""
    relock(site)
    nightly(site, names=["deb-base"])
    cat = Catalogue(site["store"])
    published = cat.resolve("deb-base")[1]
    raw = json.loads((Path(site["tmp"]) / "work/builds/deb-base" / published / "manifest.json").read_text())
    twin = fake_build(
        tmp_path / "runner2", name="deb-base", version="20261131.000000-twin", size=4096, seed=99
    )
    m = json.loads((twin / "manifest.json").read_text())
    m["build_key"] = raw["build_key"]
    (twin / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AlreadyPublished) as e:
        publish(twin, site["store"], site["key"], site["key"].public_key())
    assert e.value.ref == f"deb-base:{published}"
    assert [v["version"] for v in cat.index()["images"]["deb-base"]] == [published]


def test_promote_on_green_and_failures(site: dict[str, Any]) -> None:
    relock(site)
    site["fake"].fail.add("deb-base")
    res = nightly(site, promote=True)
    # the failed parent blocks its children; unrelated recipes go on
    assert "deb-base" in res["failed"] and {"deb-child", "deb-packer", "deb-rke2"} <= set(res["failed"])
    assert "ubu-base" in res["built"]
    blocked = next(r for r in site["results"] if r.recipe == "deb-child")
    assert blocked.error == "not built: deb-base failed"
    assert "deb-child" not in site["fake"].built
    ubu = next(r for r in site["results"] if r.recipe == "ubu-base")
    assert set(ubu.channels) == {"candidate", "stable"}
    site["fake"].fail.clear()
    site["fake"].green = False  # boot tests failed: never published, so never promoted
    res = nightly(site, promote=True, names=["deb-base"])
    assert res["failed"] == ("deb-base",)
    assert "failed its boot tests" in (site["results"][0].error or "")
    assert "deb-base" not in Catalogue(site["store"]).index()["images"]
    site["fake"].green = True
    res = nightly(site, promote=True, names=["deb-base", "deb-child"])
    assert res["built"] == ("deb-base", "deb-child")
    assert all(set(r.channels) == {"candidate", "stable"} for r in site["results"])
    doc, md = render_summary(site["results"])
    assert doc["ok"] and doc["counts"] == {"built": 2, "skipped": 0, "failed": 0}
    assert "deb-base" in md and "channels: candidate, stable" in md
    tree = ET.fromstring(render_junit(site["results"]))
    assert tree.get("tests") == "2"
    assert [c.get("name") for c in tree.iter("testcase")] == ["deb-base", "deb-child"]


def test_cli_build_all_if_changed(site: dict[str, Any], tmp_path: Path) -> None:
    """The CLI path with nothing to build (keys equal): no signing key needed, summary files written,
    exit 0; a recipe that would build without a signing key configured: exit 2 before building."""
    relock(site)
    nightly(site)
    config = tmp_path / "imagefactory.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "upstream": upstream_bases(site["mirror"].url),
                "stores": {"cat": {"type": "local", "path": str(site["store"].root)}},
                "default_store": "cat",
            }
        )
    )
    out = tmp_path / "summary"
    argv = [
        sys.executable,
        "-m",
        "imagefactory.cli",
        "--json",
        "--recipes",
        str(site["recipes"]),
        "--config",
        str(config),
        "--workdir",
        str(site["tmp"] / "work"),
        "build",
        "--all",
        "--if-changed",
        "--summary",
        str(out),
    ]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["counts"]["skipped"] == len(all_names(site)) and doc["counts"]["built"] == 0
    assert json.loads((out / "summary.json").read_text()) == doc
    assert "skipped" in (out / "summary.md").read_text() and (out / "junit.xml").is_file()
    site["up"].release("debian", "bookworm", DATE2, packages="base,zlib")
    relock(site)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "signing" in r.stderr.lower() and "Traceback" not in r.stderr


def test_local_image_base_comes_from_the_catalogue(tmp_path: Path) -> None:
    """A Packer child built on a runner that did not build its base: `fetch-source` takes the base
    from the catalogue (signature-verified, sha256/sha512 checked) instead of the local store."""
    from types import SimpleNamespace

    from imagefactory.builders.packer import fetch_source
    from imagefactory.catalogue import signing
    from imagefactory.errors import UserError
    from imagefactory.recipes.model import LocalImageSource
    from imagefactory.services import FactoryServices

    private, public = signing.generate(tmp_path / "keys", "t")
    key = signing.load_private_key(str(private))
    store_dir = tmp_path / "catalogue"
    cfg = FactoryConfig.model_validate(
        {
            "stores": {"cat": {"type": "local", "path": str(store_dir)}},
            "default_store": "cat",
            "signing": {"public_key": str(public)},
        }
    )
    # The builder reaches the store and the catalogue only through the services on its context.
    ctx = SimpleNamespace(
        recipe=SimpleNamespace(name="child", source=LocalImageSource(type="local-image", image="base")),
        services=FactoryServices(tmp_path / "work", cfg),
        manifest={},
        packer_source=None,
    )
    with pytest.raises(UserError) as e:  # neither in the local store nor in the catalogue
        fetch_source(ctx)  # type: ignore[arg-type]
    assert "not in the catalogue" in (e.value.hint or "")
    store = LocalDirStore("cat", store_dir)
    store.prepare()
    d = fake_build(tmp_path / "b", name="base", version="20261130.000001-base", size=8192)
    publish(d, store, key, key.public_key())
    fetch_source(ctx)  # type: ignore[arg-type]
    path, sha256 = ctx.packer_source
    assert path.read_bytes() == (d / "image.qcow2").read_bytes()
    assert ctx.manifest["source"] == {
        "type": "local-image",
        "image": "base",
        "version": "20261130.000001-base",
        "sha256": sha256,
        "from": "catalogue",
    }
    # without the public key configured it cannot be trusted: the local-store error stands
    ctx.services = FactoryServices(tmp_path / "work", cfg.model_copy(update={"signing": signing_config()}))
    with pytest.raises(UserError) as e:
        fetch_source(ctx)  # type: ignore[arg-type]
    assert "signing.public_key" in (e.value.hint or "")


def signing_config() -> Any:
    from imagefactory.config import SigningConfig

    return SigningConfig()
