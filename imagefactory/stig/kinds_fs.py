"""Action/check kinds about file permissions, file presence and local accounts."""

from __future__ import annotations

import os
import shlex
import shutil
import stat as st
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import ClassVar, Literal

from pydantic import Field

from ..errors import BuildError
from .kinds import CheckContext, CheckResult, FixContext, ImagePath, Kind, Mode, bad, err, ok, verdict
from .sources import HostSource, RootSource, Source, Stat, has_magic, passwd_entries


def _expand(src: Source, globs: tuple[str, ...]) -> list[str]:
    return [p for g in globs for p in (src.glob(g) if has_magic(g) else [g])]


class FileMode(Kind):
    """Permissions/ownership of the files matching `paths` (globs; `recursive` walks
    directories; `name` filters by file name, `exclude` drops names). No permission bit beyond
    `max_mode` may be set (setuid/setgid/sticky are not judged); `system_ok` accepts any
    account with id < 1000 besides `owner`/`group`. Symlinks are skipped. The fix removes the
    extra bits and chowns using the image's own passwd/group."""

    type: Literal["file_mode"]
    paths: tuple[ImagePath, ...]
    max_mode: Mode | None = None
    owner: str | None = None
    group: str | None = None
    system_ok: bool = False
    kind: Literal["any", "file", "dir"] = "any"
    recursive: bool = False
    name: str | None = None
    exclude: tuple[str, ...] = ()
    must_exist: bool = False
    create: bool = Field(False, description="fix: create a missing (non-glob) path as an empty file")

    def _entries(self, src: Source) -> list[Stat]:
        from fnmatch import fnmatchcase

        out = []
        for s in src.walk(_expand(src, self.paths), self.recursive, self.name):
            if s.kind == "link" or s.kind == "other" or (self.kind != "any" and s.kind != self.kind):
                continue
            if any(fnmatchcase(PurePosixPath(s.path).name, x) for x in self.exclude):
                continue
            out.append(s)
        return out

    def _problems(self, s: Stat) -> list[str]:
        out = []
        if self.max_mode is not None and s.mode & 0o777 & ~int(self.max_mode, 8):
            out.append(f"mode {s.mode:04o} > {self.max_mode}")
        if self.owner and s.user != self.owner and not (self.system_ok and s.uid < 1000):
            out.append(f"owner {s.user}")
        if self.group and s.group != self.group and not (self.system_ok and s.gid < 1000):
            out.append(f"group {s.group}")
        return out

    def apply(self, fx: FixContext) -> None:
        if self.create:
            for p in self.paths:
                if not has_magic(p) and fx.src.stat(p) is None:
                    fx.write(p, "", self.max_mode or "0600")
        uids, gids = fx.src.passwd_ids()
        for s in self._entries(fx.src):
            if not self._problems(s):
                continue
            # entries are never symlinks, except a top-level link the walk followed (/lib ->
            # usr/lib): resolve it inside the root - chmod/chown would follow it on the host.
            real = fx.path(s.path)
            if self.max_mode is not None:
                os.chmod(real, s.mode & ~(0o777 & ~int(self.max_mode, 8)))
            uid = gid = -1
            if self.owner and s.user != self.owner and not (self.system_ok and s.uid < 1000):
                if self.owner not in uids:
                    raise BuildError(f"{s.path}: user {self.owner!r} unknown in the image")
                uid = uids[self.owner]
            if self.group and s.group != self.group and not (self.system_ok and s.gid < 1000):
                if self.group not in gids:
                    raise BuildError(f"{s.path}: group {self.group!r} unknown in the image")
                gid = gids[self.group]
            if uid != -1 or gid != -1:
                os.lchown(real, uid, gid)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        entries = self._entries(src)
        if not entries:
            return verdict(not self.must_exist, f"nothing matches {', '.join(self.paths)}")
        wrong = [f"{s.path}: {', '.join(pr)}" for s in entries if (pr := self._problems(s))]
        if wrong:
            more = f" (+{len(wrong) - 20} more)" if len(wrong) > 20 else ""
            return bad("; ".join(wrong[:20]) + more)
        return ok(f"{len(entries)} path(s) under {', '.join(self.paths)} compliant")


