"""The STIG report of one image: every XCCDF rule with its result, waiver and checklist status.

`build_report` joins the raw `ScanResults` (ours booted/offline, OpenSCAP's) with the catalogue,
the recipe's tailoring (`Selection`) and the resolved waivers. The report is a frozen pydantic
model that round-trips through `stig-report.json`; `write_reports` also renders the HTML page
and the STIG Viewer checklists (`stig.checklist`), and `diff_reports` gives the delta between
two images.

Decisions (the rules users see in the report):

- **Every rule, once.** One row per XCCDF rule of the benchmark, in document order - nothing is
  dropped. Results for STIG ids the benchmark does not have are listed in `notes`.
- **Which result wins.** Several scans may report the same rule: ours on the booted VM, then our
  offline check of the image root, then OpenSCAP (offline probes are unreliable, see the STIG
  reference). Within a source a booted scan beats an offline one. The others' results are kept in
  the evidence as `also: ...` lines; when OpenSCAP says fail/error but our check passes, the
  evidence says so explicitly (`note: OpenSCAP disagrees`) - ours stays authoritative because its
  check follows DISA's check text, while OpenSCAP's SSG rules often check a stricter or different
  setting. OpenSCAP alone never decides a rule that has a control in scope: a first-boot or
  verify control without our result keeps its reason (not checked), with OpenSCAP's result in the
  evidence - e.g. FIPS mode, set per deployment, fails in every image scanned offline. It decides
  only rules imagefactory does not automate.
- **imagefactory vs OpenSCAP.** Each benchmark carries a `comparison` (`stig.compare`): ids
  both scanners judged, agreements, every disagreement with both sides' evidence, and the ids
  OpenSCAP could not judge, by reason.
- **Rules without any result.** On a `debian` target (no DISA STIG for Debian) only the
  family-generic controls (`applies_to` includes debian) are in scope: every other rule - with or
  without a control - is `notapplicable` with an explanation. On other targets a rule without a
  control is `notchecked` ("not automated: manual review", checklist Not_Reviewed), a control for
  other targets (e.g. a server-only RKE2 control on an agent) is `notapplicable`, and a control
  in scope without a result (first-boot, verify without a booted scan) is `notchecked` with the
  phase's reason.
- **Status and `open`.** pass -> NotAFinding, notapplicable -> Not_Applicable, notchecked ->
  Not_Reviewed; fail/error -> Open and open, unless a current waiver covers it: not-applicable ->
  Not_Applicable, false-positive -> NotAFinding, the other types keep Open in the checklist (the
  finding exists; the waiver in COMMENTS documents the accepted risk) but do not count as open.
  An expired waiver (`expired`, or `expires` before `today`) and a CAT I waiver without an
  approver do not count: the finding is open. A not-applicable waiver also turns a Not_Reviewed
  manual rule into Not_Applicable. A waiver never changes the `result`.
- **Tailoring and waive-by-default do not waive.** A control disabled by the recipe, or a
  waive-by-default control not enabled, is still checked and its failure is open unless a waiver
  covers it; COMMENTS carry the tailoring reason so the waiver file can be written from it.
- **Scans nobody selected** (benchmark/target not in `selections`) get an implicit selection
  without tailoring instead of being dropped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

import jinja2
import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import __version__
from ..errors import UserError
from ..fsutil import atomic_write
from .catalogue import Control, load_catalogue
from .checklist import checklist_name, to_ckl, to_cklb, truncate
from .compare import ScannerComparison, compare_scanners
from .results import RESULTS, Result, RuleResult, ScanResults, Source, WaiverDecision
from .xccdf import Rule

SCHEMA_VERSION = 1
Status = Literal["NotAFinding", "Open", "Not_Applicable", "Not_Reviewed"]
STATUSES: tuple[Status, ...] = ("NotAFinding", "Open", "Not_Applicable", "Not_Reviewed")
CATS = (1, 2, 3)
CAT_NAMES = {1: "CAT I", 2: "CAT II", 3: "CAT III"}
FINDING: tuple[str, ...] = ("fail", "error")  # results that are findings (checklist Open)
_BASE_STATUS: dict[str, Status] = {"pass": "NotAFinding", "fail": "Open", "error": "Open",
                                   "notapplicable": "Not_Applicable", "notchecked": "Not_Reviewed"}
# Lower wins: our own checks before OpenSCAP (offline OpenSCAP probes read the build host).
_SOURCE_RANK = {"booted": 0, "offline": 1, "openscap": 2, "catalogue": 3}
_MODE_RANK = {"booted": 0, "offline": 1}
ALSO_EVIDENCE = 300  # characters of a losing scan's evidence kept in the winner's evidence
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
REPORT_JSON, REPORT_HTML, CHECKLIST_DIR, DIFF_JSON = ("stig-report.json", "stig-report.html", "checklists",
                                                      "stig-diff.json")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ImageInfo(_Model):
    name: str
    recipe: str
    build_id: str
    digest: str = Field(description="sha256 of the image file")
    os_family: str
    os_release: str
    kernel: str | None = None
    created: str


class Selection(_Model):
    """One benchmark selected for the image, with the recipe's tailoring."""

    benchmark: str = Field(description="catalogue name, e.g. ubuntu2204")
    target: str = Field(description="OS family (debian, ubuntu, sle-micro) or RKE2 role (server, agent)")
    disabled: dict[str, str] = Field(default_factory=dict, description="STIG id -> reason: fix not applied")
    enabled: tuple[str, ...] = Field((), description="waive-by-default STIG ids applied anyway")

    @property
    def key(self) -> str:
        return f"{self.benchmark}-{self.target}"


