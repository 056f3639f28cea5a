"""The structured fix actions and declarative checks of the STIG catalogue, one class per kind.

Every kind is a frozen pydantic model discriminated on `type`. A kind that can be *fixed*
implements `apply(fx)`: pure-Python edits of the image root through `FixContext` (nothing is
run, nothing is written outside the root, the build host's kernel is never touched). Every kind
implements `evaluate(src, ctx)` against a `Source` - the image root offline or a booted host
(testinfra) - and returns a `CheckResult`. Used as a check, an action means "this fix is in
effect"; check-only kinds (`regex_present`, `service_active`, `command`, ...) have no `apply`.
"""

from __future__ import annotations

import os
import re
import stat as st
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import BuildError
from . import parsers as P
from .sources import HostSource, RootSource, Source, has_magic

Mode = Annotated[str, Field(pattern=r"^[0-7]{3,4}$", description="octal mode as a string, e.g. '0640'")]
ImagePath = Annotated[str, Field(pattern=r"^/[A-Za-z0-9_.*?@+,:=%\[\]/-]*$")]
Status = Literal["pass", "fail", "error"]

MODPROBE_DROPIN = "/etc/modprobe.d/imagefactory-stig.conf"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/50-imagefactory-stig.conf"
SSHD_INCLUDE = "Include /etc/ssh/sshd_config.d/*.conf"
AUDIT_RULES = "/etc/audit/rules.d/stig.rules"
UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
FALSE_BINARIES = ("/bin/false", "/usr/bin/false", "/bin/true", "/usr/bin/true")
MODPROBE_GLOBS = ("/etc/modprobe.d/*.conf", "/run/modprobe.d/*.conf", "/usr/lib/modprobe.d/*.conf",
                  "/lib/modprobe.d/*.conf")


@dataclass(frozen=True)
class CheckResult:
    status: Status
    evidence: str


def ok(evidence: str) -> CheckResult:
    return CheckResult("pass", evidence)


def bad(evidence: str) -> CheckResult:
    return CheckResult("fail", evidence)


def err(evidence: str) -> CheckResult:
    return CheckResult("error", evidence)


def verdict(good: bool, evidence: str) -> CheckResult:
    return CheckResult("pass" if good else "fail", evidence)


@dataclass
class FixContext:
    """Mutable state of one `apply_fixes` run over an image root."""

    root: Path
    remove: list[str] = field(default_factory=list)
    install: list[str] = field(default_factory=list)
    kernel_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.src = RootSource(self.root)

    def path(self, path: str, follow: bool = True) -> Path:
        return self.src.path(path, follow=follow)

    def read(self, path: str) -> str | None:
        return self.src.read(path)

    def write(self, path: str, text: str, mode: str | None = None, *, force_mode: bool = False) -> None:
        """Write `text` (only if it differs: re-applying leaves files untouched). A new file gets
        `mode` (default 0644); an existing one keeps its mode and owner unless `force_mode`."""
        p = self.path(path)
        want = int(mode, 8) if mode else 0o644
        if p.is_file():
            if p.read_text(errors="replace") != text:
                p.write_text(text)
            if force_mode and mode and st.S_IMODE(p.stat().st_mode) != want:
                os.chmod(p, want)
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, want)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(p, want)


@dataclass
class CheckContext:
    """Per-evaluation cache: package lists, `sshd -T`, `auditctl -l`."""

    family: str = ""
    packages: frozenset[str] | None = None  # installed packages, when the caller knows them
    cache: dict[str, Any] = field(default_factory=dict)