class FileAbsent(Kind):
    """No file matches `paths` (globs), nor - with `name` - any file of that name below
    `under` (a recursive search that never leaves the root). The fix deletes them."""

    type: Literal["file_absent"]
    paths: tuple[ImagePath, ...] = ()
    name: str | None = None
    under: tuple[ImagePath, ...] = ("/",)
    prune: tuple[ImagePath, ...] = ("/proc", "/sys", "/dev", "/run", "/.snapshots")

    def _found(self, src: Source) -> list[str]:
        found = [p for p in _expand(src, self.paths) if src.stat(p) is not None]
        if self.name:
            if isinstance(src, RootSource):
                for top in self.under:
                    base = src.path(top)
                    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
                        rel = "/" + os.path.relpath(dirpath, src.root) if dirpath != str(src.root) else ""
                        dirnames[:] = [d for d in dirnames if f"{rel}/{d}" not in self.prune]
                        found += [f"{rel}/{f}" for f in dirnames + filenames if f == self.name]
            elif isinstance(src, HostSource):
                prune = " -o ".join(f"-path {p}" for p in self.prune)
                _, out = src.run(f"find {' '.join(self.under)} -xdev \\( {prune} \\) -prune -o "
                                 f"-name {shlex.quote(self.name)} -print 2>/dev/null")
                found += out.split()
        return sorted(set(found))

    def apply(self, fx: FixContext) -> None:
        for p in self._found(fx.src):
            real = fx.path(p, follow=False)
            if real.is_dir() and not real.is_symlink():
                shutil.rmtree(real)
            else:
                real.unlink()

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        found = self._found(src)
        named = [f"{self.name} under {', '.join(self.under)}"] if self.name else []
        what = ", ".join([*self.paths, *named])
        return verdict(not found, f"found: {', '.join(found)}" if found else f"none of {what}")


class FileExists(Kind):
    """Check only: at least one file matches `paths`."""

    fixable: ClassVar[bool] = False
    type: Literal["file_exists"]
    paths: tuple[ImagePath, ...]

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        found = [p for p in _expand(src, self.paths) if src.stat(p) is not None]
        return verdict(bool(found), ", ".join(found) if found else f"missing: {', '.join(self.paths)}")


class Symlink(Kind):
    """`path` is a symlink to `target` (e.g. /etc/localtime)."""

    type: Literal["symlink"]
    path: ImagePath
    target: str
    accept: tuple[str, ...] = ()

    def apply(self, fx: FixContext) -> None:
        p = fx.path(self.path, follow=False)
        if p.is_symlink() and os.readlink(p) == self.target:
            return
        if p.is_dir() and not p.is_symlink():
            raise BuildError(f"{self.path} is a directory, not replacing it with a symlink")
        if p.exists() or p.is_symlink():
            p.unlink()
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(self.target)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        got = src.readlink(self.path)
        return verdict(got in (self.target, *self.accept), f"{self.path} -> {got or '(not a symlink)'}")


class ReplaceSymlink(Kind):
    """Symlinks matching `paths` become regular copies of their targets (SUSE's pam-config
    links `common-*` to `common-*-pc` and rewrites them on package changes)."""

    type: Literal["replace_symlink"]
    paths: tuple[ImagePath, ...]

    def _links(self, src: Source) -> list[str]:
        return [p for p in _expand(src, self.paths) if (s := src.stat(p)) is not None and s.kind == "link"]

    def apply(self, fx: FixContext) -> None:
        for p in self._links(fx.src):
            target = fx.path(p)
            if not target.is_file():
                raise BuildError(f"{p} is a dangling symlink")
            text = target.read_bytes()
            mode = st.S_IMODE(target.stat().st_mode)
            link = fx.path(p, follow=False)
            link.unlink()
            link.write_bytes(text)
            os.chmod(link, mode)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        links = self._links(src)
        return verdict(not links, f"symlinks: {', '.join(links)}" if links
                       else f"no symlinks among {', '.join(self.paths)}")


class StickyWorldWritable(Kind):
    """Every world-writable directory below `under` has the sticky bit."""

    type: Literal["sticky_world_writable"]
    under: tuple[ImagePath, ...] = ("/",)
    prune: tuple[ImagePath, ...] = ("/proc", "/sys", "/dev", "/run")

    def _found(self, src: Source) -> list[str]:
        if isinstance(src, HostSource):
            prune = " -o ".join(f"-path {p}" for p in self.prune)
            _, out = src.run(f"find {' '.join(self.under)} -xdev \\( {prune} \\) -prune -o "
                             "-type d -perm -0002 ! -perm -1000 -print 2>/dev/null")
            return out.split()
        assert isinstance(src, RootSource)
        found = []
        for top in self.under:
            base = src.path(top)
            for dirpath, dirnames, _ in os.walk(base, followlinks=False):
                rel = "/" + os.path.relpath(dirpath, src.root) if dirpath != str(src.root) else ""
                dirnames[:] = [d for d in dirnames if f"{rel}/{d}" not in self.prune]
                for d in dirnames:
                    m = os.lstat(os.path.join(dirpath, d)).st_mode
                    if st.S_ISDIR(m) and m & 0o002 and not m & 0o1000:  # never a symlink: chmod follows
                        found.append(f"{rel}/{d}")
        return found

    def apply(self, fx: FixContext) -> None:
        for p in self._found(fx.src):
            real = fx.path(p, follow=False)
            if not real.is_symlink():
                os.chmod(real, st.S_IMODE(real.lstat().st_mode) | 0o1000)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        found = self._found(src)
        return verdict(not found, f"world-writable without sticky bit: {', '.join(found[:20])}" if found
                       else "all world-writable directories have the sticky bit")


