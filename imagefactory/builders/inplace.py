"""A nightly's root file system written in place over its predecessor's, so deltas stay small.

`mkfs.ext4 -d` places files in the order it walks the tree: one new package renumbers and moves
every file after it, and the inode tables, directories and extents change throughout (a 90 KB
package changed 21 % of a disk's compressed chunks, `benchmarks/mkfs_delta.py`). Starting from the
previous build's file system instead, and changing only what the two trees' file indexes say
changed, leaves every unchanged file with its inode and its blocks: the disk differs from its
predecessor by about the new content.

The file system is edited with `debugfs -w` (e2fsprogs' own library, as `mkfs -d` uses it): no
mount, no kernel, no journal traffic, and the result is a function of the base and the tree.
Every inode a build touches gets the build's epoch as ctime and atime; untouched ones keep the
base's. A tree debugfs cannot express (a name with a newline, a socket)
is refused with `Unsupported`, and the caller builds the file system from scratch instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from ..artifacts import sha256_file
from ..errors import BuildError, UserError
from ..run import run

log = logging.getLogger(__name__)

INDEX_VERSION = 1
INDEX_FILE = "files.zst"  # beside each build's manifest: its root's index, the next build's base
KINDS = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFCHR: "c", stat.S_IFBLK: "b",
         stat.S_IFIFO: "p"}


class Unsupported(Exception):
    """The tree holds something debugfs cannot write by name: build from scratch."""


@dataclass(frozen=True)
class Entry:
    """What `mkfs -d` carries of one path: the file type, permission bits, owner, mtime (whole
    seconds, as e2fsprogs 1.47 stores them), content (sha256; a symlink's target; a device's
    numbers), extended attributes and its hard-link group (the group's first path, sorted)."""

    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int
    content: str
    xattrs: tuple[tuple[str, str], ...] = ()
    link: str = ""

    def to_list(self) -> list[object]:
        return [self.kind, self.mode, self.uid, self.gid, self.mtime, self.content,
                [list(x) for x in self.xattrs], self.link]

    @classmethod
    def from_list(cls, v: list[object]) -> Entry:
        kind, mode, uid, gid, mtime, content, xattrs, link = v
        return cls(str(kind), int(mode), int(uid), int(gid), int(mtime),  # type: ignore[call-overload]
                   str(content), tuple((str(n), str(x)) for n, x in xattrs), str(link))  # type: ignore[attr-defined]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _xattrs(path: str) -> tuple[tuple[str, str], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False).hex()) for n in names))


def index(root: Path) -> dict[str, Entry]:
    """Every path under `root` ("/" for the root itself), never following a symlink."""
    out: dict[str, Entry] = {}
    inodes: dict[tuple[int, int], list[str]] = defaultdict(list)
    top = os.fspath(root)
    stack = [("/", top)]
    while stack:
        rel, path = stack.pop()
        st = os.lstat(path)
        kind = KINDS.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            raise Unsupported(f"{rel}: a socket (mkfs -d copies it; debugfs cannot make one)")
        content = ""
        if kind == "f":
            content = _sha256(path)
            if st.st_nlink > 1:
                inodes[(st.st_dev, st.st_ino)].append(rel)
        elif kind == "l":
            content = os.readlink(path)
        elif kind in ("c", "b"):
            content = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
        out[rel] = Entry(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime), content,
                         _xattrs(path))
        if kind == "d":
            with os.scandir(path) as it:
                for d in it:
                    stack.append((rel.rstrip("/") + "/" + d.name, d.path))
    for paths in inodes.values():
        if len(paths) > 1:
            first = min(paths)
            for p in paths:
                e = out[p]
                out[p] = Entry(e.kind, e.mode, e.uid, e.gid, e.mtime, e.content, e.xattrs, first)
    return out


def save_index(entries: dict[str, Entry], path: Path) -> None:
    doc = {"version": INDEX_VERSION, "entries": {p: e.to_list() for p, e in sorted(entries.items())}}
    data = zstandard.ZstdCompressor(level=10).compress(json.dumps(doc, separators=(",", ":")).encode())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def load_index(path: Path) -> dict[str, Entry]:
    try:
        doc = json.loads(zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()))
        if doc.get("version") != INDEX_VERSION:
            raise ValueError(f"version {doc.get('version')!r}, not {INDEX_VERSION}")
        return {p: Entry.from_list(v) for p, v in doc["entries"].items()}
    except (OSError, ValueError, TypeError, KeyError, zstandard.ZstdError) as e:
        raise BuildError(f"{path}: not a file index this version reads ({e})",
                         hint="build without the base (a full mkfs)") from None