class Kind(BaseModel):
    """Base of every action/check kind."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    fixable: ClassVar[bool] = True
    where: Literal["both", "offline", "host"] = Field(
        "both", description="as a check: evaluate offline, on the booted host, or both")

    def apply(self, fx: FixContext) -> None:
        raise BuildError(f"{self.kind_name()} is a check, it has no fix")

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        raise NotImplementedError

    def kind_name(self) -> str:
        return str(getattr(self, "type", type(self).__name__))


def _lines(src: Source, globs: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    files = [p for g in globs for p in (src.glob(g) if has_magic(g) else [g])]
    return [(p, t) for p in files if (t := src.read(p)) is not None]


def _active(line: str, comment: str = "#") -> bool:
    s = line.strip()
    return bool(s) and not s.startswith(comment)


# --- key/value files -------------------------------------------------------------------------


class FileLine(Kind):
    """`KEY<sep>value` in `path` (replace an active or commented line, else append). As a
    check, every active occurrence in `search` (default: `path`) must satisfy `compare`."""

    type: Literal["file_line"]
    path: ImagePath
    key: str
    value: str
    separator: Literal[" ", "=", " = ", ": ", "\t"] = " "
    comment: str = "#"
    mode: Mode = "0644"
    search: tuple[ImagePath, ...] = ()
    compare: Literal["eq", "le", "ge", "contains"] = "eq"
    accept: tuple[str, ...] = ()
    min_value: int | None = None

    def apply(self, fx: FixContext) -> None:
        text = fx.read(self.path) or ""
        fx.write(self.path, P.set_key(text, self.key, self.value, self.separator, self.comment), self.mode)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        found = [(p, n, v) for p, text in _lines(src, self.search or (self.path,))
                 for n, v in P.active_values(text, self.key, self.separator, self.comment)]
        if not found:
            return bad(f"{self.key} not set in {', '.join(self.search or (self.path,))}")
        wrong = [(p, n, v) for p, n, v in found
                 if not (P.compare(v, self.value, self.compare, min_value=self.min_value)
                         or any(P.compare(v, a, "eq") for a in self.accept))]
        where = "; ".join(f"{p}:{n}: {self.key}{self.separator}{v}" for p, n, v in (wrong or found))
        return verdict(not wrong, where if not wrong else f"expected {self.compare} {self.value!r}: {where}")


class FileContent(Kind):
    """A whole file with the given content (banners, drop-ins); a symlink there is replaced by
    a regular file. `match: normalized` compares with all whitespace collapsed."""

    type: Literal["file_content"]
    path: ImagePath
    content: str
    mode: Mode = "0644"
    match: Literal["exact", "normalized"] = "exact"

    def _norm(self, text: str) -> str:
        if self.match == "normalized":
            return " ".join(text.split())
        return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())

    def apply(self, fx: FixContext) -> None:
        link = fx.path(self.path, follow=False)
        if link.is_symlink():  # e.g. SUSE's /etc/issue -> /run/issue: the content must live in /etc
            link.unlink()
        fx.write(self.path, self.content if self.content.endswith("\n") else self.content + "\n", self.mode,
                 force_mode=True)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        text = src.read(self.path)
        if text is None:
            return bad(f"{self.path} missing")
        same = self._norm(text) == self._norm(self.content)
        return verdict(same, f"{self.path} {'matches' if same else 'differs from'} the required content")


class LinePresent(Kind):
    """A line in `path`: nothing if an active line matches `match` (default: the line itself,
    whitespace-insensitive); else replace the first active line matching `replace`; else insert
    at `position` (start, end, after:<regex>, before:<regex>)."""

    type: Literal["line_present"]
    path: ImagePath
    line: str
    match: str | None = None
    replace: str | None = None
    position: str = Field("end", pattern=r"^(start|end|after:.+|before:.+)$")
    mode: Mode = "0644"
    search: tuple[ImagePath, ...] = ()

    def _matches(self, line: str) -> bool:
        if not _active(line):
            return False
        if self.match:
            return re.search(self.match, line) is not None
        return line.split() == self.line.split()

    def apply(self, fx: FixContext) -> None:
        text = fx.read(self.path)
        lines = (text or "").splitlines()
        if any(self._matches(ln) for ln in lines):
            return
        rep = next((i for i, ln in enumerate(lines)
                    if self.replace and _active(ln) and re.search(self.replace, ln)), None)
        if rep is not None:
            lines[rep] = self.line
        else:
            where, _, rx = self.position.partition(":")
            idx = {"start": 0, "end": len(lines)}.get(where)
            if idx is None:
                hits = [i for i, ln in enumerate(lines) if _active(ln) and re.search(rx, ln)]
                idx = (hits[0] if where == "before" else hits[-1] + 1) if hits else len(lines)
            lines.insert(idx, self.line)
        fx.write(self.path, "\n".join(lines) + "\n", self.mode)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        for path, text in _lines(src, self.search or (self.path,)):
            for n, ln in enumerate(text.splitlines(), 1):
                if self._matches(ln):
                    return ok(f"{path}:{n}: {ln.strip()}")
        return bad(f"no line {self.match or self.line!r} in {', '.join(self.search or (self.path,))}")


class RegexAbsent(Kind):
    """No active line in `paths` matches `regex`; the fix removes the match (default), or
    comments out / deletes the whole line."""

    type: Literal["regex_absent"]
    paths: tuple[ImagePath, ...]
    regex: str
    action: Literal["remove_match", "comment_line", "delete_line"] = "remove_match"

    def apply(self, fx: FixContext) -> None:
        rx = re.compile(self.regex)
        for path, text in _lines(fx.src, self.paths):
            out = []
            for ln in text.splitlines():
                if not (_active(ln) and rx.search(ln)):
                    out.append(ln)
                elif self.action == "remove_match":
                    out.append(rx.sub("", ln))
                elif self.action == "comment_line":
                    out.append(f"# {ln}")
            fx.write(path, "\n".join(out) + "\n")

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        rx = re.compile(self.regex)
        hits = [f"{p}:{n}: {ln.strip()}" for p, text in _lines(src, self.paths)
                for n, ln in enumerate(text.splitlines(), 1) if _active(ln) and rx.search(ln)]
        return verdict(not hits, "; ".join(hits) if hits else f"no {self.regex!r} in {', '.join(self.paths)}")


class PamLineAbsent(RegexAbsent):
    """Like `regex_absent`, deleting whole PAM lines by default."""

    type: Literal["pam_line_absent"]  # type: ignore[assignment]
    action: Literal["remove_match", "comment_line", "delete_line"] = "delete_line"


class RegexPresent(Kind):
    """Check only: some active line in `paths` matches `regex`."""

    fixable: ClassVar[bool] = False
    type: Literal["regex_present"]
    paths: tuple[ImagePath, ...]
    regex: str

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        rx = re.compile(self.regex)
        for p, text in _lines(src, self.paths):
            for n, ln in enumerate(text.splitlines(), 1):
                if _active(ln) and rx.search(ln):
                    return ok(f"{p}:{n}: {ln.strip()}")
        return bad(f"no line matching {self.regex!r} in {', '.join(self.paths)}")


class PamOption(Kind):
    """Options on a PAM module line (`x=` options replace old values); with `control`, a
    missing module line is inserted before the `insert_before` module."""

    type: Literal["pam_option"]
    path: ImagePath
    pam_type: Literal["auth", "account", "password", "session"]
    module: str
    options: tuple[str, ...]
    remove: tuple[str, ...] = Field((), description="option names that must not be on the line")
    control: str | None = None
    insert_before: str | None = None

    def apply(self, fx: FixContext) -> None:
        text = fx.read(self.path)
        if text is None:
            raise BuildError(f"{self.path} does not exist in the image (is PAM installed?)")
        fx.write(self.path, P.pam_set_options(text, self.pam_type, self.module, list(self.options),
                                              control=self.control, insert_before=self.insert_before,
                                              remove=list(self.remove)))

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        text = src.read(self.path) or ""
        good, seen = P.pam_has_options(text, self.pam_type, self.module, list(self.options),
                                       list(self.remove))
        if good:
            return ok(f"{self.path}: {seen}")
        without = f", without {' '.join(self.remove)}" if self.remove else ""
        return bad(f"{self.path}: {seen or f'no {self.pam_type} {self.module} line'} "
                   f"(needs {' '.join(self.options)}{without})")


# --- kernel, modules, bootloader -------------------------------------------------------------


class Sysctl(Kind):
    """A kernel parameter as a drop-in (`/etc/sysctl.d/99-imagefactory-stig.conf`); conflicting
    assignments elsewhere in /etc are commented out. Never `sysctl -w` on the build host.
    Offline the effective configured value is checked, on a host the live value."""

    type: Literal["sysctl"]
    key: str
    value: str

    def apply(self, fx: FixContext) -> None:
        key = P.sysctl_key(self.key)
        fx.write(P.SYSCTL_DROPIN, P.set_key(fx.read(P.SYSCTL_DROPIN) or "", key, self.value, " = "))
        want = " ".join(self.value.split())
        rx = re.compile(r"^\s*-?" + re.escape(key).replace(r"\.", "[./]") + r"\s*=")
        for path, _, k, v in P.sysctl_assignments(fx.src):
            if k == key and path.startswith("/etc/") and path != P.SYSCTL_DROPIN and v != want:
                lines = (fx.read(path) or "").splitlines()
                fx.write(path, "\n".join(f"# {ln}" if rx.match(ln) else ln for ln in lines) + "\n")

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        want = " ".join(self.value.split())
        key = P.sysctl_key(self.key)
        if isinstance(src, HostSource):
            try:
                live = " ".join(str(src.host.sysctl(key)).split())
            except Exception as e:
                return err(f"sysctl {key}: {e}")
            return verdict(live == want, f"live {key} = {live}")
        hits = [a for a in P.sysctl_assignments(src) if a[2] == key]
        if not hits:
            return bad(f"{key} is not configured in any sysctl.d file")
        path, n, _, v = hits[-1]
        others = [f"{p}:{ln} = {val}" for p, ln, _, val in hits[:-1] if val != v]
        note = f" (overridden: {'; '.join(others)})" if others else ""
        return verdict(v == want, f"{path}:{n}: {key} = {v}{note}")


class ModprobeDisable(Kind):
    """`install <m> /bin/false` and `blacklist <m>` in /etc/modprobe.d/imagefactory-stig.conf."""

    type: Literal["modprobe_disable"]
    module: str
    install: bool = True
    blacklist: bool = True

    def _wanted(self) -> list[str]:
        return ([f"install {self.module} /bin/false"] if self.install else []) + (
            [f"blacklist {self.module}"] if self.blacklist else [])

    def apply(self, fx: FixContext) -> None:
        lines = (fx.read(MODPROBE_DROPIN) or "").splitlines()
        lines += [w for w in self._wanted() if w not in lines]
        fx.write(MODPROBE_DROPIN, "\n".join(lines) + "\n")

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        mod = self.module.replace("-", "_")
        seen = {"install": "", "blacklist": ""}
        for path, text in _lines(src, MODPROBE_GLOBS):
            for n, ln in enumerate(text.splitlines(), 1):
                f = ln.split()
                if len(f) >= 2 and not ln.lstrip().startswith("#") and f[1].replace("-", "_") == mod:
                    if f[0] == "install" and len(f) >= 3 and f[2] in FALSE_BINARIES:
                        seen["install"] = f"{path}:{n}"
                    elif f[0] == "blacklist":
                        seen["blacklist"] = f"{path}:{n}"
        need = [k for k in ("install", "blacklist") if getattr(self, k) and not seen[k]]
        have = ", ".join(f"{k} at {v}" for k, v in seen.items() if v) or "nothing"
        missing = f"; missing {' and '.join(need)}" if need else ""
        return verdict(not need, f"{self.module}: {have}{missing}")


class KernelArg(Kind):
    """A kernel command-line argument; the fix hands it to the bootloader step (returned from
    `apply_fixes`). Offline the generated grub.cfg / /etc/default/grub / /etc/kernel/cmdline are
    checked, on a host /proc/cmdline."""

    type: Literal["kernel_arg"]
    arg: str

    def apply(self, fx: FixContext) -> None:
        if self.arg not in fx.kernel_args:
            fx.kernel_args.append(self.arg)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        if isinstance(src, HostSource):
            cmdline = src.read("/proc/cmdline") or ""
            return verdict(self.arg in cmdline.split(), f"/proc/cmdline: {cmdline.strip()}")
        seen: list[tuple[str, bool]] = []
        for cfg in ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg"):
            for n, ln in enumerate((src.read(cfg) or "").splitlines(), 1):
                if re.match(r"^\s*linux(efi)?\s", ln):
                    seen.append((f"{cfg}:{n}", self.arg in ln.split()))
        for path, text in _lines(src, ("/etc/default/grub", "/etc/default/grub.d/*.cfg")):
            for n, v in P.active_values(text, "GRUB_CMDLINE_LINUX", "="):
                seen.append((f"{path}:{n}", self.arg in v.strip("\"'").split()))
        kcmd = src.read("/etc/kernel/cmdline")
        if kcmd is not None:
            seen.append(("/etc/kernel/cmdline", self.arg in kcmd.split()))
        if not seen:
            return err("no bootloader configuration in the image; check /proc/cmdline on the booted host")
        missing = [w for w, good in seen if not good]
        return verdict(not missing, f"{self.arg} missing in {', '.join(missing)}" if missing
                       else f"{self.arg} in {', '.join(w for w, _ in seen)}")


# --- packages and units ----------------------------------------------------------------------


def installed_packages(src: Source, ctx: CheckContext) -> set[str] | None:
    if ctx.packages is not None:
        return set(ctx.packages)
    if "packages" not in ctx.cache:
        found: set[str] | None = None
        status = src.read("/var/lib/dpkg/status")
        if status is not None:
            found = P.dpkg_installed(status)
        elif isinstance(src, RootSource):
            for db in ("/usr/lib/sysimage/rpm/rpmdb.sqlite", "/var/lib/rpm/rpmdb.sqlite"):
                if (found := P.rpm_installed(src.path(db))) is not None:
                    break
        ctx.cache["packages"] = found
    pk: set[str] | None = ctx.cache["packages"]
    return pk


class _Package(Kind):
    name: str
    want_installed: ClassVar[bool]

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        if isinstance(src, HostSource) and ctx.packages is None:
            try:
                inst = bool(src.host.package(self.name).is_installed)
            except Exception as e:
                return err(f"package {self.name}: {e}")
        else:
            pk = installed_packages(src, ctx)
            if pk is None:
                return err("cannot read the package database offline (no dpkg status or rpm sqlite db); "
                           "pass the installed package list or check the booted host")
            inst = self.name in pk
        return verdict(inst == self.want_installed, f"{self.name} is {'' if inst else 'not '}installed")


class PackageAbsent(_Package):
    """Removed by the builder's package manager (returned from `apply_fixes`, never run here)."""

    type: Literal["package_absent"]
    want_installed: ClassVar[bool] = False

    def apply(self, fx: FixContext) -> None:
        if self.name not in fx.remove:
            fx.remove.append(self.name)