# --- accounts --------------------------------------------------------------------------------


def _shadow(src: Source) -> list[list[str]] | None:
    text = src.read("/etc/shadow")
    return None if text is None else passwd_entries(text)


class AccountLocked(Kind):
    """The account's password hash starts with `!` or `*` (what `passwd -S` reports as L)."""

    type: Literal["account_locked"]
    user: str

    def apply(self, fx: FixContext) -> None:
        _edit_shadow(fx, lambda f: "!" + f[1] if f[0] == self.user and not f[1].startswith(("!", "*"))
                     else None, required=True)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        rows = _shadow(src)
        if rows is None:
            return err("/etc/shadow unreadable")
        row = next((r for r in rows if r[0] == self.user), None)
        if row is None or len(row) < 2:
            return bad(f"{self.user} not in /etc/shadow")
        locked = row[1].startswith(("!", "*"))
        return verdict(locked, f"{self.user} is {'locked' if locked else 'not locked'}")


def _edit_shadow(fx: FixContext, new_hash: Callable[[list[str]], str | None], required: bool) -> None:
    """Rewrite the password field of /etc/shadow entries for which `new_hash` returns a value."""
    text = fx.read("/etc/shadow")
    if text is None:
        if required:
            raise BuildError("/etc/shadow missing in the image")
        return
    lines = text.splitlines()
    for i, line in enumerate(lines):
        fields = line.split(":")
        if len(fields) > 1 and (value := new_hash(fields)) is not None:
            fields[1] = value
            lines[i] = ":".join(fields)
    fx.write("/etc/shadow", "\n".join(lines) + "\n")


class NoEmptyPasswords(Kind):
    """No /etc/shadow entry has an empty password field; the fix locks such accounts (`!`)."""

    type: Literal["no_empty_passwords"]

    def apply(self, fx: FixContext) -> None:
        _edit_shadow(fx, lambda f: "!" if f[0] and not f[1] else None, required=False)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        rows = _shadow(src)
        if rows is None:
            return err("/etc/shadow unreadable")
        empty = [r[0] for r in rows if len(r) > 1 and not r[1]]
        return verdict(not empty, f"empty password: {', '.join(empty)}" if empty else "no empty passwords")


class PasswordHashes(Kind):
    """Check only: every usable password hash starts with `prefix` ($6$ = SHA-512)."""

    fixable: ClassVar[bool] = False
    type: Literal["password_hashes"]
    prefix: str = "$6$"

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        rows = _shadow(src)
        if rows is None:
            return err("/etc/shadow unreadable")
        weak = [r[0] for r in rows if len(r) > 1 and r[1] and not r[1].startswith(("!", "*", self.prefix))]
        return verdict(not weak, f"not {self.prefix}: {', '.join(weak)}" if weak
                       else f"all usable hashes are {self.prefix}")


class UniqueIds(Kind):
    """Check only: no two entries of /etc/passwd (or /etc/group) share an id."""

    fixable: ClassVar[bool] = False
    type: Literal["unique_ids"]
    file: Literal["/etc/passwd", "/etc/group"] = "/etc/passwd"

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        text = src.read(self.file)
        if text is None:
            return err(f"{self.file} unreadable")
        seen: dict[str, str] = {}
        dup = []
        for r in passwd_entries(text):
            if len(r) > 2:
                if r[2] in seen:
                    dup.append(f"{r[0]} and {seen[r[2]]} share {r[2]}")
                seen.setdefault(r[2], r[0])
        return verdict(not dup, "; ".join(dup) if dup else f"{len(seen)} unique ids in {self.file}")


class GroupMembers(Kind):
    """Check only: members of `group` are a subset of `allowed` (comma-separated; a tailoring
    value usually, e.g. `{{ sudo_group_members }}`)."""

    fixable: ClassVar[bool] = False
    type: Literal["group_members"]
    group: str
    allowed: str = ""

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        text = src.read("/etc/group")
        if text is None:
            return err("/etc/group unreadable")
        row = next((r for r in passwd_entries(text) if r[0] == self.group), None)
        members = [m for m in (row[3].split(",") if row and len(row) > 3 else []) if m]
        allowed = {a.strip() for a in self.allowed.split(",") if a.strip()}
        extra = [m for m in members if m not in allowed]
        return verdict(not extra, f"{self.group}: members {', '.join(members) or '(none)'}"
                       + (f"; not authorised: {', '.join(extra)}" if extra else ""))