def _q(path: str) -> str:
    """A debugfs argument: in double quotes, a quote doubled, a backslash literal (systemd's
    `\\x2d` unit names); a newline cannot be written."""
    if "\n" in path:
        raise Unsupported(f"{path!r}: debugfs cannot quote this name")
    return '"' + path.replace('"', '""') + '"'


def _parent(path: str) -> str:
    return path.rpartition("/")[0] or "/"


@dataclass
class Plan:
    """The debugfs commands that turn the base's tree into the new one, and what they touch."""

    commands: list[str] = field(default_factory=list)
    removed: int = 0
    written: int = 0  # paths created (files, dirs, links, devices)
    written_bytes: int = 0
    retouched: int = 0  # metadata only
    gone: list[str] = field(default_factory=list)  # removed paths (those replaced too)
    zeroed_bytes: int = 0


def plan(old: dict[str, Entry], new: dict[str, Entry], root: Path, scratch: Path, epoch: int) -> Plan:
    """Commands for `debugfs -w -f`: removals deepest first, creations parents first, then the
    metadata of every path created or changed, then the link counts of changed hard-link groups.
    Binary xattr values are staged under `scratch` (debugfs reads them from a file)."""
    p = Plan()
    out = p.commands

    def replaced(path: str) -> bool:
        a, b = old[path], new[path]
        return (a.kind, a.content, a.link) != (b.kind, b.content, b.link) or \
            (a.kind in ("c", "b", "p") and a != b)

    gone = {path for path in old if path not in new or replaced(path)}
    # below a directory that goes, everything goes
    for path in sorted(gone):
        if old[path].kind == "d":
            gone.update(q for q in old if q.startswith(path.rstrip("/") + "/"))
    if "/" in gone:
        raise Unsupported("the root directory itself changed type")
    p.gone = sorted(gone)
    for path in sorted(gone, key=lambda s: (-s.count("/"), s)):
        out.append(f"{'rmdir' if old[path].kind == 'd' else 'rm'} {_q(path)}")
        p.removed += 1
    created = sorted((path for path in new if path not in old or path in gone),
                     key=lambda s: (s.count("/"), s))
    touched = set(created)
    groups: dict[str, int] = defaultdict(int)
    for path in new:
        if new[path].link:
            groups[new[path].link] += 1
    changed_groups: set[str] = set()
    for path in created:
        e = new[path]
        parent, name = _parent(path), path.rpartition("/")[2]
        if e.link and e.link != path:
            out.append(f"ln {_q(e.link)} {_q(path)}")
            changed_groups.add(e.link)
            continue
        if e.kind == "d":
            out.append(f"mkdir {_q(path)}")
        elif e.kind == "f":
            src = root / path.lstrip("/")
            out += [f"cd {_q(parent)}", f"write {_q(os.fspath(src))} {_q(name)}"]
            p.written_bytes += src.stat().st_size
            if e.link:
                changed_groups.add(path)
        elif e.kind == "l":
            out.append(f"symlink {_q(path)} {_q(e.content)}")
        elif e.kind == "p":
            out += [f"cd {_q(parent)}", f"mknod {_q(name)} p"]
        else:
            major, minor = e.content.split(",")
            out += [f"cd {_q(parent)}", f"mknod {_q(name)} {e.kind} {major} {minor}"]
        p.written += 1
    # hard-link groups that lost a member keep the rest: their count is set below too
    for path in gone:
        if old[path].link and old[path].link in groups and new.get(old[path].link) is not None:
            changed_groups.add(old[path].link)
    for path, e in new.items():
        if path in touched:
            continue
        a = old[path]
        if (a.mode, a.uid, a.gid, a.mtime, a.xattrs) != (e.mode, e.uid, e.gid, e.mtime, e.xattrs):
            touched.add(path)
            p.retouched += 1
    # a directory whose entries changed: its own times are the tree's (mtime) and the build's
    for path in [*gone, *created]:
        if _parent(path) in new and path != "/":
            touched.add(_parent(path))
    xattr_dir = scratch / "xattrs"
    for n, path in enumerate(sorted(touched)):
        e = new[path]
        if e.link and e.link != path:
            continue  # the group's first path carries the inode's metadata
        fmt = {"d": stat.S_IFDIR, "f": stat.S_IFREG, "l": stat.S_IFLNK, "c": stat.S_IFCHR,
               "b": stat.S_IFBLK, "p": stat.S_IFIFO}[e.kind]
        q = _q(path)
        out += [f"sif {q} mode 0{fmt | e.mode:o}", f"sif {q} uid {e.uid}", f"sif {q} gid {e.gid}",
                f"sif {q} mtime @{e.mtime}", f"sif {q} ctime @{epoch}", f"sif {q} atime @{epoch}",
                f"sif {q} crtime @{epoch}"]
        before = dict(old[path].xattrs) if path in old and path not in gone else {}
        after = dict(e.xattrs)
        for name in sorted(before.keys() - after.keys()):
            out.append(f"ea_rm {q} {_q(name)}")
        for name, value in sorted(after.items()):
            if before.get(name) != value:
                xattr_dir.mkdir(exist_ok=True)
                staged = xattr_dir / f"{n}-{len(out)}"
                staged.write_bytes(bytes.fromhex(value))
                out.append(f"ea_set -f {_q(os.fspath(staged))} {q} {_q(name)}")
    for first in sorted(changed_groups):
        if first in new:
            out.append(f"sif {_q(first)} links_count {groups[first]}")
    return p


