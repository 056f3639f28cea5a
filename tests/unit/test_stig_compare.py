"""imagefactory vs OpenSCAP (`stig.compare`): agreement, disagreement, what OpenSCAP cannot judge,
waivers, and the comparison in the STIG report (JSON, HTML, `stig report` from recorded results).
OpenSCAP's side starts from a crafted ARF folded into STIG ids like a real scan's."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from imagefactory.stig import openscap
from imagefactory.stig.compare import ScannerComparison, compare_scanners, content_release
from imagefactory.stig.openscap import ContentInfo, OscapScan, ScannerVersion
from imagefactory.stig.report import ImageInfo, Selection, StigReport, build_report, load_report, render_html
from imagefactory.stig.results import RuleResult, ScanResults, WaiverDecision, read_scans, write_scans

P = "xccdf_org.ssgproject.content_rule_"
OVAL = "http://oval.mitre.org/XMLSchema/oval-definitions-5"
TODAY = date(2026, 5, 1)
IMAGE = ImageInfo(name="ubuntu-22.04-base", recipe="ubuntu-22.04-base", build_id="20260501-1",
                  digest="cd" * 32, os_family="ubuntu", os_release="22.04", created="2026-05-01T10:00:00Z")
INFO = ContentInfo("ubuntu", Path("/c/ssg-ubuntu2204-ds.xml"),
                   "xccdf_org.ssgproject.content_profile_cis_level1_server", "0.1.65")


def _rr(rule: str, result: str, *, unscored_oval: str | None = None) -> str:
    if unscored_oval is None:
        return f'<x:rule-result idref="{P}{rule}"><x:result>{result}</x:result></x:rule-result>'
    return (f'<x:rule-result idref="{P}{rule}" role="unscored"><x:result>{result}</x:result>'
            f'<x:check system="{OVAL}"><x:check-content-ref name="oval:ssg-{rule}:def:1" href="#oval0"/>'
            f"</x:check></x:rule-result>")


# One rule result per case; the STIG ids they map to are in the comments.
ARF = f"""<?xml version="1.0"?>
<arf:asset-report-collection xmlns:arf="http://scap.nist.gov/schema/asset-reporting-format/1.1"
    xmlns:x="http://checklists.nist.gov/xccdf/1.2" xmlns:r="http://oval.mitre.org/XMLSchema/oval-results-5">
 <arf:reports>
  <arf:report id="xccdf1"><arf:content><x:TestResult id="xccdf_t_testresult_1">
   {_rr("disable_ctrlaltdel_reboot", "pass")}
   {_rr("accounts_tmout", "fail")}
   {_rr("kernel_module_usb-storage_disabled", "informational", unscored_oval="false")}
   {_rr("sshd_disable_empty_passwords", "pass")}
   {_rr("sshd_do_not_permit_user_env", "pass")}
   {_rr("dir_perms_world_writable_sticky_bits", "notapplicable")}
   {_rr("apt_conf_disallow_unauthenticated", "error")}
   {_rr("is_fips_mode_enabled", "fail")}
   {_rr("file_permissions_var_log", "pass")}
   {_rr("encrypt_partitions", "fail")}
  </x:TestResult></arf:content></arf:report>
  <arf:report id="oval0"><arf:content><r:oval_results><r:results><r:system><r:definitions>
   <r:definition definition_id="oval:ssg-kernel_module_usb-storage_disabled:def:1" result="false"
     version="1"/>
  </r:definitions></r:system></r:results></r:oval_results></arf:content></arf:report>
 </arf:reports>