class ScannerInfo(_Model):
    name: str
    version: str
    content: str
    mode: Literal["booted", "offline"]
    artifact: str | None = Field(None, description="relative path of the raw output, e.g. an ARF file")


class Row(_Model):
    """One XCCDF rule: ids and text from DISA, result and status from the scans and waivers."""

    stig_id: str
    vuln_id: str
    rule_id: str
    cat: int
    severity: str
    title: str
    phase: str = Field(description="the control's phase, or 'manual' without a control")
    result: Result
    evidence: str
    source: Source
    waiver: WaiverDecision | None = None
    status: Status
    open: bool = Field(description="counts against the gate")
    comments: str = Field("", description="checklist COMMENTS: phase, tailoring, waiver")
    tailored: str | None = Field(None, description="reason the recipe disabled the fix")
    check_content: str = ""
    fixtext: str = ""
    ccis: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        """A finding covered by a current waiver (listed as waived, not counted as open)."""
        return self.result in FINDING and self.waiver is not None and not self.open


class Counts(_Model):
    total: int
    results: dict[int, dict[str, int]] = Field(description="CAT -> result -> rules")
    statuses: dict[int, dict[str, int]] = Field(description="CAT -> checklist status -> rules")
    open: dict[int, int] = Field(description="CAT -> open findings")
    waived: int = Field(description="findings accepted by a current waiver")
    expired: int = Field(description="findings whose waiver has expired (open again)")

    @classmethod
    def of(cls, rows: Iterable[Row]) -> Counts:
        results = {c: dict.fromkeys(RESULTS, 0) for c in CATS}
        statuses = {c: dict.fromkeys(STATUSES, 0) for c in CATS}
        open_ = dict.fromkeys(CATS, 0)
        total = waived = expired = 0
        for r in rows:
            total += 1
            results[r.cat][r.result] += 1
            statuses[r.cat][r.status] += 1
            open_[r.cat] += r.open
            waived += r.accepted
            expired += r.result in FINDING and r.waiver is not None and r.waiver.expired
        return cls(total=total, results=results, statuses=statuses, open=open_, waived=waived,
                   expired=expired)


class BenchmarkReport(_Model):
    benchmark: str
    target: str
    benchmark_id: str
    title: str
    version: str
    release_info: str
    counts: Counts
    rows: tuple[Row, ...]
    waived: tuple[Row, ...] = Field(description="rows with a waiver, expired ones included")
    notes: tuple[str, ...] = ()
    comparison: ScannerComparison | None = Field(
        None, description="imagefactory vs OpenSCAP (stig.compare); None when OpenSCAP reported nothing")

    @property
    def key(self) -> str:
        return f"{self.benchmark}-{self.target}"

    @property
    def release(self) -> str:
        return f"V{self.version} {self.release_info}".strip()


