"""imagefactory and OpenSCAP side by side: on which STIG ids the two scanners agree.

OpenSCAP with the packaged SCAP Security Guide content is an independent second opinion on the
image (`stig.openscap`). `compare_scanners` puts its STIG results next to imagefactory's own for
one benchmark; `stig.report` stores the outcome in each benchmark of the report (`comparison`), so
`imagefactory stig report` recomputes it from the recorded results like everything else.

Per STIG id of the benchmark (document order):

- imagefactory's result is the booted one if there is any, else the offline one (the report's
  precedence). Only pass and fail are verdicts; ids without one are not compared (when OpenSCAP
  has a trusted verdict there, they are listed as `openscap_only`).
- OpenSCAP's result is trusted when it is pass or fail: `stig.openscap.to_stig` already turns
  rules whose probes do not work offline into notchecked. Otherwise the id is *not judged by
  OpenSCAP*, by reason: `notchecked` (probe not trusted offline, or not checked), `notapplicable`
  (platform check), `error`, `no_result` (ComplianceAsCode maps rules but OpenSCAP gave the id no
  result: the rules are missing from the content, deselected by the tailoring, or only some of
  them passed) and `no_rule` (ComplianceAsCode maps no SSG rule to the id).
- Both verdicts present: agree or disagree. Every disagreement is listed with both results, the
  evidence, the SSG rules with their results, the waiver if any (a waiver never changes a result:
  unscored rules report their check's outcome) and, where the cause is known, a note.

Known causes (`openscap.KNOWN_DIFFERENCES`) are per datastream, SSG release and rule: content that
checks something other than DISA's check text, and what an offline scan of the image before its
first boot cannot see. A disagreement without a note is one nobody has explained yet - either
scanner may be wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .cac import MAPPED_BENCHMARKS, load_mapping, short_name
from .openscap import KNOWN_DIFFERENCES
from .results import Result, RuleResult, ScanResults, Source, WaiverDecision

NotJudged = Literal["notchecked", "notapplicable", "error", "no_result", "no_rule"]
NOT_JUDGED: tuple[NotJudged, ...] = ("notchecked", "notapplicable", "error", "no_result", "no_rule")
VERDICTS = ("pass", "fail")
_SOURCE_RANK = {"booted": 0, "offline": 1}
_MODE_RANK = {"booted": 0, "offline": 1}



class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Disagreement(_Model):
    stig_id: str
    cat: int
    imagefactory: Result
    imagefactory_source: Source = Field(description="booted or offline")
    imagefactory_evidence: str
    openscap: Result
    openscap_rules: dict[str, str] = Field(description="SSG rule id -> its result")
    openscap_evidence: str
    waiver: str | None = Field(None, description="waiver id and type (it changes no result)")
    note: str | None = Field(None, description="known cause: SSG content bug or offline probe limit")


class ComparisonCounts(_Model):
    compared: int = Field(description="ids with a pass/fail verdict from both scanners")
    agree: int
    disagree: int
    not_judged: int = Field(description="ids with an imagefactory verdict that OpenSCAP could not judge")
    not_judged_by: dict[str, int] = Field(description="reason -> ids")
    openscap_only: int = Field(description="ids with a trusted OpenSCAP verdict but none from imagefactory")


class ScannerComparison(_Model):
    openscap: str = Field(description="OpenSCAP scanner, content and mode compared with")
    counts: ComparisonCounts
    disagreements: tuple[Disagreement, ...]
    agreed: dict[str, Result] = Field(description="STIG id -> the verdict both scanners gave")
    not_judged: dict[str, tuple[str, ...]] = Field(description="reason -> STIG ids")
    openscap_only: dict[str, Result] = Field(description="STIG id -> OpenSCAP's verdict")

    @property
    def agreement(self) -> float | None:
        """Share of compared ids the scanners agree on (None when nothing was compared)."""
        c = self.counts
        return c.agree / c.compared if c.compared else None


def _best(cands: list[tuple[RuleResult, ScanResults]]) -> tuple[RuleResult, ScanResults] | None:
    if not cands:
        return None
    return min(cands, key=lambda c: (_SOURCE_RANK.get(c[0].source, 9), _MODE_RANK.get(c[1].mode, 9)))


def content_release(content: str) -> tuple[str, str] | None:
    """`ssg-ubuntu2204-ds.xml (SSG 0.1.65) profile ...` -> (`ssg-ubuntu2204-ds.xml`, `0.1.65`)."""
    m = re.match(r"(\S+) \(SSG ([^)\s]+)\)", content)
    return (m.group(1), m.group(2)) if m else None


def known_cause(content: tuple[str, str] | None, rules: Mapping[str, str]) -> str | None:
    """The notes of `openscap.KNOWN_DIFFERENCES` for the SSG rules of one STIG id, joined."""
    if content is None:
        return None
    notes = [KNOWN_DIFFERENCES[key] for r in rules if (key := (*content, short_name(r))) in KNOWN_DIFFERENCES]
    return "; ".join(dict.fromkeys(notes)) or None


def compare_scanners(scans: list[ScanResults], *, benchmark: str, cats: Mapping[str, int],
                     waivers: Mapping[str, WaiverDecision] | None = None) -> ScannerComparison | None:
    """Compare imagefactory's and OpenSCAP's results for the STIG ids `cats` (id -> CAT, in
    document order) of one benchmark and target; None when OpenSCAP reported nothing for it."""
    oscap_scans = [s for s in scans if any(r.source == "openscap" for r in s.results.values())]
    if not oscap_scans:
        return None
    waivers = waivers or {}
    mapping = load_mapping(benchmark) if benchmark in MAPPED_BENCHMARKS else None
    ours: dict[str, list[tuple[RuleResult, ScanResults]]] = {}
    theirs: dict[str, list[tuple[RuleResult, ScanResults]]] = {}
    for scan in scans:
        for sid, rr in scan.results.items():
            if rr.source in _SOURCE_RANK:
                ours.setdefault(sid, []).append((rr, scan))
            elif rr.source == "openscap":
                theirs.setdefault(sid, []).append((rr, scan))
    main = min(oscap_scans, key=lambda s: _MODE_RANK.get(s.mode, 9))
    content = content_release(main.content)
    agreed: dict[str, Result] = {}
    disagreements: list[Disagreement] = []
    not_judged: dict[str, list[str]] = {r: [] for r in NOT_JUDGED}
    only: dict[str, Result] = {}
    for sid, cat in cats.items():
        mine, other = _best(ours.get(sid, [])), _best(theirs.get(sid, []))
        if mine is None or mine[0].status not in VERDICTS:
            if other is not None and other[0].status in VERDICTS:
                only[sid] = other[0].status
            continue
        if other is None:
            mapped = mapping is not None and bool(mapping.rules.get(sid))
            not_judged["no_result" if mapped else "no_rule"].append(sid)
            continue
        a, b = mine[0], other[0]
        if b.status not in VERDICTS:
            not_judged[b.status].append(sid)
        elif a.status == b.status:
            agreed[sid] = a.status
        else:
            w = waivers.get(sid)
            rules = dict(b.rules) or dict.fromkeys(mapping.xccdf_rules(sid) if mapping else (),
                                                   "not recorded")
            disagreements.append(Disagreement(
                stig_id=sid, cat=cat, imagefactory=a.status, imagefactory_source=a.source,
                imagefactory_evidence=a.evidence, openscap=b.status, openscap_rules=rules,
                openscap_evidence=b.evidence,
                waiver=f"{w.waiver_id} ({w.type}{', expired' if w.expired else ''})" if w else None,
                note=known_cause(content, rules)))
    counts = ComparisonCounts(
        compared=len(agreed) + len(disagreements), agree=len(agreed), disagree=len(disagreements),
        not_judged=sum(len(v) for v in not_judged.values()),
        not_judged_by={k: len(v) for k, v in not_judged.items()}, openscap_only=len(only))
    return ScannerComparison(
        openscap=f"{main.scanner}, {main.content}, {main.mode}", counts=counts,
        disagreements=tuple(disagreements), agreed=agreed,
        not_judged={k: tuple(v) for k, v in not_judged.items()}, openscap_only=only)
