"""Where checks read from: an image root on disk (offline) or a booted host (testinfra).

Both sides offer the same small interface (`read`, `glob`, `stat`, `readlink`, `walk`), so a
file-level check is written once and runs the same way before and after boot. Offline, every
path is resolved *inside* the root - symlinks included, absolute ones too (`/var/run -> /run`
points at the image's /run, never the build host's) - so nothing can read or write outside it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import stat as st
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from ..errors import BuildError
from ..fsutil import in_root, resolve_in_root

# Characters allowed in catalogue path patterns: safe to expand in a host shell unquoted.
SAFE_PATTERN = re.compile(r"^/[A-Za-z0-9_.*?@+,:=%\[\]/-]*$")


class Pending(Exception):
    """A host whose facts arrive in batches does not have this one yet: the check is evaluated
    again once the batch has been fetched (see `imagefactory.testing.facts`)."""


@dataclass(frozen=True)
class Stat:
    path: str  # path inside the image, e.g. /etc/shadow
    mode: int  # permission bits including setuid/setgid/sticky
    uid: int
    gid: int
    user: str  # name, or the number as text when unknown
    group: str
    kind: str  # "file" | "dir" | "link" | "other"


# --- paths inside a root ------------------------------------------------------------------


def _parts(path: str) -> list[str]:
    return [p for p in PurePosixPath("/" + path.lstrip("/")).parts[1:] if p not in ("", ".")]


def inroot(root: Path, path: str, *, follow: bool = True) -> Path:
    """`path` (an absolute path inside the image) as a host path under `root`: fsutil's in-root
    resolution (absolute link targets restart at `root`, `..` never climbs above it). With
    `follow=False` the last component is not followed (for lstat, unlink and symlink creation)."""
    resolved = resolve_in_root(root, path) if follow else in_root(root, path)
    return root / resolved.relative_to(os.path.realpath(root))


def _glob_part(name: str, pattern: str) -> bool:
    # Shell semantics: a wildcard does not match a leading dot unless the pattern has one.
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _ids(text: str | None) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in (text or "").splitlines():
        f = line.split(":")
        if len(f) >= 3 and f[2].isdigit():
            out.setdefault(int(f[2]), f[0])
    return out


def passwd_entries(text: str | None) -> list[list[str]]:
    """Lines of an /etc/passwd-like file split on ':' (comments and blanks skipped)."""
    return [ln.split(":") for ln in (text or "").splitlines() if ln.strip() and not ln.startswith("#")]


class Source(Protocol):
    """Read-only view of an image: offline (`RootSource`) or a booted host (`HostSource`)."""

    where: str  # "offline" | "host"

    def read(self, path: str) -> str | None: ...
    def glob(self, pattern: str) -> list[str]: ...
    def stat(self, path: str) -> Stat | None: ...
    def readlink(self, path: str) -> str | None: ...
    def walk(self, paths: Iterable[str], recursive: bool, name: str | None) -> list[Stat]: ...


class RootSource:
    """An image root directory on the build host."""

    where = "offline"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._users: dict[int, str] | None = None
        self._groups: dict[int, str] | None = None

    def path(self, path: str, follow: bool = True) -> Path:
        return inroot(self.root, path, follow=follow)

    def read(self, path: str) -> str | None:
        p = self.path(path)
        try:
            return p.read_text(errors="replace") if p.is_file() else None
        except OSError:
            return None

    def glob(self, pattern: str) -> list[str]:
        found = [""]
        for part in _parts(pattern):
            nxt: list[str] = []
            for base in found:
                if not has_magic(part):
                    cand = f"{base}/{part}"
                    p = self.path(cand, follow=False)
                    if p.exists() or p.is_symlink():
                        nxt.append(cand)
                    continue
                d = self.path(base or "/")
                if d.is_dir():
                    nxt += [f"{base}/{n}" for n in sorted(os.listdir(d)) if _glob_part(n, part)]
            found = nxt
        return sorted(f for f in found if f)

    def _names(self) -> tuple[dict[int, str], dict[int, str]]:
        if self._users is None or self._groups is None:
            self._users = _ids(self.read("/etc/passwd"))
            self._groups = _ids(self.read("/etc/group"))
        return self._users, self._groups

    def _stat(self, path: str, s: os.stat_result) -> Stat:
        users, groups = self._names()
        kind = ("link" if st.S_ISLNK(s.st_mode) else "dir" if st.S_ISDIR(s.st_mode)
                else "file" if st.S_ISREG(s.st_mode) else "other")
        return Stat(path, st.S_IMODE(s.st_mode), s.st_uid, s.st_gid, users.get(s.st_uid, str(s.st_uid)),
                    groups.get(s.st_gid, str(s.st_gid)), kind)

    def stat(self, path: str) -> Stat | None:
        """lstat of `path` inside the root; None when it does not exist."""
        p = self.path(path, follow=False)
        try:
            return self._stat(path, p.lstat())
        except FileNotFoundError:
            return None

    def readlink(self, path: str) -> str | None:
        p = self.path(path, follow=False)
        return os.readlink(p) if p.is_symlink() else None

    def walk(self, paths: Iterable[str], recursive: bool, name: str | None) -> list[Stat]:
        out: list[Stat] = []
        seen: set[Path] = set()
        for top in paths:
            s = self.stat(top)
            if s is None:
                continue
            if recursive:  # a root that is another's link (merged /usr): walked once (HostSource.walk)
                real = self.path(top).resolve()
                if real in seen:
                    continue
                seen.add(real)
            if s.kind == "link":  # a top-level link (e.g. /lib -> usr/lib on merged /usr): follow it
                real = self.path(top)
                if not real.exists():
                    continue
                s = self._stat(top, real.stat())
            if name is None or _glob_part(PurePosixPath(top).name, name):
                out.append(s)
            if not (recursive and s.kind == "dir"):
                continue
            base = self.path(top)
            for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
                rel = "/" + str(Path(dirpath).relative_to(base)) if dirpath != str(base) else ""
                for n in sorted(dirnames + filenames):
                    if name is not None and not _glob_part(n, name):
                        continue
                    full = Path(dirpath, n)
                    out.append(self._stat(f"{top.rstrip('/')}{rel}/{n}", full.lstat()))
        return out

    def passwd_ids(self) -> tuple[dict[str, int], dict[str, int]]:
        """name -> uid and name -> gid from the image's own account files (never the host's)."""
        users, groups = self._names()
        uids = {"root": 0, **{v: k for k, v in users.items()}}
        return uids, {"root": 0, **{v: k for k, v in groups.items()}}


class HostSource:
    """A booted machine through a testinfra-like `host` (file, run, package, sysctl).

    The host may answer from facts gathered in batches (`imagefactory.testing.facts`): then it
    also offers `read_file(path)` and `glob_paths(pattern)` (answered without a process in the
    guest), and raises `Pending` for a fact it has not fetched yet: reads and globs then return
    nothing for now (so a check reading many files asks for all of them in one round), everything
    else raises."""

    where = "host"

    def __init__(self, host: Any) -> None:
        self.host = host
        # Every command is an SSH round trip (slow under TCG) and many controls read the same
        # files (sshd_config, login.defs, common-*): checks only read, so cache per source.
        self._reads: dict[str, str | None] = {}
        self._globs: dict[str, list[str]] = {}

    def run(self, cmd: str) -> tuple[int, str]:
        r = self.host.run(cmd)
        return int(r.rc), str(r.stdout)

    def _read(self, path: str) -> str | None:
        if (read_file := getattr(self.host, "read_file", None)) is not None:
            text: str | None = read_file(path)
            return text
        # One round trip instead of testinfra's exists + cat; a missing or unreadable file is
        # None and the caller says so.
        r = self.host.run(f"cat -- {shlex.quote(path)}")
        return str(r.stdout) if int(r.rc) == 0 else None

    def read(self, path: str) -> str | None:
        if path not in self._reads:
            try:
                self._reads[path] = self._read(path)
            except Pending:
                # A host that gathers facts in batches has recorded the read; the check goes on
                # (asking for the other files it reads in the same batch) and is evaluated again
                # once they have been fetched. Nothing is cached.
                return None
        return self._reads[path]

    def _glob(self, pattern: str) -> list[str]:
        if (glob_paths := getattr(self.host, "glob_paths", None)) is not None:
            found: list[str] = glob_paths(pattern)
            return sorted(found)
        _rc, out = self.run(f"for f in {pattern}; do if [ -e \"$f\" ] || [ -L \"$f\" ]; then "
                           f"printf '%s\\n' \"$f\"; fi; done")
        return sorted(line for line in out.splitlines() if line)

    def glob(self, pattern: str) -> list[str]:
        if not SAFE_PATTERN.match(pattern):
            raise BuildError(f"unsafe path pattern for a host check: {pattern!r}")
        if pattern not in self._globs:
            try:
                self._globs[pattern] = self._glob(pattern)
            except Pending:  # as in read: recorded, asked again next round, not cached
                return []
        return list(self._globs[pattern])

    def _parse(self, out: str) -> list[Stat]:
        # Owner and group names from the image's own account files, as find's %u/%g would print
        # them (files only; an unknown id stays a number) - without find looking up every file.
        users, groups = _ids(self.read("/etc/passwd")), _ids(self.read("/etc/group"))
        kinds = {"f": "file", "d": "dir", "l": "link"}
        res = []
        for line in out.splitlines():
            f = line.split("\t", 4)
            if len(f) == 5:
                uid, gid = int(f[1]), int(f[2])
                res.append(Stat(f[4], int(f[0], 8), uid, gid, users.get(uid, f[1]), groups.get(gid, f[2]),
                                kinds.get(f[3], "other")))
        return res

    def stat(self, path: str) -> Stat | None:
        found = self.walk([path], False, None)
        return found[0] if found else None

    def readlink(self, path: str) -> str | None:
        rc, out = self.run(f"readlink {shlex.quote(path)}")
        return out.strip() if rc == 0 else None

    def walk(self, paths: Iterable[str], recursive: bool, name: str | None) -> list[Stat]:
        roots = list(paths)
        if not roots:
            return []
        quoted = " ".join(shlex.quote(p) for p in roots)
        depth = "" if recursive else " -maxdepth 0"
        filt = f" -name {shlex.quote(name)}" if name else ""
        find = "find -H {}" + f"{depth}{filt} -printf '%m\\t%U\\t%G\\t%y\\t%p\\n' 2>/dev/null"
        if recursive and len(roots) > 1:
            # Merged /usr: /lib and /lib64 are links to usr/lib and usr/lib64, which find -H
            # follows, so /lib /usr/lib walked /usr/lib twice and listed every file in it twice
            # (20-25 s a walk in a TCG guest). A root resolving to one already listed is skipped
            # (the first name is kept), as RootSource.walk skips it offline.
            cmd = (f"set --; seen='|'; for p in {quoted}; do r=$(readlink -f -- \"$p\") || continue; "
                   'case "$seen" in *"|$r|"*) continue;; esac; seen="$seen$r|"; set -- "$@" "$p"; done; '
                   '[ $# -eq 0 ] || ' + find.replace("{}", '"$@"', 1))
        else:
            cmd = find.replace("{}", quoted, 1)
        _rc, out = self.run(cmd)
        return self._parse(out)
