"""Structured fix actions and declarative checks, applied and evaluated offline on an image root
and translated to the same checks on a booted host.

The kinds themselves live in `kinds`, `kinds_fs` and `kinds_svc`; this module joins them into
the discriminated unions the catalogue uses (`Action`, `Check`), renders `{{ name }}`
placeholders from a recipe's `Tailoring`, and runs them:

- `package_plan` / `apply_fixes(root, family, controls, tailoring)`: package removals and
  installs and kernel arguments are *returned* for the builder (nothing is run here); every
  other fix is a pure-Python edit inside `root`. Call `package_plan` first and install/remove
  before `apply_fixes`, so packages do not overwrite the edited files.
- `check_root(root, family, controls)`: offline `CheckResult` per control.
- `host_check(check, host)` / `check_host(host, family, controls)`: the same checks through a
  testinfra `host` on the booted VM (live sysctl values, `sshd -T`, `auditctl -l`, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import BuildError, UserError
from .kinds import (
    CheckContext,
    CheckResult,
    Command,
    FileContent,
    FileLine,
    FixContext,
    KernelArg,
    Kind,
    LinePresent,
    ModprobeDisable,
    PackageAbsent,
    PackagePresent,
    PamLineAbsent,
    PamOption,
    RegexAbsent,
    RegexPresent,
    ServiceActive,
    ServiceEnabled,
    Status,
    Sysctl,
    SystemdMask,
    err,
)
from .kinds_fs import (
    AccountLocked,
    FileAbsent,
    FileExists,
    FileMode,
    GroupMembers,
    NoEmptyPasswords,
    PasswordHashes,
    ReplaceSymlink,
    StickyWorldWritable,
    Symlink,
    UniqueIds,
)
from .kinds_svc import AuditRule, SshdOption, YamlKey, YamlListContains
from .sources import HostSource, Pending, RootSource, Source

if TYPE_CHECKING:
    from .catalogue import Control

__all__ = [
    "DOD_BANNER", "Action", "ApplyResult", "Check", "CheckResult", "Tailoring", "apply_fixes", "check_host",
    "check_root", "evaluate", "host_check", "package_plan", "render",
]

# The Standard Mandatory DOD Notice and Consent Banner, exactly as in the Ubuntu 22.04 STIG
# V2R8 UBTU-22-255020 fix and check text (tests compare it with the XCCDF).
DOD_BANNER = (
    "You are accessing a U.S. Government (USG) Information System (IS) that is provided for USG-authorized "
    "use only.\n\n"
    "By using this IS (which includes any device attached to this IS), you consent to the following "
    "conditions:\n\n"
    "-The USG routinely intercepts and monitors communications on this IS for purposes including, but not "
    "limited to, penetration testing, COMSEC monitoring, network operations and defense, personnel "
    "misconduct (PM), law enforcement (LE), and counterintelligence (CI) investigations.\n\n"
    "-At any time, the USG may inspect and seize data stored on this IS.\n\n"
    "-Communications using, or data stored on, this IS are not private, are subject to routine monitoring, "
    "interception, and search, and may be disclosed or used for any USG-authorized purpose.\n\n"
    "-This IS includes security measures (e.g., authentication and access controls) to protect USG "
    "interests--not for your personal benefit or privacy.\n\n"
    "-Notwithstanding the above, using this IS does not constitute consent to PM, LE or CI investigative "
    "searching or monitoring of the content of privileged communications, or work product, related to "
    "personal representation or services by attorneys, psychotherapists, or clergy, and their "
    "assistants.  Such communications and work product are private and confidential.  See User Agreement "
    "for details."
)

# Parameters a recipe may override through `Tailoring.values`.
DEFAULT_VALUES: dict[str, str] = {
    "banner_text": DOD_BANNER,
    "audit_mail_account": "root",
    "audit_disk_full_action": "SYSLOG",
    "sudo_group_members": "",
}

_FIXABLE = (FileLine | FileContent | LinePresent | RegexAbsent | PamLineAbsent | PamOption | Sysctl
            | ModprobeDisable | KernelArg | PackageAbsent | PackagePresent | SystemdMask | ServiceEnabled
            | FileMode | FileAbsent | Symlink | ReplaceSymlink | StickyWorldWritable | AccountLocked
            | NoEmptyPasswords | SshdOption | AuditRule | YamlListContains | YamlKey)
_CHECK_ONLY = (RegexPresent | ServiceActive | Command | FileExists | PasswordHashes | UniqueIds
               | GroupMembers)

Action = Annotated[_FIXABLE, Field(discriminator="type")]
Check = Annotated[_FIXABLE | _CHECK_ONLY, Field(discriminator="type")]

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class Tailoring(BaseModel):
    """A recipe's adjustments: controls to skip (each with a reason), waive-by-default controls
    to apply anyway, and values for `{{ name }}` placeholders in actions and checks."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    disable: dict[str, str] = Field(default_factory=dict, description="STIG id -> reason (required)")
    enable: tuple[str, ...] = Field((), description="waive-by-default STIG ids to apply anyway")
    values: dict[str, str] = Field(default_factory=dict, description="placeholder values, e.g. banner_text")

    @field_validator("disable")
    @classmethod
    def _reasons(cls, v: dict[str, str]) -> dict[str, str]:
        empty = [k for k, r in v.items() if not str(r).strip()]
        if empty:
            raise ValueError(f"a reason is required to disable {', '.join(empty)}")
        return v

    def all_values(self) -> dict[str, str]:
        return {**DEFAULT_VALUES, **self.values}


