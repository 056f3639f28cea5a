"""The STIG control catalogue: `stig/<benchmark>.yaml` joined with the DISA XCCDF.

A catalogue file says only how the factory handles a control - its phase, the OS families (or
RKE2 node roles) it applies to, the fix per family and the check. Titles, severities, vuln and
rule ids come from the XCCDF (`control.rule`), so they can never drift from DISA's text. Rules
of the benchmark that are not in the catalogue are simply not automated: `all_rules()` lists
every XCCDF rule with its control or None, for the report layer to mark not applicable/manual.

Format::

    benchmark: ubuntu2204
    controls:
      - id: UBTU-22-213010
        phase: bake                    # bake | first-boot | verify | waive-by-default
        applies_to: [ubuntu, debian]   # OS families; for rke2: server, agent
        reason: ...                    # required unless phase is bake
        fix:                           # per family; `all` = every family in applies_to
          all:
            - {type: sysctl, key: kernel.dmesg_restrict, value: "1"}
        check: [...]                   # optional: defaults to "the fix is in effect"
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import Problem, UserError, ValidationError
from .actions import Action, Check
from .kinds import Kind
from .xccdf import BENCHMARKS, STIG_DIR, Benchmark, Rule, load_benchmark

ENV_CATALOGUE = "IMAGEFACTORY_STIG_CATALOGUE"
Phase = Literal["bake", "first-boot", "verify", "waive-by-default"]
OS_FAMILIES = ("debian", "ubuntu", "sle-micro")
RKE2_ROLES = ("server", "agent")
TARGETS: dict[str, tuple[str, ...]] = {"ubuntu2204": OS_FAMILIES, "ubuntu2404": OS_FAMILIES,
                                       "slmicro5": OS_FAMILIES, "rke2": RKE2_ROLES}


class ControlSpec(BaseModel):
    """One catalogue entry as written in YAML."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    # Five digits too: the Ubuntu 24.04 V1R1 XCCDF has UBTU-24-90890 (V1R5: UBTU-24-909890).
    id: str = Field(pattern=r"^[A-Z0-9]+-[A-Z0-9]+-\d{5,6}$", description="STIG id (XCCDF <version>)")
    phase: Phase
    applies_to: tuple[str, ...] = Field(min_length=1)
    reason: str | None = None
    fix: dict[str, tuple[Action, ...]] = Field(default_factory=dict)
    check: tuple[Check, ...] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ControlSpec:
        extra = sorted(set(self.fix) - set(self.applies_to) - {"all"})
        if extra:
            raise ValueError(f"fix for {', '.join(extra)} which is not in applies_to")
        if self.phase != "bake" and not (self.reason and self.reason.strip()):
            raise ValueError(f"phase {self.phase} needs a reason")
        for fam in self.applies_to:
            if self.phase in ("bake", "verify", "waive-by-default") and not self.checks_for(fam):
                raise ValueError(f"no check for {fam}: give a fix or an explicit check")
        return self

    def fix_for(self, family: str) -> tuple[Kind, ...]:
        return tuple(self.fix.get(family, self.fix.get("all", ())))

    def checks_for(self, family: str) -> tuple[Kind, ...]:
        """The explicit checks, else the family's fix actions used as checks."""
        return tuple(self.check) if self.check is not None else self.fix_for(family)


class CatalogueFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    benchmark: str
    description: str | None = None
    controls: tuple[ControlSpec, ...]


@dataclass(frozen=True)
class Control:
    """A catalogue entry joined with its XCCDF rule (`rule.title`, `.cat`, `.vuln_id`, ...)."""

    spec: ControlSpec
    rule: Rule

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def phase(self) -> str:
        return self.spec.phase

    @property
    def applies_to(self) -> tuple[str, ...]:
        return self.spec.applies_to

    @property
    def reason(self) -> str | None:
        return self.spec.reason

    @property
    def family_generic(self) -> bool:
        """Applied to Debian too (no DISA STIG): check and fix are generic apt/PAM/sshd/... ."""
        return "debian" in self.spec.applies_to

    @property
    def automated(self) -> bool:
        """Baked with a fix and checked automatically."""
        return self.phase == "bake" and any(self.fix_for(f) for f in self.applies_to)

    def fix_for(self, family: str) -> tuple[Kind, ...]:
        return self.spec.fix_for(family)

    def checks_for(self, family: str) -> tuple[Kind, ...]:
        return self.spec.checks_for(family)


