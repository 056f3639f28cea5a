"""A root written in place over its predecessor's file system (imagefactory.builders.inplace),
with the real mkfs.ext4, debugfs and e2fsck: the result holds exactly what `mkfs -d` of the new
tree holds (names, types, modes, owners, mtimes, content, link groups, xattrs, devices), passes
e2fsck, keeps unchanged files where they were, and is a function of the base and the tree."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagefactory.builders import inplace
from imagefactory.errors import BuildError, UserError
from tests.conftest import require_root

pytestmark = pytest.mark.integration

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
EPOCH = 1764892800
SIZE = 64 << 20


def _tree(root: Path) -> None:
    (root / "etc/ssh").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/share/doc/old").mkdir(parents=True)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "etc/hostname").write_text("base\n")
    (root / "etc/ssh/sshd_config").write_text("PermitRootLogin no\n" * 50)
    (root / "usr/bin/ping").write_bytes(os.urandom(40_000))
    os.setxattr(root / "usr/bin/ping", "security.capability",
                bytes.fromhex("0100000200200000000000000000000000000000"))
    (root / "usr/bin/keep").write_bytes(os.urandom(300_000))
    (root / "usr/bin/perl5").write_bytes(os.urandom(5_000))
    os.link(root / "usr/bin/perl5", root / "usr/bin/perl")
    os.link(root / "usr/bin/perl5", root / "usr/bin/perl5.36")
    (root / "usr/share/doc/old/README").write_text("REMOVED-PACKAGE-MARKER\n" * 300)
    (root / "usr/share/doc/old/sub").mkdir()
    (root / "usr/share/doc/old/sub/x").write_text("x\n")
    (root / "var/lib/dpkg/status").write_text("Package: base\n" * 200)
    (root / "var/lib/was-a-dir").mkdir()
    (root / "var/lib/was-a-dir/f").write_text("f\n")
    (root / "var/lib/was-a-file").write_text("f\n")
    os.symlink("keep", root / "usr/bin/alias")
    os.mkfifo(root / "dev/initctl")
    os.mknod(root / "dev/null", 0o20666, os.makedev(1, 3))
    (root / "usr/bin/tool").write_text("#!/bin/sh\n")
    (root / "usr/bin/tool").chmod(0o755)


def _change(root: Path) -> None:
    """What a nightly does: a package added, one upgraded, one removed, metadata changes."""
    (root / "usr/bin/tree").write_bytes(os.urandom(90_000))  # new
    (root / "usr/share/doc/tree").mkdir()
    (root / "usr/share/doc/tree/copy right").write_text("tree\n")  # a space in a name
    (root / 'etc/a"quote\\x2dback').write_text("q\n")  # a quote; a backslash as systemd names have
    (root / "etc/hostname").write_text("nightly\n")  # content changed
    with open(root / "var/lib/dpkg/status", "a") as f:
        f.write("Package: tree\n")
    shutil.rmtree(root / "usr/share/doc/old")  # a removed package's tree
    (root / "usr/bin/tool").chmod(0o700)  # metadata only
    os.chown(root / "etc/ssh/sshd_config", 0, 4)
    os.utime(root / "etc/ssh/sshd_config", (EPOCH - 50, EPOCH - 50))
    os.removexattr(root / "usr/bin/ping", "security.capability")
    os.setxattr(root / "usr/bin/ping", "user.test", b"\x00\xffbinary")
    os.unlink(root / "usr/bin/perl5.36")  # a hard-link group shrinks ...
    os.link(root / "usr/bin/perl5", root / "usr/bin/perl5.38")  # ... and grows
    shutil.rmtree(root / "var/lib/was-a-dir")
    (root / "var/lib/was-a-dir").write_text("now a file\n")
    (root / "var/lib/was-a-file").unlink()
    (root / "var/lib/was-a-file").mkdir()
    os.unlink(root / "usr/bin/alias")
    os.symlink("tree", root / "usr/bin/alias")  # a symlink retargeted
    os.mknod(root / "dev/zero", 0o20666, os.makedev(1, 5))


def _mkfs(root: Path, raw: Path) -> None:
    with open(raw, "wb") as f:
        f.truncate(SIZE)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", "0f8e0f3c-6a7c-4a56-9d77-3f7f3c1c7a10",
                    "-E", "hash_seed=0f8e0f3c-6a7c-4a56-9d77-3f7f3c1c7a10", "-d", str(root), str(raw)],
                   check=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": str(EPOCH)})


STAT = re.compile(r"Inode: (\d+)\s+Type: (.+?)\s+Mode:\s+(\d+).*?User:\s+(\d+)\s+Group:\s+(\d+).*?"
                  r"Links: (\d+).*? mtime: 0x([0-9a-f]+)", re.S)


def _view(raw: Path, paths: list[str], scratch: Path) -> dict[str, Any]:
    """What the file system holds at `paths`, read back by debugfs itself: type, mode, owner,
    mtime, link count, the group of paths sharing an inode, xattrs, and content (rdump)."""
    script = scratch / "view.debugfs"
    quoted = ['"' + p.replace('"', '""') + '"' for p in paths]
    script.write_text("".join(f"stat {q}\nea_list {q}\n" for q in quoted))
    out = subprocess.run(["debugfs", "-f", str(script), str(raw)], capture_output=True, text=True,
                         check=True).stdout
    blocks = out.split("debugfs: stat ")[1:]
    assert len(blocks) == len(paths)
    view: dict[str, Any] = {}
    by_inode: dict[str, list[str]] = {}
    for p, block in zip(paths, blocks, strict=True):
        m = STAT.search(block)
        assert m, block
        ino, kind, mode, uid, gid, links, mtime = m.groups()
        by_inode.setdefault(ino, []).append(p)
        xattrs = sorted(set(re.findall(r"^  (\S+ \(\d+\).*)$", block, re.M)))  # stat and ea_list show them
        dev = re.search(r"Device major/minor number: (\S+)", block)
        view[p] = {"type": kind, "mode": mode, "uid": uid, "gid": gid, "links": links,
                   "mtime": int(mtime, 16), "dev": dev and dev.group(1), "xattrs": xattrs, "ino": ino}
    for p in paths:
        view[p]["group"] = sorted(by_inode[view[p].pop("ino")])
    dump = scratch / "dump"
    shutil.rmtree(dump, ignore_errors=True)
    dump.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {dump}", str(raw)], check=True, capture_output=True)
    for p in paths:
        f = dump / p.lstrip("/")
        if f.is_file() and not f.is_symlink():
            view[p]["content"] = f.read_bytes()
        elif f.is_symlink():
            view[p]["target"] = os.readlink(f)
    return view


def _inode(raw: Path, path: str) -> tuple[str, str]:
    out = subprocess.run(["debugfs", "-R", f'stat "{path}"', str(raw)], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(r"Inode: (\d+)", out)
    ext = out.split("EXTENTS:")[-1].strip()
    assert m
    return m.group(1), ext


@pytest.fixture
def trees(tmp_path: Path) -> dict[str, Path]:
    require_root()
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    _tree(old)
    subprocess.run(["cp", "-a", str(old), str(new)], check=True)
    _change(new)
    base = tmp_path / "base.raw"
    _mkfs(old, base)
    return {"old": old, "new": new, "base": base, "tmp": tmp_path}


def test_in_place_holds_what_mkfs_of_the_new_tree_holds(trees: dict[str, Path]) -> None:
    tmp = trees["tmp"]
    old_index, new_index = inplace.index(trees["old"]), inplace.index(trees["new"])
    assert new_index["/usr/bin/perl"].link == "/usr/bin/perl" == new_index["/usr/bin/perl5.38"].link
    got = tmp / "inplace.raw"
    shutil.copyfile(trees["base"], got)
    (tmp / "s1").mkdir()
    plan = inplace.apply(got, 0, old_index, new_index, trees["new"], tmp / "s1", EPOCH + 86400)
    assert plan.removed and plan.written and plan.retouched
    fsck = subprocess.run(["e2fsck", "-fn", str(got)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    fresh = tmp / "fresh.raw"
    _mkfs(trees["new"], fresh)
    paths = sorted(p for p in new_index if p != "/")
    (tmp / "v1").mkdir()
    (tmp / "v2").mkdir()
    want, have = _view(fresh, paths, tmp / "v1"), _view(got, paths, tmp / "v2")
    for p in paths:
        assert have[p] == want[p], p
    assert have["/usr/bin/perl5"]["links"] == "3"
    assert [x.split()[0] for x in have["/usr/bin/ping"]["xattrs"]] == ["user.test"]
    # nothing the new tree lacks is left behind
    ls = subprocess.run(["debugfs", "-R", "ls -p /usr/share/doc", str(got)], capture_output=True,
                        text=True, check=True).stdout
    assert "/old/" not in ls and "/tree/" in ls
    # a dropped file does not live on in the free space (as a full mkfs leaves none)
    assert b"REMOVED-PACKAGE-MARKER" in trees["base"].read_bytes()
    assert b"REMOVED-PACKAGE-MARKER" not in got.read_bytes() and plan.zeroed_bytes > 0
    # unchanged files keep their inode and their blocks
    for p in ("/usr/bin/keep", "/var/lib/dpkg"):
        assert _inode(got, p) == _inode(trees["base"], p), p


def test_in_place_is_a_function_of_base_and_tree(trees: dict[str, Path]) -> None:
    tmp = trees["tmp"]
    old_index, new_index = inplace.index(trees["old"]), inplace.index(trees["new"])
    outs = []
    for n in (1, 2):
        raw = tmp / f"r{n}.raw"
        shutil.copyfile(trees["base"], raw)
        (tmp / f"s{n}").mkdir()
        inplace.apply(raw, 0, old_index, new_index, trees["new"], tmp / f"s{n}", EPOCH + 86400)
        outs.append(raw.read_bytes())
    assert outs[0] == outs[1]
    # and the index travels: saved with one build, loaded by the next
    inplace.save_index(new_index, tmp / "files.zst")
    assert inplace.load_index(tmp / "files.zst") == new_index
    (tmp / "bad.zst").write_bytes(b"not an index")
    with pytest.raises(BuildError, match="not a file index"):
        inplace.load_index(tmp / "bad.zst")


def test_what_debugfs_cannot_name_is_refused_before_anything_is_written(trees: dict[str, Path]) -> None:
    tmp = trees["tmp"]
    (trees["new"] / "etc/new\nline").write_text("x\n")
    raw = tmp / "r.raw"
    shutil.copyfile(trees["base"], raw)
    before = raw.read_bytes()
    (tmp / "s").mkdir()
    with pytest.raises(inplace.Unsupported, match="cannot quote"):
        inplace.apply(raw, 0, inplace.index(trees["old"]), inplace.index(trees["new"]), trees["new"],
                      tmp / "s", EPOCH)
    assert raw.read_bytes() == before


# --- the base a build starts from (`build --base`) ----------------------------------------------

def _fake_build(tmp: Path, name: str = "debian-12-base") -> tuple[Path, dict[str, Any]]:
    """A finished build directory as `build` leaves one: manifest, image, file index."""
    d = tmp / "builds" / name / "20261206.000000-abcd"
    d.mkdir(parents=True)
    image = b"not really an image"
    (d / "image.qcow2").write_bytes(image)
    root = tmp / "r"
    root.mkdir()
    (root / "etc").mkdir()
    inplace.save_index(inplace.index(root), d / inplace.INDEX_FILE)
    index_sha = hashlib.sha256((d / inplace.INDEX_FILE).read_bytes()).hexdigest()
    manifest = {"name": name, "version": d.name,
                "image": {"file": "image.qcow2", "sha256": hashlib.sha256(image).hexdigest()},
                "disk": {"reproducible": {"seed": name, "epoch": EPOCH}, "files_sha256": index_sha},
                "recipe": {"merged": {"disk": {k: v for k, v in DISK.items() if k != "format"}}}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d, manifest


DISK = {"size": 4 << 30, "firmware": "hybrid", "partition_table": None, "format": "qcow2"}


def test_a_base_is_checked_before_the_build_starts(tmp_path: Path) -> None:
    d, manifest = _fake_build(tmp_path)
    base = inplace.load_base(d, "debian-12-base", DISK)
    assert base.version == d.name and "/etc" in base.files
    with pytest.raises(UserError, match=r"a build of 'debian-12-base', not of 'ubuntu-24\.04-base'"):
        inplace.load_base(d, "ubuntu-24.04-base", DISK)
    with pytest.raises(UserError, match=r"disk\.size was 4294967296, the recipe now says 8589934592"):
        inplace.load_base(d, "debian-12-base", {**DISK, "size": 8 << 30})
    with pytest.raises(UserError, match=r"no readable manifest\.json"):
        inplace.load_base(tmp_path / "nowhere", "debian-12-base", DISK)
    (d / "image.qcow2").write_bytes(b"not really an imagE")
    with pytest.raises(UserError, match=r"image\.qcow2 is missing or not what its manifest says"):
        inplace.load_base(d, "debian-12-base", DISK)
    manifest["disk"]["reproducible"]["seed"] = None  # a build from before seeded disks
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="not seeded from the recipe or has no file index"):
        inplace.load_base(d, "debian-12-base", DISK)


def test_a_bad_base_on_the_command_line_is_exit_2_and_leaves_nothing(tmp_path: Path) -> None:
    d, _ = _fake_build(tmp_path / "other")
    work = tmp_path / "work"
    for args, want in (([str(d.parent.parent.parent / "nowhere")], "no readable manifest.json"),
                       ([str(d), "--all"], "not with --all")):
        r = subprocess.run([sys.executable, "-m", "imagefactory.cli", "--recipes", str(RECIPES), "--workdir",
                            str(work), "build", "debian-12-base", "--skip-tests", "--base", *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert want in r.stderr and "--base" in r.stderr and "Traceback" not in r.stderr
        assert not list(work.glob("builds/*/*")), "a build directory was left behind"


def test_a_published_image_is_a_base_through_the_catalogue(tmp_path: Path) -> None:
    """Publish carries the file index (role file-index) and the disk facts in the signed manifest;
    `build --base NAME@CHANNEL` (build.published_base) pulls image and index verified and checks
    them as it checks a build directory; the nightly runner falls back to a full mkfs, saying why,
    where the published image cannot be a base."""
    from imagefactory.build import published_base
    from imagefactory.catalogue import signing
    from imagefactory.catalogue.manifest import blob_key
    from imagefactory.catalogue.publish import publish
    from imagefactory.catalogue.stores import LocalDirStore
    from imagefactory.nightly.runner import Publishing, _base
    from imagefactory.recipes import RecipeBook
    from tests.publishing import anchor, fake_build

    private, _ = signing.generate(tmp_path / "keys", "k")
    key = signing.load_private_key(str(private))
    pub = key.public_key()
    loaded = RecipeBook(RECIPES).load("debian-12-base")
    store = LocalDirStore("cat", tmp_path / "catalogue")
    store.prepare()
    # one published before file indexes (as every image of earlier versions)
    old = fake_build(tmp_path / "w", version="20261201.000000-0000")
    publish(old, store, key, pub)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="published without a file index"):
        published_base(loaded, store, "debian-12-base:20261201.000000-0000", anchor(pub), cache)
    p = Publishing(store, lambda: (key, pub), signing=None)
    assert _base(loaded, "debian-12-base:20261201.000000-0000", p, (key, pub), tmp_path / "w") is None
    # one with its index and disk facts, as a build of this version leaves them
    d = fake_build(tmp_path / "w", version="20261202.000000-0000")
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("x\n")
    inplace.save_index(inplace.index(root), d / inplace.INDEX_FILE)
    m = json.loads((d / "manifest.json").read_text())
    m["disk"] = {"reproducible": {"seed": "debian-12-base", "epoch": EPOCH},
                 "files_sha256": hashlib.sha256((d / inplace.INDEX_FILE).read_bytes()).hexdigest()}
    m["recipe"]["merged"] = {"disk": loaded.recipe.disk.model_dump(mode="json")}
    (d / "manifest.json").write_text(json.dumps(m))
    publish(d, store, key, pub)
    base = published_base(loaded, store, "debian-12-base@candidate", anchor(pub), cache)
    assert base.version == "20261202.000000-0000" and base.files == inplace.index(root)
    assert hashlib.sha256(base.image.read_bytes()).hexdigest() == m["image"]["sha256"]
    got = _base(loaded, "debian-12-base:20261202.000000-0000", p, (key, pub), tmp_path / "w")
    assert got is not None and got.files == base.files
    no_base = Publishing(store, lambda: (key, pub), base_on_published=False)
    assert _base(loaded, "debian-12-base:20261202.000000-0000", no_base, (key, pub), tmp_path / "w") is None
    # the recipe's disk changed since: refused as a base, the nightly builds from scratch
    disk = loaded.recipe.disk.model_copy(update={"size": 8 << 30})
    bigger = dataclasses.replace(loaded, recipe=loaded.recipe.model_copy(update={"disk": disk}))
    with pytest.raises(UserError, match=r"disk\.size was 4294967296, the recipe now says 8589934592"):
        published_base(bigger, store, "debian-12-base@candidate", anchor(pub), cache)
    # a file index changed in the store is not taken (the signed manifest names its sha256)
    blob = tmp_path / "catalogue" / blob_key(m["disk"]["files_sha256"])
    blob.write_bytes(b"x" + blob.read_bytes()[1:])
    shutil.rmtree(cache)
    with pytest.raises(BuildError, match="file index does not match its signed manifest"):
        published_base(loaded, store, "debian-12-base@candidate", anchor(pub), cache)
