"""STIG report, gate, checklists (CKLB/CKL), HTML and diff, on the real catalogues."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from imagefactory.errors import UserError
from imagefactory.stig.catalogue import load_catalogue
from imagefactory.stig.checklist import EVIDENCE_LIMIT, to_ckl, to_cklb
from imagefactory.stig.report import (
    GatePolicy,
    ImageInfo,
    Row,
    ScannerInfo,
    Selection,
    StigReport,
    build_report,
    diff_reports,
    evaluate_gate,
    load_report,
    render_html,
    write_reports,
)
from imagefactory.stig.results import RuleResult, ScanResults, WaiverDecision

TODAY = date(2026, 5, 1)
IMAGE = ImageInfo(name="debian12-base", recipe="debian12-base", build_id="20260501-1",
                  digest="ab" * 32, os_family="debian", os_release="12", kernel="6.1.0-30-amd64",
                  created="2026-05-01T10:00:00Z")
SCANNERS = [ScannerInfo(name="imagefactory", version="0.1.0", content="ubuntu2204 V2R8", mode="offline"),
            ScannerInfo(name="OpenSCAP", version="1.3.7", content="ssg-ubuntu2204-ds.xml 0.1.65",
                        mode="offline", artifact="stig/arf.xml")]
SEL = Selection(benchmark="ubuntu2204", target="debian",
                disabled={"UBTU-22-215040": "NFS CSI needs nfs-common"})

CAT1_FAIL = "UBTU-22-255040"  # X11Forwarding no: CAT I, family-generic bake control
CAT1_PASS = "UBTU-22-255025"
CAT2_FAIL = "UBTU-22-213020"  # kernel.randomize_va_space (CAT II)
UBUNTU_ONLY = "UBTU-22-271030"  # CAT I, applies_to [ubuntu]
NO_CONTROL = "UBTU-22-231010"
FIRST_BOOT = "UBTU-22-212010"


def scan(results: dict[str, tuple[str, str]], source: str = "offline", mode: str = "offline",
         benchmark: str = "ubuntu2204", target: str = "debian", scanner: str = "imagefactory") -> ScanResults:
    return ScanResults(benchmark, target, mode,  # type: ignore[arg-type]
                       {k: RuleResult(s, e, source) for k, (s, e) in results.items()},  # type: ignore[arg-type]
                       scanner=scanner)


def waiver(wid: str = "W-1", type_: str = "operational-requirement", expires: date | None = date(2027, 1, 1),
           expired: bool = False, approver: str | None = "ISSM J. Doe") -> WaiverDecision:
    return WaiverDecision(waiver_id=wid, type=type_, justification="X11 needed by the <lab> app",  # type: ignore[arg-type]
                          approver=approver, approved=date(2026, 1, 1), expires=expires, expired=expired,
                          poam_id="POAM-7")


def build(scans: list[ScanResults], waivers: dict[str, WaiverDecision] | None = None,
          policy: GatePolicy | None = None, selections: list[Selection] | None = None) -> StigReport:
    return build_report(scans, image=IMAGE, selections=selections or [SEL],
                        waivers={"ubuntu2204": waivers or {}}, scanners=SCANNERS, today=TODAY, policy=policy,
                        generated=datetime(2026, 5, 1, 12, 0, tzinfo=UTC))


def base_scan() -> ScanResults:
    return scan({CAT1_FAIL: ("fail", "X11Forwarding yes <script>alert(1)</script>"),
                 CAT1_PASS: ("pass", "PermitEmptyPasswords no"),
                 CAT2_FAIL: ("fail", "kernel.randomize_va_space = 0"),
                 "UBTU-22-215040": ("fail", "nfs-common is installed")})


def row(report: StigReport, stig_id: str, i: int = 0) -> Row:
    return next(r for r in report.benchmarks[i].rows if r.stig_id == stig_id)


def test_every_rule_once_in_document_order() -> None:
    rep = build([base_scan()])
    rows = rep.benchmarks[0].rows
    rules = load_catalogue("ubuntu2204").all_rules()
    assert len(rows) == 188
    assert [r.stig_id for r in rows] == [r.stig_id for r, _ in rules]
    assert rep.totals.total == 188
    assert sum(sum(rep.totals.results[c].values()) for c in (1, 2, 3)) == 188


def test_debian_target_out_of_scope_rules_are_not_applicable() -> None:
    rep = build([base_scan()])
    for sid in (UBUNTU_ONLY, NO_CONTROL):
        r = row(rep, sid)
        assert (r.result, r.status, r.open, r.source) == \
            ("notapplicable", "Not_Applicable", False, "catalogue")
        assert "no DISA STIG for Debian 12" in r.evidence
    fb = row(rep, FIRST_BOOT)  # in scope but set per deployment: not reviewed, not open
    assert (fb.result, fb.status, fb.open, fb.phase) == ("notchecked", "Not_Reviewed", False, "first-boot")
    assert "first-boot" in fb.comments
    rules = load_catalogue("ubuntu2204").all_rules()
    out_of_scope = sum(1 for _, c in rules if c is None or "debian" not in c.applies_to)
    na = sum(1 for r in rep.benchmarks[0].rows if r.source == "catalogue" and r.result == "notapplicable")
    assert na == out_of_scope == 30


def test_ubuntu_target_rules_without_control_are_not_reviewed() -> None:
    sel = Selection(benchmark="ubuntu2204", target="ubuntu")
    rep = build([scan({CAT1_PASS: ("pass", "")}, target="ubuntu")], selections=[sel])
    r = row(rep, NO_CONTROL)
    assert (r.result, r.status, r.open, r.phase) == ("notchecked", "Not_Reviewed", False, "manual")
    assert r.evidence == "not automated: manual review"
    assert row(rep, UBUNTU_ONLY).result == "notchecked"


def test_cat1_fail_fails_the_gate_and_names_the_id() -> None:
    rep = build([base_scan()])
    r = row(rep, CAT1_FAIL)
    assert (r.status, r.open) == ("Open", True)
    assert rep.gate is not None and not rep.gate.passed
    assert rep.gate.open_by_cat[1] == 2  # CAT1_FAIL and the tailored-off 215040 (tailoring does not waive)
    assert CAT1_FAIL in rep.gate.reasons[0] and "UBTU-22-215040" in rep.gate.reasons[0]
    assert rep.totals.results[1]["fail"] == 2 and rep.totals.results[1]["pass"] == 1
    tailored = row(rep, "UBTU-22-215040")
    assert "Disabled by the recipe tailoring (fix not applied): NFS CSI needs nfs-common" in tailored.comments
    assert "fixed in the image" not in tailored.comments and tailored.tailored == "NFS CSI needs nfs-common"


def test_current_waiver_passes_the_gate_and_is_listed() -> None:
    rep = build([base_scan()], {CAT1_FAIL: waiver(), "UBTU-22-215040": waiver("W-2")})
    assert rep.gate is not None and rep.gate.passed, rep.gate
    r = row(rep, CAT1_FAIL)
    # accepted risk: stays Open in the checklist, but not open for the gate
    assert (r.result, r.status, r.open) == ("fail", "Open", False)
    assert "Waiver W-1 (operational-requirement)" in r.comments
    assert {w.stig_id for w in rep.benchmarks[0].waived} == {CAT1_FAIL, "UBTU-22-215040"}
    assert rep.benchmarks[0].counts.waived == 2


def test_waiver_types_map_to_statuses() -> None:
    rep = build([base_scan()], {CAT1_FAIL: waiver(type_="false-positive"),
                                CAT2_FAIL: waiver("W-3", type_="not-applicable"),
                                NO_CONTROL: waiver("W-4", type_="not-applicable")})
    assert (row(rep, CAT1_FAIL).status, row(rep, CAT1_FAIL).open) == ("NotAFinding", False)
    assert (row(rep, CAT2_FAIL).status, row(rep, CAT2_FAIL).open) == ("Not_Applicable", False)


def test_expired_waiver_fails_the_gate() -> None:
    for w in (waiver(expired=True, expires=date(2026, 1, 1)), waiver(expires=date(2026, 4, 30))):
        rep = build([base_scan()], {CAT1_FAIL: w, "UBTU-22-215040": waiver("W-2")})
        assert rep.gate is not None and not rep.gate.passed
        r = row(rep, CAT1_FAIL)
        assert r.open and r.waiver is not None and r.waiver.expired
        assert "EXPIRED" in r.comments
        assert r in rep.benchmarks[0].waived
        assert any("W-1" in x and "expired" in x for x in rep.gate.reasons)
        assert rep.benchmarks[0].counts.expired == 1


def test_cat1_waiver_needs_an_approver() -> None:
    rep = build([base_scan()], {CAT1_FAIL: waiver(approver=None), "UBTU-22-215040": waiver("W-2")})
    assert row(rep, CAT1_FAIL).open
    assert rep.gate is not None and not rep.gate.passed


def test_cat2_threshold() -> None:
    waivers = {CAT1_FAIL: waiver(), "UBTU-22-215040": waiver("W-2")}
    rep = build([base_scan()], waivers, policy=GatePolicy(max_open={1: 0, 2: 0}))
    assert rep.gate is not None and not rep.gate.passed
    assert rep.gate.open_by_cat[2] == 1 and CAT2_FAIL in rep.gate.reasons[0]
    assert evaluate_gate(rep, GatePolicy(max_open={1: 0, 2: 1})).passed
    assert rep.with_gate(GatePolicy(max_open={1: 0, 2: 1})).gate.passed  # type: ignore[union-attr]


def test_booted_beats_offline_beats_openscap() -> None:
    oscap = scan({CAT1_FAIL: ("fail", "xccdf_org.ssgproject...x11_forwarding: fail"),
                  CAT2_FAIL: ("fail", "sysctl probe")}, source="openscap", scanner="OpenSCAP 1.3.7")
    offline = scan({CAT1_FAIL: ("fail", "offline says yes"), CAT2_FAIL: ("pass", "drop-in sets 1")})
    booted = scan({CAT1_FAIL: ("pass", "sshd -T: x11forwarding no")}, source="booted", mode="booted")
    rep = build([oscap, offline, booted])
    r = row(rep, CAT1_FAIL)
    assert (r.result, r.source, r.status) == ("pass", "booted", "NotAFinding")
    assert r.evidence.startswith("sshd -T: x11forwarding no")
    assert "also: offline (imagefactory, offline): fail (offline says yes)" in r.evidence
    assert "also: openscap (OpenSCAP 1.3.7, offline): fail" in r.evidence
    assert "OpenSCAP disagrees" in r.evidence
    r2 = row(rep, CAT2_FAIL)
    assert (r2.result, r2.source) == ("pass", "offline") and "OpenSCAP disagrees" in r2.evidence


def test_rke2_agent_server_only_controls_not_applicable() -> None:
    sel = Selection(benchmark="rke2", target="agent")
    agent = scan({"CNTR-R2-000130": ("pass", "read-only-port=0")}, benchmark="rke2", target="agent")
    rep = build_report([agent], image=IMAGE, selections=[sel], waivers={}, scanners=[], today=TODAY)
    b = rep.benchmarks[0]
    assert len(b.rows) == 23 and b.title.startswith("Rancher")
    assert (row(rep, "CNTR-R2-000010").result, row(rep, "CNTR-R2-000010").status) == \
        ("notapplicable", "Not_Applicable")
    assert row(rep, "CNTR-R2-000550").status == "Not_Reviewed"
    assert row(rep, "CNTR-R2-000130").status == "NotAFinding"
    assert rep.gate is not None and rep.gate.passed


def test_unselected_scan_and_unknown_ids_are_not_dropped() -> None:
    rke2 = scan({"CNTR-R2-000130": ("fail", "read-only-port=10255"), "CNTR-R2-999999": ("pass", "")},
                benchmark="rke2", target="server")
    rep = build([base_scan(), rke2])
    assert [b.key for b in rep.benchmarks] == ["ubuntu2204-debian", "rke2-server"]
    assert "CNTR-R2-999999" in rep.benchmarks[1].notes[0]
    assert row(rep, "CNTR-R2-000130", 1).open
    with pytest.raises(UserError, match="selected twice"):
        build([], selections=[SEL, SEL])


def _write(tmp_path: Path, report: StigReport) -> dict[str, Path]:
    return {p.name: p for p in write_reports(report, tmp_path)}


def test_cklb(tmp_path: Path) -> None:
    rep = build([base_scan()], {CAT1_FAIL: waiver()})
    files = _write(tmp_path, rep)
    doc = json.loads(files["ubuntu2204-debian.cklb"].read_text())
    assert doc["target_data"]["host_name"] == "debian12-base"
    assert doc["target_data"]["target_type"] == "Computing"
    (stig,) = doc["stigs"]
    assert stig["stig_id"] == load_catalogue("ubuntu2204").benchmark.id != ""
    assert stig["size"] == len(stig["rules"]) == 188
    rules = {r["rule_version"]: r for r in stig["rules"]}
    x11 = rules[CAT1_FAIL]
    assert x11["status"] == "open" and x11["severity"] == "high" and x11["group_id"].startswith("V-")
    assert x11["rule_id_src"].endswith("_rule") and x11["rule_id"] == x11["rule_id_src"][:-5]
    assert "Waiver W-1" in x11["comments"] and "POA&M POAM-7" in x11["comments"]
    assert x11["finding_details"].startswith("Result: fail (source: offline)")
    assert x11["stig_uuid"] == stig["uuid"] and x11["ccis"]
    assert rules[CAT1_PASS]["status"] == "not_a_finding"
    assert rules[UBUNTU_ONLY]["status"] == "not_applicable"
    assert rules[FIRST_BOOT]["status"] == "not_reviewed"
    assert "first-boot: set per deployment" in rules[FIRST_BOOT]["comments"]
    # deterministic: the same results give the same bytes (uuid5 ids, no timestamps)
    later = rep.model_copy(update={"generated": "2027-01-01T00:00:00+00:00"})
    assert to_cklb(later, later.benchmarks[0]) == files["ubuntu2204-debian.cklb"].read_text()
    assert to_ckl(later, later.benchmarks[0]) == files["ubuntu2204-debian.ckl"].read_text()
    assert len({r["uuid"] for r in stig["rules"]}) == 188


def test_ckl(tmp_path: Path) -> None:
    long = "x" * (EVIDENCE_LIMIT + 500)
    rep = build([scan({CAT1_FAIL: ("fail", long), CAT1_PASS: ("pass", "ok")})], {CAT1_FAIL: waiver()})
    files = _write(tmp_path, rep)
    root = ET.parse(files["ubuntu2204-debian.ckl"]).getroot()
    assert root.tag == "CHECKLIST" and root.findtext("ASSET/HOST_NAME") == "debian12-base"
    info = {si.findtext("SID_NAME"): si.findtext("SID_DATA") or "" for si in root.iter("SI_DATA")}
    assert info["version"] == rep.benchmarks[0].version and info["releaseinfo"].startswith("Release: 8")
    vulns = root.findall("STIGS/iSTIG/VULN")
    assert len(vulns) == 188
    by_id = {}
    for v in vulns:
        attrs = {sd.findtext("VULN_ATTRIBUTE"): sd.findtext("ATTRIBUTE_DATA") or ""
                 for sd in v.findall("STIG_DATA")}
        by_id[attrs["Rule_Ver"]] = (v, attrs)
    v, attrs = by_id[CAT1_FAIL]
    assert attrs["Vuln_Num"].startswith("V-") and attrs["Severity"] == "high"
    assert attrs["CCI_REF"].startswith("CCI-")
    assert v.findtext("STATUS") == "Open"
    assert "Waiver W-1 (operational-requirement)" in (v.findtext("COMMENTS") or "")
    details = v.findtext("FINDING_DETAILS") or ""
    assert details.startswith("Result: fail") and "more characters" in details and len(details) < len(long)
    assert by_id[CAT1_PASS][0].findtext("STATUS") == "NotAFinding"
    assert by_id[NO_CONTROL][0].findtext("STATUS") == "Not_Applicable"
    assert by_id[FIRST_BOOT][0].findtext("STATUS") == "Not_Reviewed"
    assert v.find("SEVERITY_OVERRIDE") is not None
    assert to_ckl(rep, rep.benchmarks[0]) == files["ubuntu2204-debian.ckl"].read_text()


def test_json_round_trip(tmp_path: Path) -> None:
    rep = build([base_scan()], {CAT1_FAIL: waiver(), CAT2_FAIL: waiver("W-9", expired=True)})
    files = _write(tmp_path, rep)
    loaded = load_report(files["stig-report.json"])
    assert loaded == rep
    assert row(loaded, CAT1_FAIL).waiver == waiver()


def test_load_report_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_report(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(UserError, match=r"bad\.json: not a STIG report"):
        load_report(bad)
    bad.write_text(json.dumps({"schema_version": 1, "image": {}}))
    with pytest.raises(UserError, match="not a valid STIG report"):
        load_report(bad)


def test_html(tmp_path: Path) -> None:
    rep = build([base_scan()], {CAT1_FAIL: waiver()})
    files = _write(tmp_path, rep)
    page = files["stig-report.html"].read_text()
    assert page == render_html(rep)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;lab&gt;" in page  # waiver justification escaped too
    assert 'data-cat="1" data-result="fail">2<' in page
    assert 'data-cat="2" data-result="fail">1<' in page
    assert "<h3>Waived (1)</h3>" in page and "W-1 (operational-requirement)" in page
    assert 'id="gate">FAILED<' in page  # 215040 is open
    assert "stylesheet" not in page and "<script" not in page
    assert "OpenSCAP" in page and "stig/arf.xml" in page


def test_diff_finds_changed_status(tmp_path: Path) -> None:
    before = build([base_scan()])
    fixed = scan({CAT1_FAIL: ("pass", "X11Forwarding no"), CAT1_PASS: ("pass", ""),
                  CAT2_FAIL: ("fail", "kernel.randomize_va_space = 0"), "UBTU-22-215040": ("fail", "")})
    after = build([fixed], {"UBTU-22-215040": waiver("W-2")})
    d = diff_reports(before, after)
    changes = {c.stig_id: (c.before, c.after) for c in d.changed}
    assert changes[CAT1_FAIL] == ("fail/Open", "pass/NotAFinding")
    assert changes["UBTU-22-215040"] == ("fail/Open", "fail/Open (waived)")
    assert CAT2_FAIL not in changes
    assert (d.gate_before, d.gate_after, d.gate_changed) == (False, True, True)
    assert d.count_deltas["total"]["CAT I open"] == -2
    text = d.render_text()
    assert f"{CAT1_FAIL} CAT I: fail/Open -> pass/NotAFinding" in text and "gate: FAIL -> pass" in text
    assert json.loads(json.dumps(d.to_json()))["changed"]
    assert diff_reports(after, after).empty
    files = {p.name: p for p in write_reports(after, tmp_path, previous=before)}
    assert "stig-diff.json" in files and "Changes since" in files["stig-report.html"].read_text()


def test_waiver_decision_not_mutated() -> None:
    w = waiver(expires=date(2026, 4, 1))
    rep = build([base_scan()], {CAT1_FAIL: w})
    assert not w.expired and row(rep, CAT1_FAIL).waiver == dataclasses.replace(w, expired=True)


def test_summary_for_the_manifest() -> None:
    s = build([base_scan()]).summary()
    assert s["gate"] == {"passed": False, "open_by_cat": {1: 2, 2: 1, 3: 0}}
    benches: Any = s["benchmarks"]
    (b,) = benches
    assert b["rules"] == 188 and b["results"]["fail"] == 3 and b["release"].startswith("V2 Release: 8")
    json.dumps(s)