@dataclass(frozen=True)
class Catalogue:
    name: str
    path: Path
    benchmark: Benchmark
    controls: tuple[Control, ...]

    def __iter__(self) -> Iterator[Control]:
        return iter(self.controls)

    def get(self, stig_id: str) -> Control | None:
        return next((c for c in self.controls if c.id == stig_id), None)

    def controls_for(self, family: str) -> list[Control]:
        """Controls whose `applies_to` includes `family` (an OS family, or an RKE2 role)."""
        return [c for c in self.controls if family in c.applies_to]

    def all_rules(self) -> list[tuple[Rule, Control | None]]:
        """Every XCCDF rule of the benchmark in document order, with its control or None."""
        by_id = {c.id: c for c in self.controls}
        return [(r, by_id.get(r.stig_id)) for r in self.benchmark.rules.values()]


def catalogue_dir() -> Path:
    """`$IMAGEFACTORY_STIG_CATALOGUE`, else the repository's top-level `stig/`."""
    env = os.environ.get(ENV_CATALOGUE)
    return Path(env) if env else STIG_DIR


def sequence_lines(text: str, key: str) -> list[int]:
    """Line number of each entry of the top-level `key:` sequence (for error messages)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return []
    if not isinstance(node, yaml.MappingNode):
        return []
    for k, v in node.value:
        if k.value == key and isinstance(v, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in v.value]
    return []


def _problems_from(e: pydantic.ValidationError, file: str, raw: dict[str, Any],
                   lines: list[int]) -> list[Problem]:
    out = []
    controls: list[Any] = raw["controls"] if isinstance(raw.get("controls"), list) else []
    for d in e.errors():
        loc = list(d["loc"])
        line, where = None, ".".join(str(x) for x in loc)
        if len(loc) >= 2 and loc[0] == "controls" and isinstance(loc[1], int):
            i = loc[1]
            entry = controls[i] if i < len(controls) and isinstance(controls[i], dict) else {}
            line = lines[i] if i < len(lines) else None
            where = f"{entry.get('id', f'controls[{i}]')}." + ".".join(str(x) for x in loc[2:])
        out.append(Problem(file, line, where.rstrip("."), d["msg"]))
    return out


def parse_catalogue(path: Path, name: str | None = None) -> Catalogue:
    """Load and validate one catalogue file; all problems are reported together."""
    name = name or path.stem
    file = str(path)
    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
    except FileNotFoundError:
        raise UserError(f"{file}: STIG catalogue not found",
                        hint=f"catalogues live in the repository's stig/ directory (or ${ENV_CATALOGUE})"
                        ) from None
    except yaml.YAMLError as e:
        raise ValidationError([Problem(file, None, "", f"not valid YAML: {e}")]) from None
    if not isinstance(raw, dict):
        raise ValidationError([Problem(file, None, "", "expected a mapping with benchmark and controls")])
    lines = sequence_lines(text, "controls")
    try:
        data = CatalogueFile.model_validate(raw)
    except pydantic.ValidationError as e:
        raise ValidationError(_problems_from(e, file, raw, lines)) from None
    problems = []
    if data.benchmark != name or name not in BENCHMARKS:
        problems.append(Problem(file, None, "benchmark",
                                f"{data.benchmark!r} does not match the file name {name!r}",
                                hint=f"known benchmarks: {', '.join(BENCHMARKS)}"))
        raise ValidationError(problems)
    bench = load_benchmark(name)
    seen: set[str] = set()
    controls = []
    for i, spec in enumerate(data.controls):
        line = lines[i] if i < len(lines) else None
        rule = bench.rules.get(spec.id)
        if rule is None:
            problems.append(Problem(file, line, spec.id,
                                    f"not a rule of {bench.title} ({bench.release_info})",
                                    hint="ids are the XCCDF <version> values, e.g. UBTU-22-211015"))
        if spec.id in seen:
            problems.append(Problem(file, line, spec.id, "duplicate control"))
        seen.add(spec.id)
        bad_targets = sorted(set(spec.applies_to) - set(TARGETS[name]))
        if bad_targets:
            problems.append(Problem(file, line, f"{spec.id}.applies_to", f"unknown {', '.join(bad_targets)}",
                                    hint=f"one of {', '.join(TARGETS[name])}"))
        if rule is not None:
            controls.append(Control(spec, rule))
    if problems:
        raise ValidationError(problems)
    return Catalogue(name, path, bench, tuple(controls))


@lru_cache(maxsize=16)
def _load_cached(path: Path, name: str, reference: str) -> Catalogue:
    return parse_catalogue(path, name)


def load_catalogue(name: str) -> Catalogue:
    """The catalogue `stig/<name>.yaml` (name as in `BENCHMARKS`), validated and joined."""
    if name not in BENCHMARKS:
        raise UserError(f"unknown STIG benchmark {name!r}", hint=f"one of: {', '.join(BENCHMARKS)}")
    from .xccdf import reference_dir

    return _load_cached((catalogue_dir() / f"{name}.yaml").resolve(), name, str(reference_dir()))