class GatePolicy(_Model):
    """Most open findings allowed per CAT; None = no limit. Default: no open CAT I."""

    max_open: dict[int, int | None] = Field(default_factory=lambda: {1: 0, 2: None, 3: None})

    @field_validator("max_open")
    @classmethod
    def _cats(cls, v: dict[int, int | None]) -> dict[int, int | None]:
        bad = sorted(set(v) - set(CATS))
        if bad:
            raise ValueError(f"unknown CAT {bad}: use 1, 2 or 3")
        if any(n is not None and n < 0 for n in v.values()):
            raise ValueError("limits must be >= 0 (or null for no limit)")
        return {c: v.get(c) for c in CATS}


class GateResult(_Model):
    passed: bool
    open_by_cat: dict[int, int]
    reasons: list[str]
    max_open: dict[int, int | None] = Field(default_factory=dict, description="the policy applied")


class StigReport(_Model):
    schema_version: int = SCHEMA_VERSION
    generator: str = f"imagefactory {__version__}"
    generated: str
    image: ImageInfo
    scanners: tuple[ScannerInfo, ...]
    benchmarks: tuple[BenchmarkReport, ...]
    totals: Counts
    gate: GateResult | None = None

    def with_gate(self, gate: GateResult | GatePolicy | None = None) -> StigReport:
        """A copy holding `gate`: a result from `evaluate_gate`, or a policy (default) to evaluate."""
        if not isinstance(gate, GateResult):
            gate = evaluate_gate(self, gate or GatePolicy())
        return self.model_copy(update={"gate": gate})

    def to_json(self) -> str:
        return self.model_dump_json(indent=1) + "\n"

    def summary(self) -> dict[str, object]:
        """A few numbers for the image manifest (the full report is stig-report.json)."""
        return {
            "gate": None if self.gate is None else {"passed": self.gate.passed,
                                                    "open_by_cat": self.gate.open_by_cat},
            "benchmarks": [{"benchmark": b.benchmark, "target": b.target, "release": b.release,
                            "rules": b.counts.total, "open": b.counts.open, "waived": b.counts.waived,
                            "results": {res: sum(b.counts.results[c][res] for c in CATS) for res in RESULTS},
                            "vs_openscap": b.comparison.counts.model_dump() if b.comparison else None}
                           for b in self.benchmarks],
            "report": REPORT_JSON,
        }


# --- building --------------------------------------------------------------------------------


def _current(w: WaiverDecision | None, today: date) -> WaiverDecision | None:
    """The waiver with `expired` also set when its date has passed (the decision may be stale)."""
    if w is not None and not w.expired and w.expires is not None and w.expires < today:
        return dataclasses.replace(w, expired=True)
    return w


def _oneline(text: str, limit: int = ALSO_EVIDENCE) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _pick(cands: list[tuple[RuleResult, ScanResults]]) -> tuple[Result, Source, str]:
    """The winning result, with the other scans' results appended to its evidence."""
    order = sorted(range(len(cands)), key=lambda i: (_SOURCE_RANK.get(cands[i][0].source, 9),
                                                     _MODE_RANK.get(cands[i][1].mode, 9), i))
    best = cands[order[0]][0]
    lines = [best.evidence.rstrip()] if best.evidence.strip() else []
    for i in order[1:]:
        rr, other = cands[i]
        if best.source != "openscap" and rr.source == "openscap" and rr.status in FINDING \
                and best.status == "pass":
            lines.append(f"note: OpenSCAP disagrees ({rr.status}); imagefactory's check of DISA's "
                         "check text is authoritative")
        lines.append(_also(rr, other))
    return best.status, best.source, "\n".join(lines)


def _also(rr: RuleResult, scan: ScanResults) -> str:
    return (f"also: {rr.source} ({scan.scanner}, {scan.mode}): {rr.status}"
            + (f" ({_oneline(rr.evidence)})" if rr.evidence.strip() else ""))