</arf:asset-report-collection>
"""
# 211015 agree (pass/pass); 412030 disagree (ours pass, SSG 0.1.65's accounts_tmout fails);
# 291010 disagree although waived (unscored: its check's outcome counts); 255025 not judged
# (dpkginfo); 213010 not judged (no result: no rule in the ARF); 232145 not judged (notapplicable);
# 214010 not judged (error); 671010 OpenSCAP only (FIPS: first-boot, no result of ours);
# 232025 disagree, the booted result wins over the offline one.
OURS_OFFLINE = {"UBTU-22-211015": "pass", "UBTU-22-412030": "pass", "UBTU-22-291010": "pass",
                "UBTU-22-255025": "pass", "UBTU-22-213010": "pass", "UBTU-22-232145": "fail",
                "UBTU-22-214010": "pass", "UBTU-22-232025": "pass", "UBTU-22-211000": "notchecked"}
OURS_BOOTED = {"UBTU-22-232025": "fail", "UBTU-22-213010": "pass"}


@pytest.fixture
def oscap_results(tmp_path: Path) -> ScanResults:
    arf = tmp_path / "openscap-arf.xml"
    arf.write_text(ARF)
    parsed = openscap.read_arf(arf)
    scan = OscapScan(root=Path("/r"), arf=arf, report=tmp_path / "openscap-report.html",
                     scanner=ScannerVersion("1.3.7"), content=INFO, profile=openscap.TAILORED_PROFILE,
                     tailoring=tmp_path / "openscap-tailoring.xml", returncode=2, results=parsed.results,
                     check_outcomes=parsed.check_outcomes,
                     unreliable={P + "sshd_disable_empty_passwords": ("dpkginfo",)})
    return openscap.to_stig(scan, "ubuntu2204", "ubuntu")


def ours(results: dict[str, str], mode: str = "offline") -> ScanResults:
    return ScanResults("ubuntu2204", "ubuntu", mode,  # type: ignore[arg-type]
                       {k: RuleResult(v, f"{mode} evidence for {k}", mode) for k, v in results.items()},  # type: ignore[arg-type]
                       scanner="imagefactory 0.1.0", content="ubuntu2204 V2R8")


def waiver(type_: str = "risk-accepted") -> WaiverDecision:
    return WaiverDecision("W-USB", type_, "USB sticks in the lab", "ISSM", date(2026, 1, 1),  # type: ignore[arg-type]
                          date(2027, 1, 1), False)


def cats() -> dict[str, int]:
    from imagefactory.stig.catalogue import load_catalogue

    return {r.stig_id: r.cat for r, _ in load_catalogue("ubuntu2204").all_rules()}


def compare(scans: list[ScanResults], waivers: dict[str, WaiverDecision] | None = None) -> ScannerComparison:
    out = compare_scanners(scans, benchmark="ubuntu2204", cats=cats(), waivers=waivers)
    assert out is not None
    return out


def test_agree_disagree_and_not_judged(oscap_results: ScanResults) -> None:
    c = compare([ours(OURS_BOOTED, "booted"), ours(OURS_OFFLINE), oscap_results],
                {"UBTU-22-291010": waiver()})
    assert c.agreed == {"UBTU-22-211015": "pass"}
    assert [d.stig_id for d in c.disagreements] == ["UBTU-22-232025", "UBTU-22-291010", "UBTU-22-412030"]
    assert c.not_judged == {"notchecked": ("UBTU-22-255025",), "notapplicable": ("UBTU-22-232145",),
                            "error": ("UBTU-22-214010",), "no_result": ("UBTU-22-213010",), "no_rule": ()}
    assert c.openscap_only == {"UBTU-22-671010": "fail", "UBTU-22-231010": "fail"}
    n = c.counts
    assert (n.compared, n.agree, n.disagree, n.not_judged, n.openscap_only) == (4, 1, 3, 4, 2)
    assert n.not_judged_by == {"notchecked": 1, "notapplicable": 1, "error": 1, "no_result": 1, "no_rule": 0}
    assert c.agreement == 0.25
    assert c.openscap == ("OpenSCAP 1.3.7, ssg-ubuntu2204-ds.xml (SSG 0.1.65) profile "
                          "xccdf_org.ssgproject.content_profile_cis_level1_server, tailored "
                          "(openscap-tailoring.xml), offline")


def test_a_disagreement_carries_both_sides(oscap_results: ScanResults) -> None:
    c = compare([ours(OURS_BOOTED, "booted"), ours(OURS_OFFLINE), oscap_results],
                {"UBTU-22-291010": waiver()})
    d = {x.stig_id: x for x in c.disagreements}
    tmout = d["UBTU-22-412030"]
    assert (tmout.cat, tmout.imagefactory, tmout.imagefactory_source, tmout.openscap) == (
        2, "pass", "offline", "fail")
    assert tmout.imagefactory_evidence == "offline evidence for UBTU-22-412030"
    assert tmout.openscap_rules == {P + "accounts_tmout": "fail"}
    assert f"{P}accounts_tmout: fail" in tmout.openscap_evidence
    assert tmout.waiver is None
    assert tmout.note is not None and "declare -xr TMOUT" in tmout.note  # a known SSG 0.1.65 difference
    # the booted result is imagefactory's verdict (the offline pass stays out of it)
    var_log = d["UBTU-22-232025"]
    assert (var_log.imagefactory, var_log.imagefactory_source, var_log.openscap) == ("fail", "booted", "pass")
    assert var_log.note is not None and var_log.note.startswith("offline limit")
    # a waiver changes no result: the unscored rule's own outcome is compared, the waiver is named
    usb = d["UBTU-22-291010"]
    assert (usb.openscap, usb.waiver) == ("fail", "W-USB (risk-accepted)")
    assert usb.openscap_rules == {P + "kernel_module_usb-storage_disabled": "fail (unscored by tailoring)"}
    assert usb.note is None  # nobody explained it: either scanner may be wrong


def test_no_verdict_of_ours_is_not_compared(oscap_results: ScanResults) -> None:
    # notchecked/error of ours: not compared; OpenSCAP's trusted verdict is listed as its own
    c = compare([ours({"UBTU-22-211015": "error", "UBTU-22-412030": "notchecked"}), oscap_results])
    assert c.counts.compared == 0 and c.agreement is None
    assert {"UBTU-22-211015": "pass", "UBTU-22-412030": "fail"}.items() <= c.openscap_only.items()


def test_no_rule_mapped() -> None:
    # ComplianceAsCode maps no SSG rule to SLEM-05-653060
    slem = ScanResults("slmicro5", "sle-micro", "offline",
                       {"SLEM-05-653060": RuleResult("pass", "ok", "offline"),
                        "SLEM-05-211010": RuleResult("pass", "ok", "offline")})
    theirs = ScanResults("slmicro5", "sle-micro", "offline",
                         {"SLEM-05-211010": RuleResult("pass", "x: pass", "openscap")},
                         scanner="OpenSCAP 1.3.7", content="ssg-sle15-ds.xml (SSG 0.1.65) profile stig")
    c = compare_scanners([slem, theirs], benchmark="slmicro5",
                         cats={"SLEM-05-653060": 2, "SLEM-05-211010": 2})
    assert c is not None and c.not_judged["no_rule"] == ("SLEM-05-653060",)
    assert c.agreed == {"SLEM-05-211010": "pass"}


def test_without_openscap_there_is_no_comparison() -> None:
    assert compare_scanners([ours(OURS_OFFLINE)], benchmark="ubuntu2204", cats=cats()) is None
    assert compare_scanners([], benchmark="rke2", cats={}) is None


def test_results_recorded_without_rule_details_still_compare(oscap_results: ScanResults,
                                                             tmp_path: Path) -> None:
    """stig-offline.json written before the rule details were recorded: the mapping names the rules."""
    old = ScanResults(oscap_results.benchmark, oscap_results.target, "offline",
                      {k: RuleResult(v.status, v.evidence, "openscap")
                       for k, v in oscap_results.results.items()},
                      oscap_results.scanner, oscap_results.content)
    path = tmp_path / "stig-offline.json"
    write_scans(path, [old])
    assert '"rules"' not in path.read_text()
    (back,) = read_scans(path)
    d = {x.stig_id: x for x in compare([ours(OURS_OFFLINE), back]).disagreements}
    assert d["UBTU-22-412030"].openscap_rules == {P + "accounts_tmout": "not recorded"}
    write_scans(path, [oscap_results])  # with the details they round-trip
    assert read_scans(path)[0] == oscap_results


def test_content_release() -> None:
    assert content_release("ssg-ubuntu2204-ds.xml (SSG 0.1.65) profile x, tailored (t.xml)") == (
        "ssg-ubuntu2204-ds.xml", "0.1.65")
    assert content_release("something else") is None


# --- in the report ---------------------------------------------------------------------------


def report(scans: list[ScanResults], waivers: dict[str, WaiverDecision] | None = None) -> StigReport:
    return build_report(scans, image=IMAGE, selections=[Selection(benchmark="ubuntu2204", target="ubuntu")],
                        waivers={"ubuntu2204": waivers or {}}, scanners=[], today=TODAY,
                        generated=datetime(2026, 5, 1, 12, 0, tzinfo=UTC))


def test_the_report_carries_the_comparison(oscap_results: ScanResults, tmp_path: Path) -> None:
    scans = [ours(OURS_BOOTED, "booted"), ours(OURS_OFFLINE), oscap_results]
    rep = report(scans, {"UBTU-22-291010": waiver()})
    cmp = rep.benchmarks[0].comparison
    assert cmp == compare(scans, {"UBTU-22-291010": waiver()})  # computed in one place
    assert rep.summary()["benchmarks"][0]["vs_openscap"]["disagree"] == 3  # type: ignore[index]
    path = tmp_path / "stig-report.json"
    path.write_text(rep.to_json())
    assert load_report(path).benchmarks[0].comparison == cmp  # round-trips through stig-report.json
    html = render_html(rep)
    section = html[html.index('id="ubuntu2204-ubuntu-vs-openscap"'):html.index("<h3>Waived")]
    for sid in ("UBTU-22-232025", "UBTU-22-291010", "UBTU-22-412030"):
        assert f'href="#ubuntu2204-ubuntu-{sid}"' in section
    assert '<span data-count="disagree" class="bad">3</span>' in section
    assert "declare -xr TMOUT" in section and "W-USB (risk-accepted)" in section
    assert "accounts_tmout: fail" in section and "(25% agreement)" in section
    # without OpenSCAP results the section says so
    plain = render_html(report([ours(OURS_OFFLINE)]))
    assert report([ours(OURS_OFFLINE)]).benchmarks[0].comparison is None
    assert "No OpenSCAP results for this benchmark" in plain


def test_openscap_alone_never_decides_a_control_of_ours(oscap_results: ScanResults) -> None:
    """FIPS mode (UBTU-22-671010, CAT I) is a first-boot control: OpenSCAP's offline fail must not
    open it (nor fail the gate); a rule without a control still takes OpenSCAP's result."""
    rep = report([ours(OURS_OFFLINE), oscap_results])
    fips = next(r for r in rep.benchmarks[0].rows if r.stig_id == "UBTU-22-671010")
    assert (fips.result, fips.source, fips.status, fips.open) == (
        "notchecked", "catalogue", "Not_Reviewed", False)
    assert fips.evidence.startswith("not checked: first-boot control")
    assert "also: openscap (OpenSCAP 1.3.7, offline): fail" in fips.evidence
    manual = next(r for r in rep.benchmarks[0].rows if r.stig_id == "UBTU-22-231010")  # no control
    assert (manual.phase, manual.result, manual.source) == ("manual", "fail", "openscap")
    assert rep.gate is not None and "UBTU-22-671010" not in " ".join(rep.gate.reasons)