def _freed(old: dict[str, Entry], p: Plan) -> list[str]:
    """The removed paths whose inode goes with them (every name of a hard-link group removed)."""
    gone = set(p.gone)
    members: dict[str, list[str]] = defaultdict(list)
    for path, e in old.items():
        if e.link:
            members[e.link].append(path)
    # not symlinks: a short one keeps its target in the inode, and `blocks` reads that as numbers
    return sorted(path for path in gone if old[path].kind in ("f", "d")
                  and (not old[path].link or (path == old[path].link and set(members[path]) <= gone)))


def _block_size(raw: Path, offset: int) -> int:
    with open(raw, "rb") as f:
        f.seek(offset + 1024 + 24)  # the superblock's s_log_block_size
        return 1024 << int.from_bytes(f.read(4), "little")


def _debugfs_numbers(raw: Path, offset: int, commands: list[bytes], scratch: Path) -> list[list[str]]:
    """Run read-only debugfs commands; each one's output lines."""
    script = scratch / "query.debugfs"
    script.write_bytes(b"".join(c + b"\n" for c in commands))
    r = run(["debugfs", "-f", str(script), f"{raw}?offset={offset}"], quiet=True)
    out: list[list[str]] = []
    for line in r.stdout.splitlines():
        if line.startswith("debugfs: "):
            out.append([])
        elif out:
            out[-1].append(line)
    return out


def _zero(raw: Path, offset: int, block: int, numbers: set[int]) -> int:
    if numbers and offset + (max(numbers) + 1) * block > raw.stat().st_size:
        raise BuildError(f"internal: debugfs named block {max(numbers)}, beyond the file system")
    zero = bytes(block)
    with open(raw, "r+b") as f:
        for n in sorted(numbers):
            f.seek(offset + n * block)
            f.write(zero)
    return len(numbers) * block


def _blocks_of(raw: Path, offset: int, paths: list[str], scratch: Path) -> set[int]:
    if not paths:
        return set()
    outs = _debugfs_numbers(raw, offset, [b"blocks " + os.fsencode(_q(p)) for p in paths], scratch)
    return {int(t) for lines in outs for line in lines for t in line.split() if t.isdigit()}