def _missing(control: Control | None, sel: Selection, image: ImageInfo, title: str) -> tuple[Result, str]:
    """Result and evidence for a rule no scan reported (see the module docstring)."""
    in_scope = control is not None and sel.target in control.applies_to
    if not in_scope and sel.target == "debian":
        release = f" {image.os_release}" if image.os_family == "debian" and image.os_release else ""
        what = "rule has no control" if control is None else "control is not family-generic"
        return "notapplicable", (f"no DISA STIG for Debian{release}: only the family-generic {title} "
                                 f"controls apply, and this {what}")
    if control is None:
        return "notchecked", "not automated: manual review"
    if not in_scope:
        return "notapplicable", (f"not applicable to {sel.target}: the control applies to "
                                 f"{', '.join(control.applies_to)} only")
    if control.phase == "first-boot":
        return "notchecked", f"not checked: first-boot control, set per deployment ({control.reason})"
    if control.phase == "verify":
        return "notchecked", f"not checked: verified on the booted VM only ({control.reason})"
    return "notchecked", "not checked: no scan reported a result for this control"


def _phase_note(control: Control | None, sel: Selection) -> str | None:
    if control is None:
        return None if sel.target == "debian" else "Manual: not automated by imagefactory; review by hand."
    if sel.target not in control.applies_to:
        return None
    reason = f": {control.reason.strip()}" if control.reason else ""
    if control.phase == "bake":
        # A disabled control's COMMENTS carry the tailoring reason instead of "fixed in the image".
        return f"bake{reason}" if control.id in sel.disabled else f"bake: fixed in the image{reason}"
    if control.phase == "first-boot":
        return f"first-boot: set per deployment{reason}"
    if control.phase == "verify":
        return f"verify: checked on the booted VM{reason}"
    if control.id in sel.enabled:
        return f"waive-by-default, enabled by the recipe (fix applied){reason}"
    return f"waive-by-default: fix not applied unless the recipe enables it{reason}"


def _status(result: Result, waiver: WaiverDecision | None, cat: int) -> tuple[Status, bool, str | None]:
    """(checklist status, open, note for COMMENTS) - the waiver rules of the module docstring."""
    base = _BASE_STATUS[result]
    if result not in FINDING:
        if waiver is not None and result == "notchecked" and waiver.type == "not-applicable" \
                and not waiver.expired:
            return "Not_Applicable", False, None
        return base, False, None
    if waiver is None or waiver.expired:
        return "Open", True, None
    if cat == 1 and not waiver.approver:
        return "Open", True, "CAT I waiver without an approver: not accepted, the finding counts as open"
    if waiver.type == "not-applicable":
        return "Not_Applicable", False, None
    if waiver.type == "false-positive":
        return "NotAFinding", False, None
    return "Open", False, ("Accepted by waiver: the finding stays Open in the checklist, "
                           "not counted by the gate")


def _row(rule: Rule, control: Control | None, sel: Selection, image: ImageInfo, title: str,
         cands: list[tuple[RuleResult, ScanResults]], waiver: WaiverDecision | None) -> Row:
    in_scope = control is not None and sel.target in control.applies_to
    if cands and (not in_scope or any(rr.source != "openscap" for rr, _ in cands)):
        result, source, evidence = _pick(cands)
    else:  # a control of ours without our result keeps its reason; OpenSCAP's word is advisory
        (result, evidence), source = _missing(control, sel, image, title), "catalogue"
        evidence = "\n".join([evidence] + [_also(rr, scan) for rr, scan in cands])
    status, open_, note = _status(result, waiver, rule.cat)
    tailored = sel.disabled.get(rule.stig_id)
    comments = [_phase_note(control, sel)]
    if tailored:
        comments.append(f"Disabled by the recipe tailoring (fix not applied): {tailored}")
    if waiver is not None:
        comments += [waiver.comment(), note]
    return Row(stig_id=rule.stig_id, vuln_id=rule.vuln_id, rule_id=rule.rule_id, cat=rule.cat,
               severity=rule.severity, title=rule.title,
               phase=control.phase if control is not None else "manual", result=result, evidence=evidence,
               source=source, waiver=waiver, status=status, open=open_,
               comments="\n".join(c for c in comments if c), tailored=tailored,
               check_content=rule.check_content, fixtext=rule.fixtext, ccis=rule.ccis)


