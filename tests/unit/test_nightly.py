"""Nightly rebuilds: build keys, the plan, `updates check` against a loopback upstream, the lock's
base sources, the CLI (exit codes, --json, CI formats) and the pipeline files.

Nothing here contacts a public address: recipes are written into temporary directories with
their mirrors, cloud images and channels on a `ReleaseMirror` at 127.0.0.1, and the factory
configuration points `upstream:` at it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagefactory.archive import pocket_suites
from imagefactory.catalogue.stores import LocalDirStore
from imagefactory.config import FactoryConfig
from imagefactory.lock import POCKETS, LockFile, diff, input_key, resolve_entry
from imagefactory.nightly import (
    BuildKey,
    CheckError,
    RunResult,
    build_key,
    catalogue_latest,
    check_updates,
    plan,
    render_gitlab,
    render_summary,
)
from imagefactory.nightly.render import github_matrix
from imagefactory.recipes import RecipeBook
from tests.conftest import REPO
from tests.standins.mirror import ReleaseMirror, upstream_bases
from tests.standins.release import make_rke2_release, make_zarf_release
from tests.standins.updates_mirror import UpstreamSite

RKE2_OLD, RKE2_NEW, RKE2_MINOR, ZARF = "v1.31.4+rke2r1", "v1.31.5+rke2r1", "v1.32.0+rke2r1", "v0.84.0"
DATE1, DATE2 = "Sat, 10 Aug 2024 09:47:25 UTC", "Sun, 11 Aug 2024 03:12:00 UTC"
UNUSED = "http://127.0.0.1:9"  # the discard port: recipes whose keys are computed offline only

WAIVERS = """\
waivers:
  - id: W-TEST-001
    stig_ids: [UBTU-22-215040]
    scope: {os: [debian]}
    type: operational-requirement
    justification: "NFS volumes need the client"
    approver: "J. Doe, ISSM"
    approved: 2026-01-01
    expires: 2027-01-01
"""


def write_recipes(d: Path, mirror: str) -> Path:
    """deb-base (mmdebstrap, template, STIG + waivers) <- deb-child, deb-rke2 (RKE2 + Zarf);
    deb-packer (local-image of deb-base); ubu-base (cloud image, SHA256SUMS) <- ubu-rke2;
    ubu-pinned (cloud image with a pinned checksum, no updates)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "templates").mkdir(exist_ok=True)
    (d / "templates/motd.j2").write_text("built from {{ recipe.name }}\n")
    (d / "waivers").mkdir(exist_ok=True)
    (d / "waivers/site.yaml").write_text(WAIVERS)
    files = {
        "deb-base": f"""\
os: {{family: debian, release: "12"}}
source: {{type: mmdebstrap, mirror: {mirror}/debian, suite: bookworm}}
packages: {{install: [less]}}
files: [{{path: /etc/motd, template: templates/motd.j2}}]
stig: {{benchmarks: [ubuntu2204], waivers: [waivers/site.yaml]}}
""",
        "deb-child": "extends: deb-base\npackages: {install: [jq]}\n",
        "deb-rke2": f"""\
extends: deb-base
disk: {{size: 6GiB}}
rke2: {{channel: stable, images: [core, canal]}}
zarf: {{version: {ZARF}}}
""",
        "deb-packer": """\
extends: deb-base
source: {type: local-image, image: deb-base}
builder: packer
packer: {update: false}
""",
        "ubu-base": f"""\
os: {{family: ubuntu, release: "22.04"}}
source:
  type: cloud-image
  url: {mirror}/cloud/jammy/jammy-server-cloudimg-amd64.img
  checksum_url: {mirror}/cloud/jammy/SHA256SUMS
builder: packer
packer: {{package_mirrors: ["{mirror}/ubuntu"]}}
""",
        "ubu-rke2": """\
extends: ubu-base
disk: {size: 20GiB}
rke2: {channel: stable, images: [core, canal]}
""",
        "ubu-pinned": f"""\
os: {{family: ubuntu, release: "22.04"}}
source:
  type: cloud-image
  url: {mirror}/cloud/jammy/jammy-server-cloudimg-amd64.img
  checksum: sha256:{"ab" * 32}
builder: packer
packer: {{update: false}}
""",
    }
    for name, text in files.items():
        (d / f"{name}.yaml").write_text(text)
    return d


