"""DISA XCCDF benchmarks: the source of truth for STIG ids, titles, severities and check text.

The four benchmarks the factory knows ship in the repository at `stig/benchmarks/` (public DISA
documents), so a clean clone needs nothing else; `IMAGEFACTORY_STIG_REFERENCE` points the loader
at another directory (e.g. a newer release under review).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import UserError

NS = {"x": "http://checklists.nist.gov/xccdf/1.1"}
ENV_REFERENCE = "IMAGEFACTORY_STIG_REFERENCE"
# The repository root: parent of the `imagefactory` package directory.
REPO = Path(__file__).resolve().parent.parent.parent
STIG_DIR = REPO / "stig"

BENCHMARKS: dict[str, str] = {
    "ubuntu2204": "disa-stig-ubuntu2204-v2r8-xccdf-manual.xml",
    "ubuntu2404": "U_CAN_Ubuntu_24-04_LTS_STIG_V1R1.xml",
    "slmicro5": "disa-stig-slmicro5-v1r4-xccdf-manual.xml",
    "rke2": "U_RGS_RKE2_STIG_V2R1.xml",
}
SEVERITY_CAT = {"high": 1, "medium": 2, "low": 3}


@dataclass(frozen=True)
class Rule:
    """One STIG requirement (an XCCDF Group with its single Rule)."""

    stig_id: str  # <version>, e.g. UBTU-22-211015
    vuln_id: str  # Group id, e.g. V-260469
    rule_id: str  # Rule id, e.g. SV-260469r991589_rule
    severity: str  # high | medium | low
    cat: int  # 1 | 2 | 3
    title: str
    check_content: str
    fixtext: str
    ccis: tuple[str, ...]


@dataclass(frozen=True)
class Benchmark:
    id: str
    title: str
    version: str
    release_info: str  # e.g. "Release: 8 Benchmark Date: 01 Apr 2026"
    rules: dict[str, Rule]  # keyed by STIG id, in document order

    def count_by_cat(self) -> dict[int, int]:
        out = {1: 0, 2: 0, 3: 0}
        for r in self.rules.values():
            out[r.cat] += 1
        return out


def reference_dir() -> Path:
    """Where the XCCDF files are: `$IMAGEFACTORY_STIG_REFERENCE`, else `<repo>/stig/benchmarks`."""
    env = os.environ.get(ENV_REFERENCE)
    return Path(env) if env else STIG_DIR / "benchmarks"


def benchmark_path(name: str) -> Path:
    if name not in BENCHMARKS:
        raise UserError(f"unknown STIG benchmark {name!r}", hint=f"one of: {', '.join(BENCHMARKS)}")
    return reference_dir() / BENCHMARKS[name]


def _text(el: ET.Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def parse_benchmark(path: Path) -> Benchmark:
    """Parse one DISA XCCDF 1.1 file (uncached; see `load_benchmark`)."""
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise UserError(f"{path}: STIG benchmark file not found",
                        hint=f"set {ENV_REFERENCE} to the directory holding the DISA XCCDF files") from None
    except ET.ParseError as e:
        raise UserError(f"{path}: not valid XML: {e}") from None
    root = tree.getroot()
    if root.tag != f"{{{NS['x']}}}Benchmark":
        raise UserError(f"{path}: not an XCCDF 1.1 Benchmark (root element {root.tag})")
    release = next((_text(p) for p in root.findall("x:plain-text", NS) if p.get("id") == "release-info"), "")
    rules: dict[str, Rule] = {}
    for group in root.iter(f"{{{NS['x']}}}Group"):
        for rule in group.findall("x:Rule", NS):
            severity = rule.get("severity", "medium")
            if severity not in SEVERITY_CAT:
                raise UserError(f"{path}: {rule.get('id')}: unknown severity {severity!r}")
            check = rule.find("x:check/x:check-content", NS)
            r = Rule(
                stig_id=_text(rule.find("x:version", NS)),
                vuln_id=group.get("id", ""),
                rule_id=rule.get("id", ""),
                severity=severity,
                cat=SEVERITY_CAT[severity],
                title=_text(rule.find("x:title", NS)),
                check_content=_text(check),
                fixtext=_text(rule.find("x:fixtext", NS)),
                ccis=tuple(_text(i) for i in rule.findall("x:ident", NS)
                           if i.get("system") == "http://cyber.mil/cci"),
            )
            if r.stig_id in rules:
                raise UserError(f"{path}: duplicate STIG id {r.stig_id}")
            rules[r.stig_id] = r
    return Benchmark(
        id=root.get("id", ""),
        title=_text(root.find("x:title", NS)),
        version=_text(root.find("x:version", NS)),
        release_info=release,
        rules=rules,
    )


@lru_cache(maxsize=16)
def _load_cached(path: Path) -> Benchmark:
    return parse_benchmark(path)


def load_benchmark(path: Path | str) -> Benchmark:
    """Parse an XCCDF file, or a short name from `BENCHMARKS` (cached per resolved path: the
    files are ~650 kB, and the name is resolved first so `IMAGEFACTORY_STIG_REFERENCE` is honoured)."""
    p = benchmark_path(path) if isinstance(path, str) and path in BENCHMARKS else Path(path)
    return _load_cached(p.resolve())