def _benchmark_report(sel: Selection, scans: list[ScanResults], image: ImageInfo,
                      waivers: dict[str, WaiverDecision], today: date) -> BenchmarkReport:
    cat = load_catalogue(sel.benchmark)
    bench = cat.benchmark
    cands: dict[str, list[tuple[RuleResult, ScanResults]]] = {}
    for scan in scans:
        for sid, rr in scan.results.items():
            cands.setdefault(sid, []).append((rr, scan))
    current = {rule.stig_id: w for rule, _ in cat.all_rules()
               if (w := _current(waivers.get(rule.stig_id), today)) is not None}
    rows = tuple(_row(rule, control, sel, image, bench.title, cands.get(rule.stig_id, []),
                      current.get(rule.stig_id))
                 for rule, control in cat.all_rules())
    comparison = compare_scanners(scans, benchmark=sel.benchmark, cats={r.stig_id: r.cat for r in rows},
                                  waivers=current)
    notes = []
    unknown = sorted(set(cands) - set(bench.rules))
    if unknown:
        notes.append(f"results for STIG ids not in {bench.title} ({bench.release_info}) ignored: "
                     + ", ".join(unknown))
    stray = sorted(set(waivers) - set(bench.rules))
    if stray:
        notes.append(f"waivers for STIG ids not in this release ignored (re-check them): {', '.join(stray)}")
    return BenchmarkReport(benchmark=sel.benchmark, target=sel.target, benchmark_id=bench.id,
                           title=bench.title, version=bench.version, release_info=bench.release_info,
                           counts=Counts.of(rows), rows=rows,
                           waived=tuple(r for r in rows if r.waiver is not None), notes=tuple(notes),
                           comparison=comparison)


def build_report(scans: list[ScanResults], *, image: ImageInfo, selections: list[Selection],
                 waivers: dict[str, dict[str, WaiverDecision]], scanners: list[ScannerInfo], today: date,
                 policy: GatePolicy | None = None, generated: datetime | None = None) -> StigReport:
    """Join scans, catalogues, tailoring and waivers into the report (gate evaluated with `policy`)."""
    sels: list[Selection] = []
    for s in selections:
        if any(s.key == o.key for o in sels):
            raise UserError(f"STIG benchmark {s.benchmark} selected twice for target {s.target}")
        sels.append(s)
    for scan in scans:
        if not any(s.benchmark == scan.benchmark and s.target == scan.target for s in sels):
            sels.append(Selection(benchmark=scan.benchmark, target=scan.target))
    benches = tuple(
        _benchmark_report(s, [x for x in scans if x.benchmark == s.benchmark and x.target == s.target],
                          image, waivers.get(s.benchmark, {}), today)
        for s in sels)
    when = (generated or datetime.now(UTC)).isoformat(timespec="seconds")
    report = StigReport(generated=when, image=image, scanners=tuple(scanners), benchmarks=benches,
                        totals=Counts.of(r for b in benches for r in b.rows))
    return report.with_gate(policy)


# --- gate ------------------------------------------------------------------------------------

GATE_IDS = 10  # open ids named per CAT in the gate's reasons


