"""Raw STIG results exchanged between the layers, as plain JSON-able data.

- The booted test suite (`testing/suites/test_stig.py`) and the offline bake check write
  `ScanResults` (one per benchmark and target) to `stig-results.json`.
- OpenSCAP results are mapped to STIG ids and arrive as `ScanResults` with source "openscap".
- Waivers are resolved to `WaiverDecision`s per STIG id (`stig.waivers`).
- `stig.report` joins all of it with the XCCDF rules into the report, checklists and the gate.

Result statuses follow OpenSCAP's vocabulary (narrowed): pass, fail, error, notapplicable,
notchecked. A waiver never changes a result; it changes whether an open result counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

Result = Literal["pass", "fail", "error", "notapplicable", "notchecked"]
RESULTS: tuple[str, ...] = ("pass", "fail", "error", "notapplicable", "notchecked")
Source = Literal["booted", "offline", "openscap", "catalogue"]
WaiverType = Literal["false-positive", "operational-requirement", "risk-accepted", "not-applicable",
                     "compensating"]


@dataclass(frozen=True)
class RuleResult:
    status: Result
    evidence: str
    source: Source
    # OpenSCAP: the SSG rules folded into this STIG id -> each one's result as read (e.g. "pass",
    # "fail (unscored by tailoring)", "pass, not trusted offline (OVAL probes: dpkginfo)")
    rules: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "evidence": self.evidence, "source": self.source}
        if self.rules:  # only OpenSCAP's results have rules; older files have none
            out["rules"] = dict(self.rules)
        return out


@dataclass(frozen=True)
class ScanResults:
    """Results for one benchmark on one target (OS family such as `debian`, or RKE2 role)."""

    benchmark: str  # catalogue name: ubuntu2204 | slmicro5 | rke2 | ...
    target: str  # debian | ubuntu | sle-micro | server | agent
    mode: Literal["booted", "offline"]
    results: dict[str, RuleResult] = field(default_factory=dict)  # STIG id -> result
    scanner: str = "imagefactory"  # e.g. "imagefactory 0.1.0" or "OpenSCAP 1.3.7"
    content: str = ""  # e.g. "ubuntu2204 V2R8" or "ssg-ubuntu2204-ds.xml 0.1.65 (profile ...)"

    def to_json(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "target": self.target, "mode": self.mode,
                "scanner": self.scanner, "content": self.content,
                "results": {k: v.to_json() for k, v in self.results.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScanResults:
        return cls(data["benchmark"], data["target"], data["mode"],
                   {k: RuleResult(**v) for k, v in data["results"].items()},
                   data.get("scanner", "imagefactory"), data.get("content", ""))


def write_scans(path: Path, scans: list[ScanResults]) -> None:
    from ..fsutil import atomic_write

    atomic_write(path, json.dumps({"scans": [s.to_json() for s in scans]}, indent=1), mode=0o644)


def read_scans(path: Path) -> list[ScanResults]:
    data = json.loads(path.read_text())
    return [ScanResults.from_json(s) for s in data["scans"]]


@dataclass(frozen=True)
class WaiverDecision:
    """A waiver as it applies to one STIG id of one image (scope already matched)."""

    waiver_id: str
    type: WaiverType
    justification: str
    approver: str | None
    approved: date | None
    expires: date | None
    expired: bool  # expired waivers resurface: the result counts as open again
    poam_id: str | None = None
    compensating_controls: tuple[str, ...] = ()
    source: str = ""  # file the waiver came from

    def comment(self) -> str:
        """Text for checklist COMMENTS and the report's waiver column."""
        parts = [f"Waiver {self.waiver_id} ({self.type})"]
        if self.expired:
            parts.append(f"EXPIRED on {self.expires} - the finding counts as open")
        elif self.expires:
            parts.append(f"expires {self.expires}")
        if self.approver:
            parts.append(f"approved by {self.approver}" + (f" on {self.approved}" if self.approved else ""))
        if self.poam_id:
            parts.append(f"POA&M {self.poam_id}")
        text = "; ".join(parts) + f": {self.justification.strip()}"
        if self.compensating_controls:
            text += " Compensating controls: " + "; ".join(self.compensating_controls) + "."
        return text