def fake_source(recipe_dir: Path, name: str, release: str = "a" * 64) -> dict[str, Any]:
    """A lock `source` as `lock update` would record it, without the network."""
    r = RecipeBook(recipe_dir).load(name).recipe
    where = pocket_suites(r)
    pockets: dict[str, Any] = {p: None for p in POCKETS}
    for p, (base, suite) in where.items():
        pockets[p] = {"mirror": base, "suite": suite, "url": f"{base}/dists/{suite}/Release",
                      "release_sha256": "b" * 64, "date": DATE1}
    src = r.source
    if src.type == "mmdebstrap":
        return {"type": "mmdebstrap", "mirror": src.mirror, "suite": src.suite, "release_sha256": release,
                "date": DATE1, "url": f"{src.mirror}/dists/{src.suite}/Release", **pockets}
    if src.type == "cloud-image":
        return {"type": "cloud-image", "url": src.url, "checksum": src.checksum,
                "checksum_url": src.checksum_url, "sha256": release, **pockets}
    return {"type": "local-image", "image": src.image, **pockets}


def fake_lock(recipe_dir: Path) -> LockFile:
    """Every recipe locked offline: sources, and RKE2/Zarf artifacts with made-up hashes."""
    lock = LockFile(recipe_dir)
    book = RecipeBook(recipe_dir)
    entries: dict[str, dict[str, Any]] = {}
    for n in book.names():
        r = book.load(n).recipe
        e: dict[str, Any] = {"key": input_key(r), "artifacts": [], "source": fake_source(recipe_dir, n)}
        if r.rke2:
            e["rke2"] = {"version": RKE2_OLD, "channel": "stable", "arch": "amd64"}
            e["artifacts"] += [
                {"name": "rke2.linux-amd64.tar.gz", "sha256": "1" * 64, "url": "u", "role": "rke2-bundle"},
                {"name": "sha256sum-amd64.txt", "sha256": "2" * 64, "url": "u", "role": "rke2-sums"}]
        if r.zarf:
            e["zarf"] = {"version": ZARF}
            e["artifacts"] += [{"name": f"zarf_{ZARF}_Linux_amd64", "sha256": "3" * 64, "url": "u",
                                "role": "zarf-binary"}]
        entries[n] = e
    lock.update(entries)
    return lock