class PackagePresent(_Package):
    """Installed by the builder's package manager (returned from `apply_fixes`)."""

    type: Literal["package_present"]
    want_installed: ClassVar[bool] = True

    def apply(self, fx: FixContext) -> None:
        if self.name not in fx.install:
            fx.install.append(self.name)


class SystemdMask(Kind):
    """`/etc/systemd/system/<unit> -> /dev/null` (what `systemctl mask` does, without systemctl)."""

    type: Literal["systemd_mask"]
    unit: str = Field(pattern=r"^[A-Za-z0-9@._:-]+$")

    def apply(self, fx: FixContext) -> None:
        p = fx.path(f"/etc/systemd/system/{self.unit}", follow=False)
        if p.is_symlink() and os.readlink(p) == "/dev/null":
            return
        if p.exists() or p.is_symlink():
            p.unlink()
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to("/dev/null")

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        if isinstance(src, HostSource):
            _, out = src.run(f"systemctl is-enabled {self.unit}")
            return verdict(out.strip() == "masked", f"systemctl is-enabled {self.unit}: {out.strip()}")
        target = src.readlink(f"/etc/systemd/system/{self.unit}")
        return verdict(target == "/dev/null",
                       f"/etc/systemd/system/{self.unit} -> {target or '(not masked)'}")


