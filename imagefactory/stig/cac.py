"""ComplianceAsCode's STIG control files: which SSG rules implement which STIG id.

OpenSCAP reports results per SCAP Security Guide rule (`xccdf_org.ssgproject.content_rule_<short>`),
the factory reports per DISA STIG id. ComplianceAsCode maintains the join in
`controls/stig_<product>.yml`; copies live in the repository at `stig/cac/` (a clean clone needs
nothing else). Each control lists rule short names and, mixed in, variable selections written
`var_name=value` - those tune a rule's expected value and are kept apart as `variables`.

A STIG id is met only when *all* of its rules pass (ComplianceAsCode's semantics), which is
what `openscap.to_stig` implements on top of this mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from .xccdf import STIG_DIR

CAC_DIR = STIG_DIR / "cac"
RULE_PREFIX = "xccdf_org.ssgproject.content_rule_"
VALUE_PREFIX = "xccdf_org.ssgproject.content_value_"
# Benchmarks (catalogue names) ComplianceAsCode has a STIG control file for; rke2 has none.
MAPPED_BENCHMARKS = ("ubuntu2204", "ubuntu2404", "slmicro5")


def rule_id(short: str) -> str:
    """`disable_ctrlaltdel_reboot` -> `xccdf_org.ssgproject.content_rule_disable_ctrlaltdel_reboot`."""
    return short if short.startswith(RULE_PREFIX) else RULE_PREFIX + short


def value_id(short: str) -> str:
    """`var_accounts_tmout` -> `xccdf_org.ssgproject.content_value_var_accounts_tmout`."""
    return short if short.startswith(VALUE_PREFIX) else VALUE_PREFIX + short


def short_name(xccdf_id: str) -> str:
    """The inverse of `rule_id` (ids of other vendors are returned unchanged)."""
    return xccdf_id.removeprefix(RULE_PREFIX)


@dataclass(frozen=True)
class CacMapping:
    benchmark: str  # catalogue name, e.g. ubuntu2204
    policy_version: str  # the DISA release ComplianceAsCode mapped, e.g. V2R8
    rules: dict[str, tuple[str, ...]]  # STIG id -> rule short names, in file order
    variables: dict[str, tuple[tuple[str, str], ...]]  # STIG id -> (variable, selection)
    by_rule: dict[str, tuple[str, ...]]  # rule short name -> STIG ids
    source: Path

    def xccdf_rules(self, stig_id: str) -> tuple[str, ...]:
        """Full XCCDF rule ids of one STIG id (empty if ComplianceAsCode maps none)."""
        return tuple(rule_id(r) for r in self.rules.get(stig_id, ()))

    def stig_ids(self, xccdf_or_short: str) -> tuple[str, ...]:
        return self.by_rule.get(short_name(xccdf_or_short), ())

    def all_rules(self) -> tuple[str, ...]:
        """Every full XCCDF rule id the mapping names, once, in file order."""
        return tuple(rule_id(r) for r in dict.fromkeys(r for rules in self.rules.values() for r in rules))


def mapping_path(benchmark: str, directory: Path | None = None) -> Path:
    if benchmark not in MAPPED_BENCHMARKS:
        raise UserError(f"no ComplianceAsCode STIG mapping for benchmark {benchmark!r}",
                        hint=f"mapped benchmarks: {', '.join(MAPPED_BENCHMARKS)}")
    return (directory or CAC_DIR) / f"stig_{benchmark}.yml"


def parse_mapping(path: Path, benchmark: str) -> CacMapping:
    """Parse one control file (uncached; see `load_mapping`)."""
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: ComplianceAsCode STIG mapping not found",
                        hint="the repository ships them in stig/cac/") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    controls = raw.get("controls") if isinstance(raw, dict) else None
    if not isinstance(controls, list):
        raise UserError(f"{path}: expected a mapping with a 'controls' list")
    rules: dict[str, tuple[str, ...]] = {}
    variables: dict[str, tuple[tuple[str, str], ...]] = {}
    by_rule: dict[str, list[str]] = {}
    for i, c in enumerate(controls):
        if not isinstance(c, dict) or not isinstance(c.get("id"), str):
            raise UserError(f"{path}: controls[{i}]: expected a mapping with an 'id'")
        stig_id: str = c["id"]
        if stig_id in rules:
            raise UserError(f"{path}: duplicate STIG id {stig_id}")
        entries = c.get("rules") or []  # SLEM-05-653060 has an empty list
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise UserError(f"{path}: {stig_id}: 'rules' must be a list of strings")
        names = tuple(e for e in entries if "=" not in e)
        rules[stig_id] = names
        pairs = (e.partition("=") for e in entries if "=" in e)
        variables[stig_id] = tuple((k, v) for k, _, v in pairs)
        for n in names:
            by_rule.setdefault(n, []).append(stig_id)
    return CacMapping(benchmark=benchmark, policy_version=str(raw.get("version", "")), rules=rules,
                      variables=variables, by_rule={k: tuple(v) for k, v in by_rule.items()}, source=path)


@lru_cache(maxsize=8)
def _load_cached(path: Path, benchmark: str) -> CacMapping:
    return parse_mapping(path, benchmark)


def load_mapping(benchmark: str, directory: Path | None = None) -> CacMapping:
    """The mapping for a catalogue benchmark name, from `stig/cac/stig_<benchmark>.yml` (cached)."""
    return _load_cached(mapping_path(benchmark, directory).resolve(), benchmark)