def apply(raw: Path, offset: int, old: dict[str, Entry], new: dict[str, Entry], root: Path,
          scratch: Path, epoch: int) -> Plan:
    """Edit the ext4 file system at `offset` in `raw` (the base's, same size) to hold `root`."""
    p = plan(old, new, root, scratch, epoch)
    # A file the new tree dropped must not live on in the image's free space (a full mkfs leaves
    # it zero): a dropped file's blocks are zeroed before debugfs frees them; a directory's after
    # (its children's removal reads it), those of them that no new file took.
    freed = _freed(old, p)
    block = _block_size(raw, offset)
    files = _blocks_of(raw, offset, [f for f in freed if old[f].kind != "d"], scratch)
    p.zeroed_bytes = _zero(raw, offset, block, files)
    dir_blocks = _blocks_of(raw, offset, [f for f in freed if old[f].kind == "d"], scratch)
    cmds = scratch / "inplace.debugfs"
    cmds.write_bytes(b"\n".join(os.fsencode(c) for c in p.commands) + b"\n")  # names need not be UTF-8
    r = run(["debugfs", "-w", "-f", str(cmds), f"{raw}?offset={offset}"], quiet=True,
            env={"E2FSPROGS_FAKE_TIME": str(epoch)})
    # debugfs reports a failed command on stderr and still exits 0; `write` reports the inode
    errors = [line for line in r.stderr.splitlines()
              if line and not line.startswith("debugfs ") and not line.startswith("Allocated inode")]
    if errors:
        raise BuildError(f"debugfs could not update the file system in place: {errors[0]}",
                         hint="build without the base (a full mkfs)")
    if dir_blocks:
        order = sorted(dir_blocks)
        outs = _debugfs_numbers(raw, offset, [f"testb {n}".encode() for n in order], scratch)
        free = {n for n, lines in zip(order, outs, strict=True) if any("not in use" in x for x in lines)}
        p.zeroed_bytes += _zero(raw, offset, block, free)
    log.info("root written in place over the base: %d paths removed, %d created (%.1f MB of files), "
             "%d with new metadata only", p.removed, p.written, p.written_bytes / 1e6, p.retouched)
    return p


@dataclass(frozen=True)
class Base:
    """A finished build of the same recipe whose disk the next build starts from."""

    directory: Path
    version: str
    image: Path
    image_sha256: str
    files: dict[str, Entry]


# What must match for the base's partitions and file system to be the new build's as well
SAME_DISK = ("size", "firmware", "partition_table")


def load_base(directory: Path, name: str, disk: dict[str, object]) -> Base:
    """The build in `directory` (`builds/<name>/<version>`), checked before the build starts:
    a finished build of recipe `name`, a seeded disk of the same size and layout as `disk` (the
    recipe's), its file index and its image those its manifest names."""
    key = f"--base {directory}"
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{key}: no readable manifest.json ({e.__class__.__name__})",
                        hint="name a finished build directory: WORKDIR/builds/<recipe>/<version>") from None
    got = manifest.get("disk") or {}
    image_doc = manifest.get("image") or {}
    was = ((manifest.get("recipe") or {}).get("merged") or {}).get("disk") or {}
    return checked_base(key, name, disk, manifest.get("name"), str(manifest.get("version")),
                        (got.get("reproducible") or {}).get("seed"), got.get("files_sha256"), was,
                        directory / INDEX_FILE, directory / str(image_doc.get("file")),
                        image_doc.get("sha256"))


def checked_base(key: str, name: str, disk: dict[str, object], base_name: object, version: str, seed: object,
                 files_sha256: object, was: dict[str, object], index_file: Path, image: Path,
                 image_sha256: object) -> Base:
    """A base (an earlier build's directory, or a published image and its file index pulled from
    the catalogue) checked against the recipe being built: errors name `key`."""
    if base_name != name:
        raise UserError(f"{key}: a build of {base_name!r}, not of {name!r}",
                        hint="a base must be an earlier build of the same recipe")
    if seed != name or not files_sha256:
        raise UserError(f"{key}: its disk is not seeded from the recipe or has no file index",
                        hint="build it with this version of imagefactory first (a full mkfs)")
    for k in SAME_DISK:
        if was.get(k) != disk.get(k):
            raise UserError(f"{key}: disk.{k} was {was.get(k)!r}, the recipe now says {disk.get(k)!r}",
                            hint="a changed disk layout needs a full mkfs: build without --base")
    for path, want in ((index_file, files_sha256), (image, image_sha256)):
        if not path.is_file() or sha256_file(path) != want:
            raise UserError(f"{key}: {path.name} is missing or not what its manifest says",
                            hint="the base was changed after it was built; build without --base")
    return Base(index_file.parent, version, image, str(image_sha256), load_index(index_file))