def _render_value(v: Any, values: dict[str, str]) -> Any:
    if isinstance(v, str) and "{{" in v:
        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in values:
                raise UserError(f"unknown STIG placeholder {{{{ {m.group(1)} }}}}",
                                hint=f"set it in the STIG tailoring values; known: {', '.join(values)}")
            return values[m.group(1)]
        return PLACEHOLDER.sub(sub, v)
    if isinstance(v, tuple):
        return tuple(_render_value(i, values) for i in v)
    return v


def render(kind: Kind, values: dict[str, str]) -> Kind:
    """`kind` with `{{ name }}` placeholders in its string fields replaced from `values`."""
    update = {}
    for name in type(kind).model_fields:
        v = getattr(kind, name)
        r = _render_value(v, values)
        if r is not v and r != v:
            update[name] = r
    return kind.model_copy(update=update) if update else kind


def evaluate(check: Kind, src: Source, ctx: CheckContext) -> CheckResult:
    """One check against a source; crashes become `error` results naming the check."""
    try:
        return check.evaluate(src, ctx)
    except (OSError, ValueError, BuildError) as e:
        return err(f"{check.kind_name()}: {e}")
    except Pending as e:  # evaluated again once the batch with this fact has been fetched
        return err(f"{check.kind_name()}: pending: {e}")


def _combine(results: list[CheckResult]) -> CheckResult:
    status: Status = "fail" if any(r.status == "fail" for r in results) else (
        "error" if any(r.status == "error" for r in results) else "pass")
    return CheckResult(status, "\n".join(r.evidence for r in results))


def host_check(check: Kind, host: Any, values: dict[str, str] | None = None) -> CheckResult:
    """Evaluate one check on a booted host (a testinfra `Host`: file, run, package, sysctl)."""
    rendered = render(check, {**DEFAULT_VALUES, **(values or {})})
    return evaluate(rendered, HostSource(host), CheckContext())


# --- running controls ------------------------------------------------------------------------


@dataclass
class ApplyResult:
    applied: list[str] = field(default_factory=list)
    packages_to_remove: list[str] = field(default_factory=list)
    packages_to_install: list[str] = field(default_factory=list)
    kernel_args: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why no fix was applied
    failed: dict[str, str] = field(default_factory=dict)  # id -> error while applying