def _unit_file(src: RootSource, unit: str) -> str | None:
    return next((f"{d}/{unit}" for d in UNIT_DIRS if src.read(f"{d}/{unit}") is not None), None)


class ServiceEnabled(Kind):
    """Enabled like `systemctl enable` does offline: symlinks for the unit's [Install]
    WantedBy=/RequiredBy=/Alias= under /etc/systemd/system."""

    type: Literal["service_enabled"]
    unit: str = Field(pattern=r"^[A-Za-z0-9@._:-]+$")

    def _install(self, src: RootSource) -> tuple[str, dict[str, list[str]]]:
        path = _unit_file(src, self.unit)
        if path is None:
            raise BuildError(f"unit {self.unit} is not installed in the image")
        keys: dict[str, list[str]] = {"wantedby": [], "requiredby": [], "alias": []}
        section = ""
        for ln in (src.read(path) or "").splitlines():
            s = ln.strip()
            if s.startswith("["):
                section = s
            elif section == "[Install]" and "=" in s:
                k, v = s.split("=", 1)
                if k.strip().lower() in keys:
                    keys[k.strip().lower()] += v.split()
        return path, keys

    def _links(self, src: RootSource) -> list[tuple[str, str]]:
        path, keys = self._install(src)
        links = [(f"/etc/systemd/system/{t}.wants/{self.unit}", path) for t in keys["wantedby"]]
        links += [(f"/etc/systemd/system/{t}.requires/{self.unit}", path) for t in keys["requiredby"]]
        links += [(f"/etc/systemd/system/{a}", path) for a in keys["alias"]]
        return links

    def apply(self, fx: FixContext) -> None:
        links = self._links(fx.src)
        if not links:
            raise BuildError(f"unit {self.unit} has no [Install] section to enable")
        for link, target in links:
            p = fx.path(link, follow=False)
            if p.is_symlink() and os.readlink(p) == target:
                continue
            if p.is_symlink():
                p.unlink()
            p.parent.mkdir(parents=True, exist_ok=True)
            p.symlink_to(target)

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        if isinstance(src, HostSource):
            _, out = src.run(f"systemctl is-enabled {self.unit}")
            state = out.strip()
            return verdict(state in ("enabled", "enabled-runtime", "alias", "static"),
                           f"systemctl is-enabled {self.unit}: {state}")
        assert isinstance(src, RootSource)
        try:
            links = self._links(src)
        except BuildError as e:
            return bad(str(e))
        present = [lk for lk, _ in links if src.readlink(lk) is not None]
        return verdict(bool(links) and len(present) == len(links),
                       f"{self.unit}: {', '.join(present) or 'no enablement symlinks'}")