def evaluate_gate(report: StigReport, policy: GatePolicy) -> GateResult:
    """Pass when every CAT's open findings are within the policy's limit."""
    open_ids: dict[int, list[str]] = {c: [] for c in CATS}
    reasons: list[str] = []
    for b in report.benchmarks:
        for r in b.rows:
            if r.open:
                open_ids[r.cat].append(r.stig_id)
    passed = True
    for c in CATS:
        limit, ids = policy.max_open.get(c), open_ids[c]
        if limit is not None and len(ids) > limit:
            passed = False
            more = f" (and {len(ids) - GATE_IDS} more)" if len(ids) > GATE_IDS else ""
            reasons.append(f"{CAT_NAMES[c]}: {len(ids)} open, at most {limit} allowed: "
                           f"{', '.join(ids[:GATE_IDS])}{more}")
    for b in report.benchmarks:
        for r in b.waived:
            if r.waiver is not None and r.waiver.expired and r.result in FINDING:
                reasons.append(f"waiver {r.waiver.waiver_id} for {r.stig_id} ({CAT_NAMES[r.cat]}) expired on "
                               f"{r.waiver.expires}: the finding counts as open")
    return GateResult(passed=passed, open_by_cat={c: len(open_ids[c]) for c in CATS}, reasons=reasons,
                      max_open=dict(policy.max_open))


# --- reading and writing ---------------------------------------------------------------------


def load_report(path: Path) -> StigReport:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: STIG report not found",
                        hint=f"a build with STIG scanning writes {REPORT_JSON} next to the image") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the STIG report: {e.strerror}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not a STIG report: invalid JSON ({e})") from None
    if isinstance(raw, dict) and raw.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path}: STIG report schema version {raw.get('schema_version')!r}, "
                        f"this imagefactory reads {SCHEMA_VERSION}")
    try:
        return StigReport.model_validate(raw)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise UserError(f"{path}: not a valid STIG report: {where}: {first['msg']} "
                        f"({e.error_count()} problem(s))") from None


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
    autoescape=True,  # evidence is command output from the image: never trust it as markup
    trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
)


def render_html(report: StigReport, diff: ReportDiff | None = None) -> str:
    """The self-contained HTML page (inline CSS, no scripts or external assets)."""
    r = report if report.gate is not None else report.with_gate()
    return _env.get_template("stig-report.html.j2").render(
        report=r, diff=diff, cats=CATS, cat_names=CAT_NAMES, results=RESULTS, statuses=STATUSES,
        truncate=truncate)


def write_reports(report: StigReport, outdir: Path, *, previous: StigReport | None = None) -> list[Path]:
    """Write the JSON and HTML reports and one CKLB and CKL checklist per benchmark, atomically.
    With `previous` (the last image's report) the delta is added to the HTML and `stig-diff.json`."""
    if report.gate is None:
        report = report.with_gate()
    diff = diff_reports(previous, report) if previous is not None else None
    out: list[tuple[Path, str]] = [(outdir / REPORT_JSON, report.to_json()),
                                   (outdir / REPORT_HTML, render_html(report, diff))]
    if diff is not None:
        out.append((outdir / DIFF_JSON, json.dumps(diff.to_json(), indent=1) + "\n"))
    for b in report.benchmarks:
        name = checklist_name(b)
        out.append((outdir / CHECKLIST_DIR / f"{name}.cklb", to_cklb(report, b)))
        out.append((outdir / CHECKLIST_DIR / f"{name}.ckl", to_ckl(report, b)))
    for path, text in out:
        atomic_write(path, text, mode=0o644)
    return [p for p, _ in out]


# --- diff ------------------------------------------------------------------------------------


class RowChange(_Model):
    benchmark: str  # "<benchmark>-<target>"
    stig_id: str
    cat: int
    before: str  # "fail/Open" (result/status); "" when added
    after: str  # "" when removed


class ReleaseChange(_Model):
    benchmark: str
    before: str
    after: str


