"""Small filesystem helpers: atomic writes, digests, exclusive locks."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import BuildError


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write `path` so readers see the old or the new content, never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def file_identity(path: Path) -> dict[str, int]:
    """What says a file is still the one that was hashed, the test git's index and make use:
    device, inode, size and mtime (ns). A write through the file system moves mtime, a copy
    changes the inode; a mismatch only means hashing again."""
    st = path.stat()
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def digests(path: Path, chunk: int = 4 * 1024 * 1024) -> tuple[str, str]:
    """(sha256, sha512) of a file in one read (Harvester wants SHA-512, everyone else SHA-256)."""
    h256, h512 = hashlib.sha256(), hashlib.sha512()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h256.update(block)
            h512.update(block)
    return h256.hexdigest(), h512.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an flock on `path`; without `wait`, fail at once if someone else holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise BuildError(f"{what} is already running (pid {holder})",
                             hint=f"wait for it, or remove {path} if that process is gone") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def resolve_in_root(root: Path, path: str, *, max_links: int = 40) -> Path:
    """`path` (absolute, as seen inside the image) resolved against `root` the way the image's
    own kernel would: symlinks are followed component by component, absolute link targets
    restart at `root` and `..` never climbs above it. The host's filesystem is never reached,
    whatever links the image holds (Debian ships `/var/run -> /run`, alternatives point at
    `/usr/lib/...`). The result need not exist."""
    base = os.path.realpath(root)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(base, *resolved, part)
        if os.path.islink(candidate):
            links += 1
            if links > max_links:
                raise BuildError(f"{path}: too many levels of symbolic links inside {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return Path(base, *resolved)


def in_root(root: Path, rel: str) -> Path:
    """`rel` inside the image root with its directories resolved as the image sees its own links
    (`resolve_in_root`); the last component is not followed, so unlinking a link removes the
    link and `write_in_root` replaces it."""
    rel = rel.strip("/")
    base = os.path.realpath(root)
    parent = resolve_in_root(root, os.path.dirname(rel) or "/")
    return Path(base, parent.relative_to(base), os.path.basename(rel)) if rel else Path(base)


def mkdir_in_root(root: Path, rel: str, mode: int = 0o755) -> Path:
    """The directory `rel` inside the image root (links resolved in the root), created with its
    missing parents."""
    d = resolve_in_root(root, rel)
    d.mkdir(mode=mode, parents=True, exist_ok=True)
    return d


def write_in_root(root: Path, rel: str, data: str | bytes, mode: int = 0o644) -> Path:
    """Create or replace the file `rel` inside the image root, with `mode`. Its directories are
    resolved in the root and created as needed; a link in its place is replaced, never followed
    (a base image's `/etc/x -> /root/.ssh/authorized_keys` stays inside the image). Owner-only
    until written: a secret is never readable in between."""
    p = in_root(root, rel)
    mkdir_in_root(root, os.path.dirname(rel.strip("/")) or "/")
    if p.is_symlink():
        p.unlink()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode & 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode & 0o600)  # an existing file keeps its mode through O_CREAT
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fchmod(f.fileno(), mode)
    return p


def copy_into_root(src: Path, root: Path, rel: str, mode: int = 0o644) -> Path:
    """Copy the host file `src` (a verified download) to `rel` inside the image root, as
    `write_in_root` does, streaming."""
    p = in_root(root, rel)
    mkdir_in_root(root, os.path.dirname(rel.strip("/")) or "/")
    if p.is_symlink():
        p.unlink()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode & 0o600)
    with os.fdopen(fd, "wb") as f, open(src, "rb") as s:
        os.fchmod(f.fileno(), mode & 0o600)
        shutil.copyfileobj(s, f, 1024 * 1024)
        f.flush()
        os.fchmod(f.fileno(), mode)
    return p


def read_in_root(root: Path, rel: str) -> str | None:
    """The text of `rel` inside the image root, links resolved in the root; None when it is not
    a regular file (a device or fifo planted in a base image is never opened)."""
    p = resolve_in_root(root, rel)
    return p.read_text(errors="replace") if p.is_file() else None