class ServiceActive(Kind):
    """Check only, on the booted host: `systemctl is-active <unit>` is active."""

    fixable: ClassVar[bool] = False
    type: Literal["service_active"]
    unit: str = Field(pattern=r"^[A-Za-z0-9@._:-]+$")
    where: Literal["both", "offline", "host"] = "host"

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        if not isinstance(src, HostSource):
            return err("runtime state: checked on the booted host only")
        _, out = src.run(f"systemctl is-active {self.unit}")
        return verdict(out.strip() == "active", f"systemctl is-active {self.unit}: {out.strip()}")


class Command(Kind):
    """Check only, on the booted host: a command whose stdout matches `expect`."""

    fixable: ClassVar[bool] = False
    type: Literal["command"]
    cmd: str
    expect: str = ""
    rc: int | None = 0
    where: Literal["both", "offline", "host"] = "host"

    def evaluate(self, src: Source, ctx: CheckContext) -> CheckResult:
        if not isinstance(src, HostSource):
            return err("runtime state: checked on the booted host only")
        rc, out = src.run(self.cmd)
        good = (self.rc is None or rc == self.rc) and re.search(self.expect, out, re.MULTILINE) is not None
        return verdict(good, f"$ {self.cmd} -> rc={rc}: {out.strip()[:300]}")