class ReportDiff(_Model):
    before_image: str
    after_image: str
    benchmarks_added: list[str]
    benchmarks_removed: list[str]
    releases: list[ReleaseChange]
    changed: list[RowChange]
    added: list[RowChange]
    removed: list[RowChange]
    count_deltas: dict[str, dict[str, int]] = Field(description="benchmark (or 'total') -> counter -> delta")
    gate_before: bool | None
    gate_after: bool | None

    @property
    def gate_changed(self) -> bool:
        return self.gate_before != self.gate_after

    @property
    def empty(self) -> bool:
        return not (self.benchmarks_added or self.benchmarks_removed or self.releases or self.changed
                    or self.added or self.removed or self.gate_changed)

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json")

    def render_text(self) -> str:
        lines = [f"STIG delta {self.before_image} -> {self.after_image}"]
        if self.gate_changed:
            verdict = {True: "pass", False: "FAIL", None: "-"}
            lines.append(f"gate: {verdict[self.gate_before]} -> {verdict[self.gate_after]}")
        lines += [f"benchmark added: {b}" for b in self.benchmarks_added]
        lines += [f"benchmark removed: {b}" for b in self.benchmarks_removed]
        lines += [f"release {c.benchmark}: {c.before} -> {c.after}" for c in self.releases]
        for title, items in (("changed", self.changed), ("added", self.added), ("removed", self.removed)):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {c.benchmark} {c.stig_id} {CAT_NAMES.get(c.cat, c.cat)}: "
                          f"{c.before or '-'} -> {c.after or '-'}" for c in items]
        for bench, deltas in self.count_deltas.items():
            if deltas:
                lines.append(f"counts {bench}: " + ", ".join(f"{k} {v:+d}" for k, v in deltas.items()))
        if self.empty:
            lines.append("no changes")
        return "\n".join(lines) + "\n"


def _flat_counts(c: Counts) -> dict[str, int]:
    out: dict[str, int] = {}
    for cat in CATS:
        for res, n in c.results[cat].items():
            out[f"{CAT_NAMES[cat]} {res}"] = n
        out[f"{CAT_NAMES[cat]} open"] = c.open[cat]
    out["waived"] = c.waived
    return out


def _deltas(a: Counts | None, b: Counts | None) -> dict[str, int]:
    fa = _flat_counts(a) if a is not None else {}
    fb = _flat_counts(b) if b is not None else {}
    return {k: fb.get(k, 0) - fa.get(k, 0) for k in {**fa, **fb} if fb.get(k, 0) != fa.get(k, 0)}


def diff_reports(a: StigReport, b: StigReport) -> ReportDiff:
    """What changed from report `a` (the previous image) to `b`, per benchmark and STIG id."""
    ba = {x.key: x for x in a.benchmarks}
    bb = {x.key: x for x in b.benchmarks}
    releases, changed, added, removed = [], [], [], []
    deltas: dict[str, dict[str, int]] = {}
    for key in [k for k in bb if k in ba]:
        x, y = ba[key], bb[key]
        if x.release != y.release:
            releases.append(ReleaseChange(benchmark=key, before=x.release, after=y.release))
        rx = {r.stig_id: r for r in x.rows}
        ry = {r.stig_id: r for r in y.rows}
        for sid, r in ry.items():
            old = rx.get(sid)
            if old is None:
                added.append(RowChange(benchmark=key, stig_id=sid, cat=r.cat, before="",
                                       after=f"{r.result}/{r.status}"))
            elif (old.result, old.status, old.open) != (r.result, r.status, r.open):
                changed.append(RowChange(benchmark=key, stig_id=sid, cat=r.cat,
                                         before=_state(old), after=_state(r)))
        removed += [RowChange(benchmark=key, stig_id=sid, cat=r.cat, before=f"{r.result}/{r.status}",
                              after="") for sid, r in rx.items() if sid not in ry]
        deltas[key] = _deltas(x.counts, y.counts)
    for key in set(ba) ^ set(bb):
        deltas[key] = _deltas(ba[key].counts if key in ba else None, bb[key].counts if key in bb else None)
    deltas["total"] = _deltas(a.totals, b.totals)
    return ReportDiff(
        before_image=f"{a.image.name} ({a.image.build_id})",
        after_image=f"{b.image.name} ({b.image.build_id})",
        benchmarks_added=[k for k in bb if k not in ba], benchmarks_removed=[k for k in ba if k not in bb],
        releases=releases, changed=changed, added=added, removed=removed,
        count_deltas={k: v for k, v in deltas.items() if v},
        gate_before=a.gate.passed if a.gate else None, gate_after=b.gate.passed if b.gate else None)


def _state(r: Row) -> str:
    """'fail/Open', with '(waived)' when a waiver keeps the finding from counting."""
    return f"{r.result}/{r.status}" + (" (waived)" if r.accepted else "")
