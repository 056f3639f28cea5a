"""STIG waivers: documented, approved exceptions to controls, resolved per image.

A waiver file (one per recipe or site, e.g. `stig/waivers/rke2-node.yaml`) holds many waivers::

    waivers:
      - id: W-RKE2-001                 # unique within the set (across all merged files)
        stig_ids: [UBTU-22-215040]     # STIG ids (XCCDF <version>), of any benchmark
        scope: {os: [debian, ubuntu], release: ["22.04"], role: [server, agent]}  # each key optional
        type: operational-requirement  # false-positive | operational-requirement | risk-accepted
                                       # | not-applicable | compensating
        justification: "..."          # required
        compensating_controls: ["..."] # required when type is compensating
        approver: "Jane Doe, ISSM"     # required when a waived id is CAT I (checked by validate_waivers)
        approved: 2026-01-15           # required with an approver (and only with one)
        expires: 2027-01-15            # optional, not before `approved`
        poam_id: POAM-123              # optional

A waiver never changes a scan result: `WaiverSet.decisions` turns the waivers in scope for one
image into `WaiverDecision`s, and the report decides whether an open result counts. An expired
waiver still yields a decision (with `expired=True`) so the report can say why the finding is back.

Loading (`load_waivers`) checks everything that needs only the file; `validate_waivers` checks the
STIG ids and CAT I approvals against the catalogues, which the file alone cannot know.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..errors import Problem, UserError, ValidationError
from .catalogue import OS_FAMILIES, RKE2_ROLES, Catalogue, catalogue_dir, sequence_lines
from .results import WaiverDecision, WaiverType
from .xccdf import STIG_DIR

STIG_ID_PATTERN = r"^[A-Z0-9]+-[A-Z0-9]+-\d{5,6}$"  # UBTU-24-90890: five digits in the 24.04 V1R1 XCCDF
WAIVER_TYPES: tuple[str, ...] = ("false-positive", "operational-requirement", "risk-accepted",
                                 "not-applicable", "compensating")

# Hints per offending key, so each problem tells the user what a good value looks like.
_HINTS: dict[str, str] = {
    "id": "a short unique name such as W-RKE2-001 (letters, digits, '.', '_', '-')",
    "stig_ids": "STIG ids are the XCCDF <version> values, e.g. UBTU-22-215040",
    "scope": "keys os, release, role; each a list, and a missing key matches any",
    "os": f"OS families: {', '.join(OS_FAMILIES)}",
    "release": 'quote release numbers so YAML keeps them as text: ["22.04"]',
    "role": f"RKE2 node roles: {', '.join(RKE2_ROLES)}",
    "type": f"one of: {', '.join(WAIVER_TYPES)}",
    "justification": "say why the control cannot or need not be met on these machines",
    "compensating_controls": "list what mitigates the risk instead (one control per item)",
    "approver": "name and role of the approving official, e.g. \"Jane Doe, ISSM\"",
    "approved": "a date written YYYY-MM-DD, given together with the approver",
    "expires": "a date written YYYY-MM-DD, on or after the approval date",
    "poam_id": "the POA&M item tracking this waiver, e.g. POAM-123",
}


def _nonempty_strings(values: tuple[str, ...], what: str) -> tuple[str, ...]:
    if any(not v.strip() for v in values):
        raise ValueError(f"empty {what}")
    return values


def _nonempty_list(values: tuple[str, ...] | None, what: str) -> tuple[str, ...] | None:
    # checked here rather than with Field(min_length=1), which pydantic also reports (as a second,
    # confusing "at least 1 item, not 0") when an item of the list has the wrong type
    if values is not None and not values:
        raise ValueError(f"an empty {what} list matches nothing; leave the key out to match any")
    return values


class WaiverScope(BaseModel):
    """Which images a waiver applies to; a missing key matches any value."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    os: tuple[str, ...] | None = None
    release: tuple[str, ...] | None = None
    role: tuple[str, ...] | None = None

    # Unknown families or roles are rejected rather than ignored: a typo would otherwise make the
    # waiver silently match nothing and the finding would show up unexplained.
    @field_validator("os")
    @classmethod
    def _known_os(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        _nonempty_list(v, "os")
        bad = sorted(set(v or ()) - set(OS_FAMILIES))
        if bad:
            raise ValueError(f"unknown OS family {', '.join(bad)}")
        return v

    @field_validator("role")
    @classmethod
    def _known_role(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        _nonempty_list(v, "role")
        bad = sorted(set(v or ()) - set(RKE2_ROLES))
        if bad:
            raise ValueError(f"unknown role {', '.join(bad)}")
        return v

    @field_validator("release")
    @classmethod
    def _release_text(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        _nonempty_list(v, "release")
        return _nonempty_strings(v, "release") if v is not None else v

    def matches(self, os_family: str, release: str, role: str | None) -> bool:
        """True if the image (OS family, release, RKE2 role or None) is in scope. A scope that
        names roles does not match an image without a role (a plain, non-Kubernetes image)."""
        if self.os is not None and os_family not in self.os:
            return False
        if self.release is not None and release not in self.release:
            return False
        return self.role is None or (role is not None and role in self.role)


class Waiver(BaseModel):
    """One waiver as written in YAML. Field order matters: the validators of later fields read
    earlier ones (`info.data`), so that each cross-field problem is reported at its own key."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    stig_ids: tuple[str, ...]
    scope: WaiverScope = Field(default_factory=WaiverScope)
    type: WaiverType
    justification: str
    compensating_controls: tuple[str, ...] = Field(default=(), validate_default=True)
    approver: str | None = None
    approved: date | None = Field(default=None, validate_default=True)
    expires: date | None = None
    poam_id: str | None = None

    @field_validator("stig_ids")
    @classmethod
    def _stig_ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("a waiver must name at least one STIG id")
        bad = [s for s in v if not re.match(STIG_ID_PATTERN, s)]
        if bad:
            raise ValueError(f"not a STIG id: {', '.join(bad)}")
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"listed twice: {', '.join(dup)}")
        return v

    @field_validator("justification")
    @classmethod
    def _justification(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a waiver needs a justification")
        return v

    @field_validator("compensating_controls")
    @classmethod
    def _compensating(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        _nonempty_strings(v, "compensating control")
        if info.data.get("type") == "compensating" and not v:
            raise ValueError("a compensating waiver must list its compensating controls")
        return v

    @field_validator("approver", "poam_id")
    @classmethod
    def _optional_text(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("empty; leave the key out instead")
        return v

    @field_validator("approved")
    @classmethod
    def _approved(cls, v: date | None, info: ValidationInfo) -> date | None:
        # An approval is a who and a when; either alone is not evidence an auditor accepts.
        has_approver = info.data.get("approver") is not None
        if has_approver and v is None:
            raise ValueError("an approver needs the date of the approval")
        if v is not None and not has_approver and "approver" in info.data:
            raise ValueError("an approval date needs an approver")
        return v

    @field_validator("expires")
    @classmethod
    def _expires(cls, v: date | None, info: ValidationInfo) -> date | None:
        approved = info.data.get("approved")
        if v is not None and approved is not None and v < approved:
            raise ValueError(f"expires {v} is before approved {approved}")
        return v

    def is_expired(self, today: date) -> bool:
        """Expired the day after `expires` (the expiry date itself is still covered)."""
        return self.expires is not None and self.expires < today

    def decision(self, today: date, source: str = "") -> WaiverDecision:
        return WaiverDecision(
            waiver_id=self.id, type=self.type, justification=self.justification,
            approver=self.approver, approved=self.approved, expires=self.expires,
            expired=self.is_expired(today), poam_id=self.poam_id,
            compensating_controls=self.compensating_controls, source=source)


class WaiverFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    description: str | None = None
    waivers: tuple[Waiver, ...]


@dataclass(frozen=True)
class Origin:
    """Where a waiver was written, for error messages and the report's waiver source."""

    file: str
    line: int | None


@dataclass(frozen=True)
class WaiverSet:
    """Waivers from one or more files; ids are unique across the set (`merge` enforces it)."""

    waivers: tuple[Waiver, ...] = ()
    sources: tuple[Path, ...] = ()
    # keyed by waiver id; not part of equality (two sets with the same waivers are the same set)
    origins: Mapping[str, Origin] = field(default_factory=dict, compare=False, hash=False)

    def __len__(self) -> int:
        return len(self.waivers)

    def origin(self, waiver_id: str) -> Origin:
        found = self.origins.get(waiver_id)
        if found is not None:
            return found
        return Origin(str(self.sources[0]) if len(self.sources) == 1 else "<waivers>", None)

    def get(self, waiver_id: str) -> Waiver | None:
        return next((w for w in self.waivers if w.id == waiver_id), None)

    @classmethod
    def merge(cls, *sets: WaiverSet) -> WaiverSet:
        """One set from several (call on the class: `WaiverSet.merge(site, recipe)`). A waiver id
        defined twice is an error even if both definitions are equal: which one an auditor should
        read must never depend on load order."""
        waivers: list[Waiver] = []
        sources: list[Path] = []
        origins: dict[str, Origin] = {}
        problems: list[Problem] = []
        for ws in sets:
            sources.extend(s for s in ws.sources if s not in sources)
            for w in ws.waivers:
                here = ws.origin(w.id)
                if w.id in origins:
                    first = origins[w.id]
                    at = f"{first.file}:{first.line}" if first.line else first.file
                    problems.append(Problem(here.file, here.line, f"{w.id}.id",
                                            f"duplicate waiver id (also defined at {at})",
                                            hint="waiver ids must be unique across all waiver files"))
                    continue
                origins[w.id] = here
                waivers.append(w)
        if problems:
            raise ValidationError(problems)
        return cls(tuple(waivers), tuple(sources), origins)

    def decisions(self, benchmark: str, *, os_family: str, release: str, role: str | None,
                  today: date, catalogue: Catalogue) -> dict[str, WaiverDecision]:
        """STIG id -> decision for every rule of `benchmark` that an in-scope waiver covers.

        Every rule of the XCCDF counts, not only those in the catalogue: a waiver may cover a rule
        the factory does not automate (a manual review item). When several in-scope waivers cover
        the same id, a non-expired one wins over an expired one, then the latest expiry wins (no
        expiry counts as latest), then the first loaded: the image gets the strongest exception
        that is still valid, and an expired decision is returned only when nothing valid is left.
        """
        if catalogue.name != benchmark:
            raise ValueError(f"catalogue {catalogue.name!r} given for benchmark {benchmark!r}")
        rules = catalogue.benchmark.rules
        candidates: dict[str, list[Waiver]] = {}
        for w in self.waivers:
            if w.scope.matches(os_family, release, role):
                for sid in w.stig_ids:
                    if sid in rules:
                        candidates.setdefault(sid, []).append(w)

        def rank(w: Waiver) -> tuple[bool, date]:
            return (not w.is_expired(today), w.expires or date.max)

        out: dict[str, WaiverDecision] = {}
        for sid in rules:  # XCCDF document order, so reports list decisions in a stable order
            if sid in candidates:
                best = max(candidates[sid], key=rank)  # max keeps the first of equal ranks
                out[sid] = best.decision(today, self.origin(best.id).file)
        return out


def expired(ws: WaiverSet, today: date) -> list[Waiver]:
    """Waivers past their expiry date (for warnings: their findings count as open again)."""
    return [w for w in ws.waivers if w.is_expired(today)]


def _hint_for(keys: list[str]) -> str | None:
    # the innermost known key wins: scope.release gets the release hint, not the scope one
    return next((_HINTS[k] for k in reversed(keys) if k in _HINTS), None)


def _problems_from(e: pydantic.ValidationError, file: str, entries: list[Any],
                   lines: list[int]) -> list[Problem]:
    out = []
    for d in e.errors():
        loc = list(d["loc"])
        msg = d["msg"].removeprefix("Value error, ")
        line, where = None, ".".join(str(x) for x in loc)
        keys = [str(x) for x in loc if isinstance(x, str)]
        if len(loc) >= 2 and loc[0] == "waivers" and isinstance(loc[1], int):
            i = loc[1]
            entry = entries[i] if i < len(entries) and isinstance(entries[i], dict) else {}
            line = lines[i] if i < len(lines) else None
            # pydantic locates list items by index (stig_ids.1); keep it, it points at the value
            rest = ".".join(str(x) for x in loc[2:])
            name = entry.get("id") if isinstance(entry.get("id"), str) else f"waivers[{i}]"
            where = f"{name}.{rest}" if rest else str(name)
            keys = [str(x) for x in loc[2:] if isinstance(x, str)]
        hint = _hint_for(keys)
        if d["type"] == "extra_forbidden" and len(loc) <= 3:  # an unknown key of a waiver or the file
            model = Waiver if len(loc) == 3 else WaiverFile
            hint = f"known keys: {', '.join(model.model_fields)}"
        elif d["type"] == "missing":
            msg = "required key is missing"
        out.append(Problem(file, line, where, msg, hint=hint))
    return out


def _duplicates(entries: list[Any], file: str, lines: list[int]) -> list[Problem]:
    first: dict[str, int] = {}
    out = []
    for i, entry in enumerate(entries):
        wid = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(wid, str):
            continue
        line = lines[i] if i < len(lines) else None
        if wid in first:
            out.append(Problem(file, line, f"{wid}.id", f"duplicate waiver id (also at line {first[wid]})",
                               hint="waiver ids must be unique across all waiver files"))
        else:
            first[wid] = line or 0
    return out


def load_waivers(path: Path) -> WaiverSet:
    """Load and check one waiver file; all problems are reported together (file, line, key)."""
    file = str(path)
    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
    except FileNotFoundError:
        raise UserError(f"{file}: waiver file not found",
                        hint=f"shipped sets (stig/waivers/): {', '.join(shipped_waiver_sets()) or 'none'}"
                        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ValidationError([Problem(file, mark.line + 1 if mark else None, "",
                                       f"not valid YAML: {e}")]) from None
    if not isinstance(raw, dict) or "waivers" not in raw:
        raise ValidationError([Problem(file, None, "", "expected a mapping with a `waivers:` list",
                                       hint="see imagefactory/stig/waivers.py for the format")])
    entries: list[Any] = raw["waivers"] if isinstance(raw["waivers"], list) else []
    lines = sequence_lines(text, "waivers")
    problems = _duplicates(entries, file, lines)
    try:
        data = WaiverFile.model_validate(raw)
    except pydantic.ValidationError as e:
        problems = _problems_from(e, file, entries, lines) + problems
    if problems:
        raise ValidationError(problems)
    origins = {w.id: Origin(file, lines[i] if i < len(lines) else None) for i, w in enumerate(data.waivers)}
    return WaiverSet(data.waivers, (path,), origins)


def _prefix(stig_id: str) -> str:
    """`UBTU-22-215040` -> `UBTU-22-`: the part that names the benchmark."""
    return stig_id.rsplit("-", 1)[0] + "-"


def validate_waivers(ws: WaiverSet, catalogues: Iterable[Catalogue]) -> None:
    """Check the STIG ids against the XCCDF rules of `catalogues`; raise all problems together.

    - An id that is a rule of one of the benchmarks is checked: if it is CAT I, the waiver needs an
      approver (the DISA rule for CAT I exceptions).
    - An id whose prefix (`UBTU-22-`, `SLEM-05-`, `CNTR-R2-`, taken from the benchmarks' own rule
      ids) belongs to one of the benchmarks but is not a rule of it is an error: a typo, or a rule
      that a new STIG release dropped or renumbered, so the waiver must be re-checked.
    - An id of any other prefix belongs to a benchmark that was not given (a site file may cover
      Ubuntu 24.04 and SLE Micro in one place) and is ignored here; it is checked when validated
      with its own catalogue.
    """
    cats = list(catalogues)
    by_prefix: dict[str, list[Catalogue]] = {}
    for cat in cats:
        for p in {_prefix(s) for s in cat.benchmark.rules}:
            by_prefix.setdefault(p, []).append(cat)
    problems: list[Problem] = []
    for w in ws.waivers:
        at = ws.origin(w.id)
        for sid in w.stig_ids:
            rule = next((c.benchmark.rules[sid] for c in cats if sid in c.benchmark.rules), None)
            if rule is None:
                owners = by_prefix.get(_prefix(sid))
                if owners:
                    bench = owners[0].benchmark
                    problems.append(Problem(
                        at.file, at.line, f"{w.id}.stig_ids",
                        f"{sid} is not a rule of {bench.title} ({bench.release_info})",
                        hint="check the id against the current STIG release; a waiver must be "
                             "re-checked when the release changes"))
            elif rule.cat == 1 and w.approver is None:
                problems.append(Problem(
                    at.file, at.line, f"{w.id}.approver",
                    f"{sid} is CAT I: waiving it needs an approver",
                    hint="add approver (name and role, e.g. the ISSM or AO) and the approved date"))
    if problems:
        raise ValidationError(problems)


def shipped_waiver_sets() -> list[str]:
    """Names of the default waiver sets (`stig/waivers/*.yaml`)."""
    dirs = [catalogue_dir() / "waivers", STIG_DIR / "waivers"]
    return sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")})


def default_waiver_path(name: str) -> Path:
    """`stig/waivers/<name>.yaml`: from `$IMAGEFACTORY_STIG_CATALOGUE` if it has one, else from the
    repository (an overridden catalogue directory under review need not carry its own waivers).
    An unknown name gives the repository path, which does not exist: callers report it (recipe
    validation as a located problem, `load_waivers` as "not found" with the known set names)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UserError(f"bad waiver set name {name!r}",
                        hint="the name of a file under stig/waivers/, without .yaml")
    override = catalogue_dir() / "waivers" / f"{name}.yaml"
    return override if override.is_file() else STIG_DIR / "waivers" / f"{name}.yaml"