def _skip_reason(c: Control, family: str, t: Tailoring) -> str | None:
    if family not in c.applies_to:
        return f"not applicable to {family}"
    if c.id in t.disable:
        return f"disabled by tailoring: {t.disable[c.id]}"
    if c.phase == "waive-by-default" and c.id not in t.enable:
        return f"waive-by-default: {c.reason}"
    if c.phase in ("first-boot", "verify"):
        return f"{c.phase}: {c.reason}"
    if not c.fix_for(family):
        return "check only: nothing to change in the image"
    return None


def package_plan(family: str, controls: Iterable[Control], tailoring: Tailoring | None = None
                 ) -> tuple[list[str], list[str]]:
    """(packages to remove, packages to install) the selected controls ask for."""
    t = tailoring or Tailoring()
    fx = FixContext(Path("/nonexistent"))
    for c in controls:
        if _skip_reason(c, family, t) is None:
            for a in c.fix_for(family):
                if isinstance(a, PackageAbsent | PackagePresent):
                    a.apply(fx)
    return fx.remove, fx.install


def _check_root_is_safe(root: Path) -> Path:
    real = root.resolve()
    if real == Path("/") or not real.is_dir():
        raise BuildError(f"refusing to apply STIG fixes to {root}: not an image root directory")
    return real


def apply_fixes(root: Path, family: str, controls: Iterable[Control], tailoring: Tailoring | None = None
                ) -> ApplyResult:
    """Apply the fixes of every selected control to the image root, in catalogue order.

    Skipped: other families, tailoring `disable`, waive-by-default (unless `enable`d),
    first-boot and verify controls. A failing control is recorded in `failed` and the rest go on.
    """
    t = tailoring or Tailoring()
    values = t.all_values()
    fx = FixContext(_check_root_is_safe(root))
    res = ApplyResult()
    for c in controls:
        why = _skip_reason(c, family, t)
        if why is not None:
            res.skipped[c.id] = why
            continue
        try:
            for a in c.fix_for(family):
                render(a, values).apply(fx)
        except (OSError, ValueError, BuildError) as e:
            res.failed[c.id] = str(e)
            continue
        res.applied.append(c.id)
    res.packages_to_remove, res.packages_to_install, res.kernel_args = fx.remove, fx.install, fx.kernel_args
    return res


def _run_checks(src: Source, family: str, controls: Iterable[Control], t: Tailoring, ctx: CheckContext,
                phases: tuple[str, ...]) -> dict[str, CheckResult]:
    values = t.all_values()
    out: dict[str, CheckResult] = {}
    for c in controls:
        if family not in c.applies_to or c.phase not in phases:
            continue
        checks = [k for k in c.checks_for(family) if k.where in ("both", src.where)]
        if checks:
            out[c.id] = _combine([evaluate(render(k, values), src, ctx) for k in checks])
    return out


def check_root(root: Path, family: str, controls: Iterable[Control], tailoring: Tailoring | None = None, *,
               packages: Iterable[str] | None = None,
               phases: tuple[str, ...] = ("bake", "verify", "waive-by-default")) -> dict[str, CheckResult]:
    """Evaluate offline the checks of the controls for `family` on an image root. First-boot
    controls are left out (their settings arrive later), as are controls without an
    offline-capable check. `packages` overrides the package database (e.g. `rpm -qa` output)."""
    t = tailoring or Tailoring()
    ctx = CheckContext(family, frozenset(packages) if packages is not None else None)
    return _run_checks(RootSource(root), family, controls, t, ctx, phases)


def check_host(host: Any, family: str, controls: Iterable[Control], tailoring: Tailoring | None = None, *,
               phases: tuple[str, ...] = ("bake", "first-boot", "verify", "waive-by-default")
               ) -> dict[str, CheckResult]:
    """Evaluate the checks of the controls for `family` on a booted host (testinfra)."""
    t = tailoring or Tailoring()
    return _run_checks(HostSource(host), family, controls, t, CheckContext(family), phases)