def edit_lock(lock: LockFile, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    entry = lock.raw_entry(name)
    assert entry is not None
    change(entry)
    lock.update({name: entry})


@pytest.fixture
def offline_recipes(tmp_path: Path) -> Path:
    d = write_recipes(tmp_path / "recipes", UNUSED)
    fake_lock(d)
    return d


def key(d: Path, name: str) -> BuildKey:
    return build_key(RecipeBook(d), LockFile(d), name)


# --- build keys -----------------------------------------------------------------------------------


Change = Callable[[Path, pytest.MonkeyPatch], None]


def append(path: str, text: str) -> Change:
    def change(d: Path, mp: pytest.MonkeyPatch) -> None:
        (d / path).write_text((d / path).read_text() + text)
    return change


def in_lock(name: str, edit: Callable[[dict[str, Any]], None]) -> Change:
    return lambda d, mp: edit_lock(LockFile(d), name, edit)


def new_release(e: dict[str, Any]) -> None:
    e["source"]["release_sha256"] = "c" * 64


def new_security(e: dict[str, Any]) -> None:
    e["source"]["security"]["release_sha256"] = "c" * 64


def new_updates(e: dict[str, Any]) -> None:
    e["source"]["updates"]["release_sha256"] = "c" * 64


def new_image(e: dict[str, Any]) -> None:
    e["source"]["sha256"] = "c" * 64


def new_rke2(e: dict[str, Any]) -> None:
    e["rke2"]["version"] = RKE2_NEW


def new_artifact(role: str) -> Callable[[dict[str, Any]], None]:
    def edit(e: dict[str, Any]) -> None:
        next(a for a in e["artifacts"] if a["role"] == role)["sha256"] = "f" * 64
    return edit


def more_packages(d: Path, mp: pytest.MonkeyPatch) -> None:
    (d / "deb-base.yaml").write_text((d / "deb-base.yaml").read_text().replace("[less]", "[less, curl]"))


def reviewed_stig_catalogue(d: Path, mp: pytest.MonkeyPatch) -> None:
    copy = d.parent / "stig"
    shutil.copytree(REPO / "stig", copy, ignore=shutil.ignore_patterns("benchmarks"))
    (copy / "ubuntu2204.yaml").write_text((copy / "ubuntu2204.yaml").read_text() + "# reviewed\n")
    mp.setenv("IMAGEFACTORY_STIG_CATALOGUE", str(copy))


def new_release_of_imagefactory(d: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setattr("imagefactory.buildkey.IMAGEFACTORY_VERSION", "99.0")


# case -> (recipe, change, the inputs that must change)
MUTATIONS: dict[str, tuple[str, Change, set[str]]] = {
    "base-source": ("deb-base", in_lock("deb-base", new_release), {"source"}),
    "security-suite": ("deb-base", in_lock("deb-base", new_security), {"security"}),
    "updates-suite": ("deb-base", in_lock("deb-base", new_updates), {"updates"}),
    "cloud-image": ("ubu-base", in_lock("ubu-base", new_image), {"source"}),
    "package-list": ("deb-base", more_packages, {"packages", "recipe"}),
    "rke2-version": ("deb-rke2", in_lock("deb-rke2", new_rke2), {"rke2"}),
    "rke2-hash": ("deb-rke2", in_lock("deb-rke2", new_artifact("rke2-bundle")), {"rke2"}),
    "zarf-hash": ("deb-rke2", in_lock("deb-rke2", new_artifact("zarf-binary")), {"zarf"}),
    "stig-catalogue": ("deb-base", reviewed_stig_catalogue, {"stig:ubuntu2204"}),
    "waiver-file": ("deb-base", append("waivers/site.yaml", "# ok\n"), {"waivers:waivers/site.yaml"}),
    "template": ("deb-base", append("templates/motd.j2", "welcome\n"), {"templates"}),
    "recipe": ("deb-base", append("deb-base.yaml", "description: changed\n"), {"recipe"}),
    "imagefactory-version": ("deb-base", new_release_of_imagefactory, {"imagefactory"}),
    "parent-flips-child": ("deb-child", in_lock("deb-base", new_release), {"parent"}),
    "base-image-flips-packer": ("deb-packer", in_lock("deb-base", new_release), {"parent", "base-image"}),
}


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_each_input_flips_the_build_key(case: str, offline_recipes: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    name, change, expected = MUTATIONS[case]
    before = key(offline_recipes, name)
    assert not before.unknown, before.unknown
    assert key(offline_recipes, name) == before  # deterministic
    change(offline_recipes, monkeypatch)
    after = key(offline_recipes, name)
    assert after.key != before.key
    assert {k for k in set(before.inputs) | set(after.inputs)
            if before.inputs.get(k) != after.inputs.get(k)} == expected


def test_inputs_are_named(offline_recipes: Path) -> None:
    k = key(offline_recipes, "deb-rke2")
    assert k.parent == "deb-base" and k.depends == ("deb-base",)
    assert k.inputs["parent"] == key(offline_recipes, "deb-base").key
    assert k.inputs["rke2"].startswith(f"{RKE2_OLD} artifacts:") and k.inputs["zarf"].startswith(ZARF)
    assert k.inputs["source"] == f"sha256:{'a' * 64} ({DATE1})"
    assert k.inputs["stig:ubuntu2204"].startswith("V2R8 catalogue:")
    assert {"stig:rke2", "imagefactory", "recipe", "packages", "templates", "security"} - set(k.inputs) \
        == {"stig:rke2"}  # deb-rke2 names no rke2 benchmark
    packer = key(offline_recipes, "deb-packer")
    assert packer.base_image == "deb-base"
    assert packer.inputs["base-image"] == key(offline_recipes, "deb-base").key
    assert "security" not in packer.inputs and "updates" not in packer.inputs  # packer.update: false


def test_unknown_inputs_force_a_rebuild_and_old_locks_stay_readable(offline_recipes: Path) -> None:
    lock = LockFile(offline_recipes)
    # A lock written before base sources: no `source`; builds still read it.
    edit_lock(lock, "deb-rke2", lambda e: e.pop("source"))
    recipe = RecipeBook(offline_recipes).load("deb-rke2").recipe
    assert lock.entry(recipe)["rke2"]["version"] == RKE2_OLD
    k = key(offline_recipes, "deb-rke2")
    assert set(k.unknown) == {"source", "updates", "security"} and k.inputs["source"] == "unknown"
    # A source locked for another mirror is not this recipe's identity.
    edit_lock(lock, "deb-base", lambda e: e["source"].update(mirror="http://127.0.0.1:9/elsewhere"))
    assert set(key(offline_recipes, "deb-base").unknown) == {"source", "updates", "security"}
    # A lock from before the updates pocket was tracked: that input alone is unknown.
    edit_lock(lock, "deb-base", lambda e: e["source"].update(mirror=f"{UNUSED}/debian"))
    edit_lock(lock, "deb-base", lambda e: e["source"].pop("updates"))
    assert set(key(offline_recipes, "deb-base").unknown) == {"updates"}
    assert "parent" in key(offline_recipes, "deb-child").unknown
    # rke2/zarf changed in the recipe since the lock: stale.
    (offline_recipes / "deb-rke2.yaml").write_text(
        (offline_recipes / "deb-rke2.yaml").read_text().replace("[core, canal]", "[core, calico]"))
    k = key(offline_recipes, "deb-rke2")
    assert "stale" in k.unknown["rke2"] and "stale" in k.unknown["zarf"]
    # A pinned cloud image is known without any lock entry.
    lock.path.unlink()
    pinned = key(offline_recipes, "ubu-pinned")
    assert pinned.unknown == {} and pinned.inputs["source"] == f"sha256:{'ab' * 32}"


# --- the plan --------------------------------------------------------------------------------------


def published(keys: dict[str, BuildKey], with_inputs: bool = True) -> Callable[[str], dict[str, Any] | None]:
    def latest(name: str) -> dict[str, Any] | None:
        if name not in keys:
            return None
        inputs: dict[str, Any] = {"key": "x", "build_key": keys[name].key}
        if with_inputs:
            inputs["build_inputs"] = keys[name].inputs
        return {"name": name, "version": "20260101.000000-abcd", "inputs": inputs}
    return latest


def test_plan_skips_what_is_published_and_orders_parents_first(offline_recipes: Path) -> None:
    book, lock = RecipeBook(offline_recipes), LockFile(offline_recipes)
    keys = {n: key(offline_recipes, n) for n in book.names()}
    p = plan(book, lock, published(keys), None)
    assert p.build == [] and all(e.reasons[0].startswith("up to date: ") for e in p.entries)
    names = [e.recipe for e in p.entries]
    for kid, parent in (("deb-child", "deb-base"), ("deb-rke2", "deb-base"), ("ubu-rke2", "ubu-base"),
                          ("deb-packer", "deb-base")):
        assert names.index(parent) < names.index(kid)
    # A parent never published rebuilds alone: its children's inputs (its key among them) are unchanged.
    p = plan(book, lock, published({n: k for n, k in keys.items() if n != "deb-base"}), None)
    assert p.build == ["deb-base"] and p.entries[0].reasons == ["never published"]
    # The base's mirror moved: it and its children rebuild, the Ubuntu family does not.
    edit_lock(lock, "deb-base", lambda e: e["source"].update(release_sha256="c" * 64, date=DATE2))
    p = plan(book, lock, published(keys), None)
    assert p.build == ["deb-base", "deb-child", "deb-packer", "deb-rke2"]
    base_entry = p.entry("deb-base")
    assert base_entry is not None and base_entry.stage == 0 and base_entry.needs == []
    assert base_entry.reasons == [f"source: sha256:aaaaaaaaaaaa ({DATE1}) -> sha256:cccccccccccc ({DATE2})"]
    child = p.entry("deb-child")
    assert child is not None and child.needs == ["deb-base"] and child.stage == 1
    assert child.reasons[0] == "parent deb-base rebuilds"
    assert any(r.startswith("parent: ") for r in child.reasons)
    assert {e.recipe for e in p.entries if e.action == "skip"} == {"ubu-base", "ubu-rke2", "ubu-pinned"}
    # Only the child's own input changed: the parent is skipped, the child waits for nothing.
    keys = {n: key(offline_recipes, n) for n in book.names()}
    (offline_recipes / "deb-child.yaml").write_text("extends: deb-base\npackages: {install: [jq, curl]}\n")
    p = plan(book, lock, published(keys), ["deb-child", "deb-base"])
    assert p.build == ["deb-child"] and [e.recipe for e in p.entries] == ["deb-base", "deb-child"]
    child = p.entry("deb-child")
    assert child is not None and child.needs == [] and child.stage == 0
    assert {r.split(":")[0] for r in child.reasons} == {"packages", "recipe"}


def test_plan_reasons_without_history(offline_recipes: Path) -> None:
    book, lock = RecipeBook(offline_recipes), LockFile(offline_recipes)
    keys = {n: key(offline_recipes, n) for n in ("deb-base",)}
    p = plan(book, lock, published(keys, with_inputs=False), ["deb-base", "ubu-base"])
    assert p.build == ["ubu-base"]
    assert p.entry("ubu-base").reasons == ["never published"]  # type: ignore[union-attr]
    edit_lock(lock, "deb-base", lambda e: e["source"].update(release_sha256="c" * 64))
    reasons = plan(book, lock, published(keys, with_inputs=False), ["deb-base"]).entries[0].reasons
    assert len(reasons) == 1 and reasons[0].startswith("build key changed: ")
    old = plan(book, lock, lambda n: {"name": n, "version": "1", "inputs": {"key": "x"}}, ["deb-base"])
    assert old.entries[0].reasons == ["deb-base:1 records no build key (published before build keys)"]


def test_invalid_recipe_does_not_stop_the_plan(offline_recipes: Path) -> None:
    (offline_recipes / "broken.yaml").write_text("os: {family: debian, release: '12'}\ndisk: {sise: 1}\n")
    book, lock = RecipeBook(offline_recipes), LockFile(offline_recipes)
    p = plan(book, lock, lambda n: None, None)
    broken = p.entry("broken")
    assert broken is not None and broken.action == "invalid"
    assert "disk.sise: unknown key" in broken.reasons[-1]
    assert len(p.build) == len(book.names()) - 1
    doc = yaml.safe_load(render_gitlab(p))
    assert doc["invalid:broken"]["script"][-1] == "exit 1"
    [entry] = [e for e in github_matrix(p)["include"] if e["recipe"] == "broken"]
    assert entry["action"] == "invalid" and entry["stage"] == 0 and "disk.sise" in entry["problems"]


def test_catalogue_latest_reads_the_newest_usable_manifest(tmp_path: Path) -> None:
    store = LocalDirStore("local", tmp_path / "catalogue")
    versions = [("20260101.000000-aaaa", None), ("20260102.000000-bbbb", None),
                ("20260103.000000-cccc", {"reason": "bad", "at": "2026-01-04T00:00:00+00:00"})]
    for v, _ in versions:
        store.put_bytes(f"images/x/{v}/manifest.json",
                        json.dumps({"name": "x", "version": v, "inputs": {"build_key": v}}).encode())
    store.put_bytes("index.json", json.dumps({"schema": 1, "images": {"x": [
        {"version": v, "revoked": r} for v, r in versions]}}).encode())
    latest = catalogue_latest(store)
    assert latest("x") == {"name": "x", "version": "20260102.000000-bbbb",
                           "inputs": {"build_key": "20260102.000000-bbbb"}}
    assert latest("y") is None


# --- updates check and lock update against the loopback upstream -------------------------------


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with upstream_site(tmp_path) as s:
        yield s


@contextlib.contextmanager
def upstream_site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Upstream doubles on 127.0.0.1 (RKE2/Zarf releases and channels, apt Releases, a cloud
    image's SHA256SUMS) and the test recipes pointing at them (also used by test_nightly_run)."""
    root = tmp_path / "mirror"
    make_rke2_release(root, RKE2_OLD)
    make_rke2_release(root, RKE2_NEW)
    make_rke2_release(root, RKE2_MINOR)
    make_zarf_release(root, ZARF)
    up = UpstreamSite(root)
    up.release("debian", "bookworm", DATE1)
    up.release("debian", "bookworm-updates", DATE1)
    up.release("debian-security", "bookworm-security", DATE1)
    up.release("ubuntu", "jammy-updates", DATE1)
    up.release("ubuntu", "jammy-security", DATE1)
    up.cloud_image("cloud/jammy", "jammy-server-cloudimg-amd64.img", b"image 1")
    with ReleaseMirror(root, channels={"stable": RKE2_OLD}) as mirror:
        recipes = write_recipes(tmp_path / "recipes", mirror.url)
        config = tmp_path / "imagefactory.yaml"
        config.write_text(yaml.safe_dump({"upstream": upstream_bases(mirror.url)}))
        yield {"tmp": tmp_path, "recipes": recipes, "config": config, "mirror": mirror, "up": up,
               "cfg": FactoryConfig.model_validate({"upstream": upstream_bases(mirror.url)})}


def lock_all(site: dict[str, Any]) -> LockFile:
    book, lock = RecipeBook(site["recipes"]), LockFile(site["recipes"])
    entries = {}
    for n in book.names():
        entry, warnings = resolve_entry(site["cfg"], book.load(n).recipe)
        assert warnings == []
        entries[n] = entry
    lock.update(entries)
    return lock


def updated(site: dict[str, Any]) -> dict[str, set[str]]:
    errors: list[CheckError] = []
    ups = check_updates(site["cfg"], RecipeBook(site["recipes"]), LockFile(site["recipes"]), None, errors)
    assert errors == []
    out: dict[str, set[str]] = {}
    for u in ups:
        out.setdefault(u.input, set()).add(u.recipe)
    return out


def test_lock_records_every_base_source(site: dict[str, Any]) -> None:
    lock = lock_all(site)
    data = lock.read()["recipes"]
    assert set(data) == set(RecipeBook(site["recipes"]).names())
    deb = data["deb-base"]["source"]
    assert deb["type"] == "mmdebstrap" and deb["date"] == DATE1 and len(deb["release_sha256"]) == 64
    assert deb["security"]["url"] == f"{site['mirror'].url}/debian-security/dists/bookworm-security/Release"
    ubu = data["ubu-base"]["source"]
    assert ubu["sha256"] == hashlib.sha256(b"image 1").hexdigest()
    assert ubu["security"]["suite"] == "jammy-security"
    assert data["ubu-pinned"]["source"] == {"type": "cloud-image", "url": ubu["url"],
                                            "checksum": f"sha256:{'ab' * 32}", "checksum_url": None,
                                            "sha256": "ab" * 32, "updates": None, "security": None}
    assert data["deb-packer"]["source"] == {"type": "local-image", "image": "deb-base", "updates": None,
                                            "security": None}
    assert deb["updates"]["suite"] == "bookworm-updates" and ubu["updates"]["suite"] == "jammy-updates"
    assert updated(site) == {}
    # A lock diff names the base change.
    site["up"].release("debian", "bookworm", DATE2, packages="base,new")
    new, _ = resolve_entry(site["cfg"], RecipeBook(site["recipes"]).load("deb-base").recipe)
    [line] = diff(data["deb-base"], new)
    assert line.startswith("source: bookworm Release ") and f"({DATE1}) -> bookworm Release " in line


def test_updates_check_reports_exactly_the_affected_recipes(site: dict[str, Any]) -> None:
    lock_all(site)
    up: UpstreamSite = site["up"]
    up.cloud_image("cloud/jammy", "jammy-server-cloudimg-amd64.img", b"image 2")
    assert updated(site) == {"source": {"ubu-base", "ubu-rke2"}}  # not ubu-pinned: pinned never changes
    lock_all(site)
    site["mirror"].channels["stable"] = RKE2_NEW
    errors: list[CheckError] = []
    ups = check_updates(site["cfg"], RecipeBook(site["recipes"]), LockFile(site["recipes"]), None, errors)
    assert [(u.recipe, u.input, u.old, u.new) for u in ups] == [("deb-rke2", "rke2", RKE2_OLD, RKE2_NEW),
                                                               ("ubu-rke2", "rke2", RKE2_OLD, RKE2_NEW)]
    assert ups[0].reason == f"new RKE2 patch release in channel stable: {RKE2_OLD} -> {RKE2_NEW}"
    site["mirror"].channels["stable"] = RKE2_MINOR
    assert "minor" in check_updates(site["cfg"], RecipeBook(site["recipes"]), LockFile(site["recipes"]),
                                    ["deb-rke2"])[0].reason
    lock_all(site)
    up.release("debian", "bookworm", DATE2, packages="base,new")
    assert updated(site) == {"source": {"deb-base", "deb-child", "deb-rke2"}}  # deb-packer: a local image
    lock_all(site)
    up.release("debian-security", "bookworm-security", DATE2, packages="openssl")
    up.release("ubuntu", "jammy-security", DATE2, packages="openssl")
    found = updated(site)
    assert found == {"security": {"deb-base", "deb-child", "deb-rke2", "ubu-base", "ubu-rke2"}}
    lock_all(site)
    up.release("ubuntu", "jammy-updates", DATE2, packages="cloud-init")
    assert updated(site) == {"updates": {"ubu-base", "ubu-rke2"}}
    lock_all(site)
    assert updated(site) == {}


def test_unreachable_upstream_is_an_error_per_recipe(site: dict[str, Any]) -> None:
    lock_all(site)
    site["up"].remove_release("debian", "bookworm")
    errors: list[CheckError] = []
    ups = check_updates(site["cfg"], RecipeBook(site["recipes"]), LockFile(site["recipes"]), None, errors)
    assert ups == [] and {e.recipe for e in errors} == {"deb-base", "deb-child", "deb-rke2"}
    assert "dists/bookworm/Release: not found" in errors[0].error
    # lock update keeps the locked identity of a source it cannot reach, and says so
    entry, warnings = resolve_entry(site["cfg"], RecipeBook(site["recipes"]).load("deb-base").recipe,
                                    LockFile(site["recipes"]).raw_entry("deb-base"))
    assert entry["source"]["date"] == DATE1 and "keeping the locked one" in warnings[0]
    entry, warnings = resolve_entry(site["cfg"], RecipeBook(site["recipes"]).load("deb-base").recipe)
    assert "source" not in entry and "unknown" in warnings[0]


# --- the CLI ---------------------------------------------------------------------------------------


def cli(site: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagefactory.cli", "--recipes", str(site["recipes"]),
                           "--config", str(site["config"]), "--workdir", str(site["tmp"] / "work"), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_lock_update_and_updates_check_exit_codes(site: dict[str, Any]) -> None:
    r = cli(site, "--json", "lock", "update")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc["changes"]) == set(RecipeBook(site["recipes"]).names()) and doc["warnings"] == {}
    assert doc["changes"]["deb-base"] == ["new entry"]
    r = cli(site, "--json", "updates", "check", "--exit-code")
    assert r.returncode == 0 and json.loads(r.stdout)["updates"] == []
    site["mirror"].channels["stable"] = RKE2_NEW
    r = cli(site, "--json", "updates", "check", "--exit-code", "deb-rke2", "deb-base")
    assert r.returncode == 3, r.stderr
    assert [(u["recipe"], u["input"], u["new"]) for u in json.loads(r.stdout)["updates"]] == \
        [("deb-rke2", "rke2", RKE2_NEW)]
    r = cli(site, "updates", "check", "deb-rke2")
    assert r.returncode == 0 and "new RKE2 patch release in channel stable" in r.stdout
    r = cli(site, "lock", "update", "deb-rke2")
    assert r.returncode == 0 and f"rke2: {RKE2_OLD} -> {RKE2_NEW}" in r.stdout
    site["up"].remove_release("debian", "bookworm")
    r = cli(site, "--json", "updates", "check", "--exit-code")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "error: deb-base source: GET " in r.stderr
    assert {e["recipe"] for e in json.loads(r.stdout)["errors"]} == {"deb-base", "deb-child", "deb-rke2"}
    r = cli(site, "--json", "lock", "update", "deb-base")
    assert r.returncode == 0 and "keeping the locked one" in json.loads(r.stdout)["warnings"]["deb-base"][0]
    r = cli(site, "updates", "check", "no-such-recipe")
    assert r.returncode == 2 and "no recipe named 'no-such-recipe'" in r.stderr


def test_cli_plan_formats_and_store(site: dict[str, Any]) -> None:
    assert cli(site, "lock", "update").returncode == 0
    r = cli(site, "plan")
    assert r.returncode == 2 and "--all" in r.stderr
    assert cli(site, "plan", "--all", "deb-base").returncode == 2
    assert cli(site, "plan", "nothing").returncode == 2
    # Publish deb-base (its manifest, as publish will record the key) into the local store.
    k = build_key(RecipeBook(site["recipes"]), LockFile(site["recipes"]), "deb-base")
    store = LocalDirStore("local", site["tmp"] / "work/catalogue")
    v = "20260101.000000-abcd"
    store.put_bytes(f"images/deb-base/{v}/manifest.json", json.dumps(
        {"name": "deb-base", "version": v, "inputs": {"build_key": k.key, "build_inputs": k.inputs}}
    ).encode())
    index = {"schema": 1, "images": {"deb-base": [{"version": v}]}}
    store.put_bytes("index.json", json.dumps(index).encode())
    r = cli(site, "--json", "plan", "--all")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["skip"] == ["deb-base"] and "deb-base" not in doc["build"] and doc["invalid"] == []
    assert doc["build"].index("ubu-base") < doc["build"].index("ubu-rke2")  # parents first
    text = cli(site, "plan", "deb-base", "ubu-rke2").stdout
    assert "skip     deb-base" in text and "never published" in text and "1 to build, 1 up to date" in text
    r = cli(site, "plan", "--all", "--format", "gitlab")
    assert r.returncode == 0, r.stderr
    pipeline = yaml.safe_load(r.stdout)
    jobs = {j for j in pipeline if j.startswith("build:")}
    assert jobs == {f"build:{n}" for n in doc["build"]}
    assert pipeline["build:deb-rke2"]["script"] == ["bash ci/nightly-build.sh deb-rke2"]
    assert pipeline["build:deb-rke2"]["needs"] == [{"pipeline": "$PARENT_PIPELINE_ID", "job": "plan"}]
    assert pipeline["build:ubu-rke2"]["needs"][1:] == ["build:ubu-base"]
    assert pipeline["include"] == [{"local": "ci/nightly/build-job.yml"}]
    assert "# skip deb-base: up to date" in r.stdout
    matrix = json.loads(cli(site, "plan", "--all", "--format", "github").stdout)
    assert {e["recipe"] for e in matrix["include"]} == set(doc["build"])
    assert {e["recipe"]: e["stage"] for e in matrix["include"]}["ubu-rke2"] == 1
    # Nothing to build is still a valid child pipeline (one job).
    nothing = yaml.safe_load(cli(site, "plan", "deb-base", "--format", "gitlab").stdout)
    assert [j for j in nothing if j not in ("include", "stages")] == ["nothing-to-build"]


# --- run summary and pipeline files -----------------------------------------------------------


def test_run_summary_json_and_markdown() -> None:
    results = [RunResult("a", "built", ("parent b rebuilds",), "k" * 64, "20260101.000000-abcd",
                         seconds=61.2),
               RunResult("b", "skipped", (f"up to date: b:1 has build key {'e' * 64}",)),
               RunResult("c", "failed", ("never published",), error="boot test failed | 2 failed\nsee log")]
    doc, md = render_summary(results)
    assert doc["ok"] is False and doc["counts"] == {"built": 1, "skipped": 1, "failed": 1}
    assert doc["results"][0]["reasons"] == ["parent b rebuilds"]
    assert doc["results"][2]["error"].startswith("boot")
    lines = md.splitlines()
    assert lines[0] == "## imagefactory nightly: 1 built, 1 skipped, 1 failed"
    assert lines[4] == "| a | ✅ built | 20260101.000000-abcd | parent b rebuilds<br>61 s |"
    assert lines[5] == f"| b | ⏭️ skipped |  | up to date: b:1 has build key {'e' * 12} |"
    assert "boot test failed \\| 2 failed<br>see log<br>never published" in lines[6]
    empty = {"ok": True, "counts": {"built": 0, "skipped": 0, "failed": 0}, "results": []}
    assert render_summary([])[0] == empty


def test_pipeline_files() -> None:
    gitlab = yaml.safe_load((REPO / "ci/nightly/gitlab-ci.yml").read_text())
    plan_job, trigger = gitlab["plan"], gitlab["build"]
    assert "child.yml" in plan_job["artifacts"]["paths"]
    assert any("plan" in line and "--format gitlab" in line for line in plan_job["script"])
    assert trigger["trigger"]["include"] == [{"artifact": "child.yml", "job": "plan"}]
    assert trigger["variables"]["PARENT_PIPELINE_ID"] == "$CI_PIPELINE_ID"
    template = yaml.safe_load((REPO / "ci/nightly/build-job.yml").read_text())
    assert ".imagefactory-nightly-build" in template
    github = yaml.safe_load((REPO / "ci/nightly/github-nightly.yml").read_text())
    assert github[True]["schedule"][0]["cron"]  # YAML 1.1 reads the key `on` as true
    stages = [j for j in github["jobs"] if j.startswith("build-stage-")]
    assert len(stages) >= 2
    for j in stages:
        assert github["jobs"][j]["strategy"]["matrix"].startswith("${{ fromJSON(needs.plan.outputs.")
    assert subprocess.run(["bash", "-n", str(REPO / "ci/nightly-build.sh")]).returncode == 0
    for script in (REPO / "ci/nightly").glob("*.sh"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script


def stages(matrix: dict[str, Any], out: Path) -> subprocess.CompletedProcess[str]:
    script = str(REPO / "ci/nightly/github-stages.py")
    return subprocess.run([sys.executable, script], input=json.dumps(matrix),
                          env={"GITHUB_OUTPUT": str(out), "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True)


def test_github_stages_split(tmp_path: Path) -> None:
    matrix = {"include": [{"recipe": "a", "needs": [], "stage": 0, "action": "build"},
                          {"recipe": "b", "needs": ["a"], "stage": 1, "action": "build"}]}
    out = tmp_path / "output"
    r = stages(matrix, out)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert json.loads(lines["stage0"]) == {"include": [matrix["include"][0]]}
    assert json.loads(lines["stage1"]) == {"include": [matrix["include"][1]]}
    assert lines["stage2_count"] == "0" and lines["count"] == "2"
    r = stages({"include": [{"recipe": "z", "needs": [], "stage": 3, "action": "build"}]}, out)
    assert r.returncode == 1 and "build-stage-3" in r.stderr