def test_a_test_directory_is_compared_with_its_image_offline_results(oscap_results: ScanResults,
                                                                     tmp_path: Path) -> None:
    """`imagefactory test -o DIR` records booted results only; the report there (and `stig report
    DIR`) takes the offline ones - ours and OpenSCAP's - from the tested image's build directory."""
    import json

    from imagefactory.cli_stig import recorded_scans

    build, out = tmp_path / "build", tmp_path / "test"
    build.mkdir()
    out.mkdir()
    (build / "manifest.json").write_text(json.dumps({"image": {"file": "image.qcow2"}}))
    write_scans(build / "stig-offline.json", [ours(OURS_OFFLINE), oscap_results])
    write_scans(out / "stig-results.json", [ours(OURS_BOOTED, "booted")])
    scans = recorded_scans(out, build / "image.qcow2")
    assert [(s.mode, s.scanner) for s in scans] == [("booted", "imagefactory 0.1.0"),
                                                   ("offline", "imagefactory 0.1.0"),
                                                   ("offline", "OpenSCAP 1.3.7")]
    assert report(scans).benchmarks[0].comparison == compare(scans)
    assert len(recorded_scans(out)) == 1  # no image named
    assert len(recorded_scans(build, build / "image.qcow2")) == 2  # the build directory itself
    (build / "manifest.json").write_text(json.dumps({"image": {"file": "other.qcow2"}}))
    assert len(recorded_scans(out, build / "image.qcow2")) == 1  # not the image that was built there
