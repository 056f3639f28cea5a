"""OpenSCAP without OpenSCAP: the ComplianceAsCode mapping, ARF parsing, the STIG roll-up, the
tailoring file, the offline-probe analysis of a datastream, and `scan_offline` against a fake
`oscap` (the real one runs in tests/integration/test_openscap.py)."""

from __future__ import annotations

import dataclasses
import time
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

import pytest

from imagefactory.errors import BuildError, UserError
from imagefactory.stig import openscap
from imagefactory.stig.cac import CAC_DIR, load_mapping, parse_mapping, rule_id, short_name
from imagefactory.stig.openscap import ContentInfo, OscapScan, ScannerVersion
from imagefactory.stig.results import WaiverDecision, WaiverType

X = "{http://checklists.nist.gov/xccdf/1.2}"
PREFIX = "xccdf_org.ssgproject.content_rule_"


# --- ComplianceAsCode mapping ----------------------------------------------------------------


def test_mapping_ships_in_the_repository() -> None:
    assert sorted(p.name for p in CAC_DIR.glob("*.yml")) == [
        "stig_slmicro5.yml", "stig_ubuntu2204.yml", "stig_ubuntu2404.yml"]


def test_ubuntu2204_mapping_both_ways() -> None:
    m = load_mapping("ubuntu2204")
    assert m.policy_version == "V2R8" and len(m.rules) == 188
    assert m.rules["UBTU-22-211015"] == ("disable_ctrlaltdel_reboot",)
    assert m.xccdf_rules("UBTU-22-211015") == (PREFIX + "disable_ctrlaltdel_reboot",)
    assert m.stig_ids("disable_ctrlaltdel_reboot") == ("UBTU-22-211015",)
    assert m.stig_ids(PREFIX + "disable_ctrlaltdel_reboot") == ("UBTU-22-211015",)
    # `var=value` entries select variables; they are not rules
    assert m.rules["UBTU-22-255030"] == ("sshd_set_keepalive",)
    assert m.variables["UBTU-22-255030"] == (("var_sshd_set_keepalive", "1"),)
    assert m.xccdf_rules("UBTU-22-999999") == ()


def test_other_mappings_load() -> None:
    slem = load_mapping("slmicro5")
    assert slem.rules["SLEM-05-653060"] == ()  # ComplianceAsCode maps no rule to it
    assert len(slem.rules) == 208
    assert load_mapping("ubuntu2404").rules["UBTU-24-100010"]


def test_mapping_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no ComplianceAsCode STIG mapping"):
        load_mapping("rke2")
    dup = tmp_path / "stig_x.yml"
    dup.write_text("controls:\n  - {id: A-1, rules: [a]}\n  - {id: A-1, rules: [b]}\n")
    with pytest.raises(UserError, match="duplicate STIG id A-1"):
        parse_mapping(dup, "x")
    with pytest.raises(UserError, match="not found"):
        parse_mapping(tmp_path / "missing.yml", "x")


def test_rule_id_round_trip() -> None:
    assert short_name(rule_id("sshd_set_keepalive")) == "sshd_set_keepalive"
    assert rule_id(PREFIX + "a") == PREFIX + "a"


# --- ARF -------------------------------------------------------------------------------------

ARF = """<?xml version="1.0"?>
<arf:asset-report-collection xmlns:arf="http://scap.nist.gov/schema/asset-reporting-format/1.1"
    xmlns:x="http://checklists.nist.gov/xccdf/1.2" xmlns:r="http://oval.mitre.org/XMLSchema/oval-results-5">
 <arf:report-requests><arf:report-request id="req"><arf:content>
  <x:Benchmark id="b"><x:Rule id="{p}in_the_request_not_a_result"/></x:Benchmark>
 </arf:content></arf:report-request></arf:report-requests>
 <arf:reports>
  <arf:report id="xccdf1"><arf:content><x:TestResult id="xccdf_t_testresult_1">
   <x:rule-result idref="{p}a" role="full"><x:result>pass</x:result></x:rule-result>
   <x:rule-result idref="{p}b"><x:result>fail</x:result>
     <x:check system="http://oval.mitre.org/XMLSchema/oval-definitions-5">
       <x:check-content-ref name="oval:ssg-b:def:1" href="#oval0"/></x:check></x:rule-result>
   <x:rule-result idref="{p}c"><x:result>notselected</x:result></x:rule-result>
   <x:rule-result idref="{p}waived" role="unscored"><x:result>informational</x:result>
     <x:check system="http://oval.mitre.org/XMLSchema/oval-definitions-5">
       <x:check-content-ref name="oval:ssg-waived:def:1" href="#oval0"/></x:check></x:rule-result>
   <x:rule-result idref="{p}negated" role="unscored"><x:result>informational</x:result>
     <x:check system="http://oval.mitre.org/XMLSchema/oval-definitions-5" negate="true">
       <x:check-content-ref name="oval:ssg-negated:def:1" href="#oval0"/></x:check></x:rule-result>
   <x:rule-result idref="{p}e"><x:result>error</x:result></x:rule-result>
  </x:TestResult></arf:content></arf:report>
  <arf:report id="oval0"><arf:content><r:oval_results><r:results><r:system><r:definitions>
   <r:definition definition_id="oval:ssg-b:def:1" result="false" version="1"/>
   <r:definition definition_id="oval:ssg-waived:def:1" result="false" version="1"><r:criteria/></r:definition>
   <r:definition definition_id="oval:ssg-negated:def:1" result="true" version="1"/>
  </r:definitions></r:system></r:results></r:oval_results></arf:content></arf:report>
  <arf:report id="oval1"><arf:content><r:oval_results><r:results><r:system><r:definitions>
   <r:definition definition_id="oval:ssg-waived:def:1" result="true" version="1"/>
  </r:definitions></r:system></r:results></r:oval_results></arf:content></arf:report>
 </arf:reports>
</arf:asset-report-collection>
""".replace("{p}", PREFIX)


def test_parse_arf(tmp_path: Path) -> None:
    path = tmp_path / "arf.xml"
    path.write_text(ARF)
    expect = {"a": "pass", "b": "fail", "c": "notselected", "waived": "informational",
              "negated": "informational", "e": "error"}
    assert openscap.parse_arf(path) == {PREFIX + k: v for k, v in expect.items()}


def test_read_arf_recovers_unscored_outcomes_from_the_referenced_oval_report(tmp_path: Path) -> None:
    path = tmp_path / "arf.xml"
    path.write_text(ARF)
    # oval0 (the href) says false -> fail; oval1's "true" for the same id must not be used
    assert openscap.read_arf(path).check_outcomes == {PREFIX + "waived": "fail", PREFIX + "negated": "fail"}


def test_parse_arf_rejects_broken_xml(tmp_path: Path) -> None:
    path = tmp_path / "arf.xml"
    path.write_text("<arf:asset-report")
    with pytest.raises(BuildError, match="not valid XML"):
        openscap.parse_arf(path)


# --- STIG roll-up ----------------------------------------------------------------------------

# UBTU-22-255025 maps to two rules: sshd_disable_empty_passwords, sshd_do_not_permit_user_env
A, B = PREFIX + "sshd_disable_empty_passwords", PREFIX + "sshd_do_not_permit_user_env"
INFO = ContentInfo("ubuntu", Path("/c/ssg-ubuntu2204-ds.xml"),
                   "xccdf_org.ssgproject.content_profile_cis_level1_server", "0.1.65")


def scan_of(results: dict[str, str], *, outcomes: dict[str, str] | None = None,
            unreliable: dict[str, tuple[str, ...]] | None = None, tailoring: Path | None = None) -> OscapScan:
    return OscapScan(root=Path("/r"), arf=Path("/o/openscap-arf.xml"), report=Path("/o/openscap-report.html"),
                     scanner=ScannerVersion("1.3.7"), content=INFO, profile=INFO.profile, tailoring=tailoring,
                     returncode=2, results=results, check_outcomes=outcomes or {},
                     unreliable=unreliable or {})


@pytest.mark.parametrize(("a", "b", "expect"), [
    ("pass", "pass", "pass"),
    ("pass", "fail", "fail"),
    ("fail", "error", "fail"),
    ("fail", "notselected", "fail"),  # a failing rule fails the STIG id even on a partial view
    ("fail", None, "fail"),
    ("pass", "notselected", None),  # a partial pass is no pass
    ("pass", None, None),
    ("notselected", "notselected", None),
    ("error", "pass", "error"),
    ("unknown", "pass", "error"),
    ("notchecked", "pass", "notchecked"),
    ("informational", "pass", "notchecked"),
    ("notapplicable", "notapplicable", "notapplicable"),
    ("pass", "notapplicable", "pass"),
    ("fixed", "pass", "pass"),
    ("weird", "pass", "error"),
])
def test_roll_up(a: str, b: str | None, expect: str | None) -> None:
    results = {A: a} | ({B: b} if b is not None else {})
    out = openscap.to_stig(scan_of(results), "ubuntu2204", "ubuntu")
    if expect is None:
        assert "UBTU-22-255025" not in out.results
    else:
        assert out.results["UBTU-22-255025"].status == expect
        assert out.results["UBTU-22-255025"].source == "openscap"


def test_to_stig_evidence_scanner_and_content() -> None:
    out = openscap.to_stig(scan_of({A: "pass", B: "fail", PREFIX + "disable_ctrlaltdel_reboot": "pass"}),
                           "ubuntu2204", "ubuntu")
    assert (out.benchmark, out.target, out.mode) == ("ubuntu2204", "ubuntu", "offline")
    assert out.scanner == "OpenSCAP 1.3.7"
    assert out.content == ("ssg-ubuntu2204-ds.xml (SSG 0.1.65) profile "
                           "xccdf_org.ssgproject.content_profile_cis_level1_server")
    ev = out.results["UBTU-22-255025"].evidence
    assert f"{A}: pass" in ev and f"{B}: fail" in ev
    assert out.results["UBTU-22-211015"].status == "pass"
    assert set(out.results) == {"UBTU-22-255025", "UBTU-22-211015"}  # nothing for unevaluated ids
    tailored = openscap.to_stig(scan_of({A: "pass"}, tailoring=Path("/o/t.xml")), "ubuntu2204", "ubuntu")
    assert tailored.content.endswith("tailored (t.xml)")


def test_unscored_rules_report_their_check_outcome() -> None:
    scan = scan_of({A: "informational", B: "pass"}, outcomes={A: "fail"})
    out = openscap.to_stig(scan, "ubuntu2204", "ubuntu")
    assert out.results["UBTU-22-255025"].status == "fail"
    assert "unscored by tailoring" in out.results["UBTU-22-255025"].evidence


def test_rules_with_offline_unreliable_probes_are_not_trusted() -> None:
    scan = scan_of({A: "pass", B: "pass"}, unreliable={A: ("dpkginfo",)})
    out = openscap.to_stig(scan, "ubuntu2204", "ubuntu")
    rr = out.results["UBTU-22-255025"]
    assert rr.status == "notchecked"
    assert f"{A}: pass, not trusted offline (OVAL probes: dpkginfo)" in rr.evidence
    # a trusted failing rule still fails the STIG id
    scan = scan_of({A: "pass", B: "fail"}, unreliable={A: ("dpkginfo",)})
    out = openscap.to_stig(scan, "ubuntu2204", "ubuntu")
    assert out.results["UBTU-22-255025"].status == "fail"


def test_to_stig_records_each_rule_result() -> None:
    scan = scan_of({A: "informational", B: "pass"}, outcomes={A: "fail"}, unreliable={B: ("dpkginfo",)})
    rr = openscap.to_stig(scan, "ubuntu2204", "ubuntu").results["UBTU-22-255025"]
    assert rr.rules == {A: "fail (unscored by tailoring)",
                        B: "pass, not trusted offline (OVAL probes: dpkginfo)"}
    assert rr.to_json()["rules"] == rr.rules
    partial = openscap.to_stig(scan_of({A: "fail", B: "notselected"}), "ubuntu2204", "ubuntu")
    assert partial.results["UBTU-22-255025"].rules[B] == (
        "notselected (deselected by tailoring, or not in the profile)")


def test_known_content_bugs_are_not_trusted() -> None:
    """SSG 0.1.65's no_empty_passwords reads RHEL's /etc/pam.d/system-auth: it passes on any Ubuntu."""
    nep = PREFIX + "no_empty_passwords"
    rr = openscap.to_stig(scan_of({nep: "pass"}), "ubuntu2204", "ubuntu").results["UBTU-22-611060"]
    assert rr.status == "notchecked" and "SSG 0.1.65 content bug" in rr.evidence
    assert "system-auth" in rr.evidence
    newer = dataclasses.replace(INFO, ssg_version="0.1.74")
    fixed = dataclasses.replace(scan_of({nep: "pass"}), content=newer)
    assert openscap.to_stig(fixed, "ubuntu2204", "ubuntu").results["UBTU-22-611060"].status == "pass"


# --- tailoring -------------------------------------------------------------------------------


def waiver(wid: str, type_: WaiverType, *, expired: bool = False) -> WaiverDecision:
    return WaiverDecision(wid, type_, f"because {wid}", "ISSO", date(2025, 1, 1),
                          date(2025, 6, 1) if expired else None, expired)


GROUP, VALUE = "xccdf_org.ssgproject.content_group_", "xccdf_org.ssgproject.content_value_"
CIS = "xccdf_org.ssgproject.content_profile_cis_level1_server"
# A datastream shaped like SSG 0.1.65's Ubuntu 22.04 content: every rule selected="false", the CIS
# profile selects a few and deselects whole Groups, Values with selectors.
TAILORING_DS = """<?xml version="1.0"?>
<ds:data-stream-collection xmlns:ds="http://scap.nist.gov/schema/scap/source/1.2"
    xmlns:x="http://checklists.nist.gov/xccdf/1.2">
 <ds:component id="xccdf">
  <x:Benchmark id="xccdf_org.ssgproject.content_benchmark_UBUNTU2204">
   <x:version>0.1.65</x:version>
   <x:Profile id="{cis}"><x:title>CIS</x:title>
     <x:select idref="{p}accounts_tmout" selected="true"/>
     <x:select idref="{g}audit" selected="false"/>
     <x:refine-value idref="{v}var_accounts_tmout" selector="cis"/>
   </x:Profile>
   <x:Group id="{g}system"><x:title>system</x:title>
     <x:Value id="{v}var_accounts_tmout" type="number"><x:value>600</x:value>
       <x:value selector="15_min">900</x:value><x:value selector="cis">900</x:value></x:Value>
     <x:Value id="{v}login_banner_text"><x:value selector="dod_banners">You are accessing</x:value></x:Value>
     <x:Value id="{v}var_password_pam_unix_rounds" type="number"><x:value>5000</x:value>
       <x:value selector="65536">65536</x:value></x:Value>
     <x:Group id="{g}accounts"><x:title>accounts</x:title>
       <x:Rule id="{p}accounts_tmout" selected="false"/>
       <x:Rule id="{p}disable_ctrlaltdel_reboot" selected="false"/>
       <x:Rule id="{p}sshd_disable_empty_passwords" selected="false"/>
       <x:Rule id="{p}sshd_do_not_permit_user_env" selected="false"/>
     </x:Group>
     <x:Group id="{g}audit"><x:title>audit</x:title>
       <x:Rule id="{p}aide_build_database" selected="false"/>
       <x:Rule id="{p}banner_etc_issue_net" selected="false"/>
       <x:Rule id="{p}not_a_stig_rule" selected="false"/>
     </x:Group>
   </x:Group>
  </x:Benchmark>
 </ds:component>
</ds:data-stream-collection>
""".replace("{p}", PREFIX).replace("{g}", GROUP).replace("{v}", VALUE).replace("{cis}", CIS)


@pytest.fixture
def tailoring_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "content"
    d.mkdir()
    (d / "ssg-ubuntu2204-ds.xml").write_text(TAILORING_DS)
    monkeypatch.setenv(openscap.ENV_CONTENT, str(d))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    return d


def test_compile_tailoring_widens_the_profile_to_the_stig(tmp_path: Path, tailoring_content: Path) -> None:
    out = openscap.compile_tailoring(
        tmp_path / "sub" / "tailoring.xml", family="ubuntu", benchmark="ubuntu2204",
        waivers={"UBTU-22-211015": waiver("W-NA", "not-applicable"),
                 "UBTU-22-255025": waiver("W-RISK", "risk-accepted"),
                 "UBTU-22-213010": waiver("W-OLD", "false-positive", expired=True),
                 "UBTU-22-412030": waiver("W-BOTH", "compensating"),
                 "UBTU-22-999999": waiver("W-UNMAPPED", "risk-accepted")},
        disabled={"UBTU-22-651015": "AIDE database is built at first boot", "UBTU-22-412030": "no shells"})
    assert out == tmp_path / "sub" / "tailoring.xml"
    root = ET.parse(out).getroot()
    assert root.tag == f"{X}Tailoring" and root.get("id") == "xccdf_imagefactory_tailoring_ubuntu"
    assert root.find(f"{X}benchmark").get("href") == f"{tailoring_content}/ssg-ubuntu2204-ds.xml"  # type: ignore[union-attr]
    assert root.find(f"{X}version").get("time") == "2023-11-14T22:13:20"  # type: ignore[union-attr]
    prof = root.find(f"{X}Profile")
    assert prof is not None and prof.get("id") == "xccdf_imagefactory_profile_tailored"
    assert prof.get("extends") == CIS
    assert "widened to the ubuntu2204 STIG" in (prof.findtext(f"{X}title") or "")
    selects = {s.get("idref"): s for s in prof.findall(f"{X}select")}
    on = {k for k, s in selects.items() if s.get("selected") == "true"}
    off = {k for k, s in selects.items() if s.get("selected") == "false"}
    # every mapped rule the content has, and the Groups around it (CIS deselects the audit Group)
    assert on == {A, B, PREFIX + "banner_etc_issue_net",
                  GROUP + "system", GROUP + "accounts", GROUP + "audit"}
    # waivers and disabled controls keep their rules deselected, even where CIS selects them
    assert off == {PREFIX + "disable_ctrlaltdel_reboot", PREFIX + "aide_build_database",
                   PREFIX + "accounts_tmout"}  # not-applicable, disabled, disabled+waived
    assert PREFIX + "not_a_stig_rule" not in selects  # not mapped: left to the base profile
    assert PREFIX + "sysctl_kernel_dmesg_restrict" not in selects  # mapped, not in this content
    assert selects[PREFIX + "banner_etc_issue_net"].findtext(f"{X}remark") == "STIG: UBTU-22-255020"
    refines = {r.get("idref"): r for r in prof.findall(f"{X}refine-rule")}
    assert set(refines) == {A, B}  # risk-accepted; the expired waiver compiles into nothing
    assert all(r.get("role") == "unscored" for r in refines.values())
    remark = selects[PREFIX + "disable_ctrlaltdel_reboot"].findtext(f"{X}remark") or ""
    assert remark.startswith("UBTU-22-211015: Waiver W-NA (not-applicable)") and "because W-NA" in remark
    assert (selects[PREFIX + "aide_build_database"].findtext(f"{X}remark")
            == "UBTU-22-651015: disabled by tailoring: AIDE database is built at first boot")
    remarks = [r.text for r in selects[PREFIX + "accounts_tmout"].findall(f"{X}remark")]
    assert remarks[0] == "UBTU-22-412030: disabled by tailoring: no shells" and "W-BOTH" in str(remarks[1])
    assert "W-RISK (risk-accepted)" in (refines[A].findtext(f"{X}remark") or "")
    assert "sysctl_kernel_dmesg_restrict" not in out.read_text()  # UBTU-22-213010: expired
    # the mapping's variables: the STIG's selector (over CIS's), the 0.1.65 name of the banner
    # variable, and a literal value where the content has no such selector
    values = {v.get("idref"): v.get("selector") for v in prof.findall(f"{X}refine-value")}
    assert values == {VALUE + "var_accounts_tmout": "15_min", VALUE + "login_banner_text": "dod_banners"}
    assert {v.get("idref"): v.text for v in prof.findall(f"{X}set-value")} == {
        VALUE + "var_password_pam_unix_rounds": "100000"}
    assert "3 rules ComplianceAsCode maps to ubuntu2204 STIG ids (V2R8) selected" in (
        prof.findtext(f"{X}description") or "")


def test_compile_tailoring_is_reproducible(tmp_path: Path, tailoring_content: Path) -> None:
    a = openscap.compile_tailoring(tmp_path / "a.xml", family="ubuntu", benchmark="ubuntu2204", waivers={},
                                   disabled={"UBTU-22-211015": "x"})
    b = openscap.compile_tailoring(tmp_path / "b.xml", family="ubuntu", benchmark="ubuntu2204", waivers={},
                                   disabled={"UBTU-22-211015": "x"})
    assert a is not None and b is not None and a.read_bytes() == b.read_bytes()


def test_compile_tailoring_without_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert openscap.compile_tailoring(tmp_path / "t.xml", family="debian", benchmark="ubuntu2204",
                                      waivers={}, disabled={}) is None
    assert not (tmp_path / "t.xml").exists()
    with pytest.raises(UserError, match="unknown OS family"):
        openscap.compile_tailoring(tmp_path / "t.xml", family="windows", benchmark="ubuntu2204",
                                   waivers={}, disabled={})
    # the datastream is not installed: nothing to widen (and nothing to scan)
    monkeypatch.setenv(openscap.ENV_CONTENT, str(tmp_path / "nothing"))
    assert openscap.compile_tailoring(tmp_path / "t.xml", family="ubuntu", benchmark="ubuntu2204",
                                      waivers={}, disabled={}) is None
    assert not (tmp_path / "t.xml").exists()


# --- content and scanner discovery -----------------------------------------------------------

DS = """<?xml version="1.0"?>
<ds:data-stream-collection xmlns:ds="http://scap.nist.gov/schema/scap/source/1.2"
    xmlns:x="http://checklists.nist.gov/xccdf/1.2" xmlns:d="http://oval.mitre.org/XMLSchema/oval-definitions-5"
    xmlns:ind="http://oval.mitre.org/XMLSchema/oval-definitions-5#independent"
    xmlns:lin="http://oval.mitre.org/XMLSchema/oval-definitions-5#linux"
    xmlns:cl="http://cpe.mitre.org/language/2.0" xmlns:cd="http://cpe.mitre.org/dictionary/2.0">
 <ds:component id="cpe-dict"><cd:cpe-list>
  <cd:cpe-item name="cpe:/o:test:1"><cd:check system="x">oval:os:def:1</cd:check></cd:cpe-item>
  <cd:cpe-item name="cpe:/a:pam"><cd:check system="x">oval:pam:def:1</cd:check></cd:cpe-item>
 </cd:cpe-list></ds:component>
 <ds:component id="xccdf">
  <x:Benchmark id="xccdf_org.ssgproject.content_benchmark_T">
   <x:title>T</x:title>
   <x:platform idref="cpe:/o:test:1"/>
   <x:version update="https://example.invalid">0.1.99</x:version>
   <x:Profile id="xccdf_org.ssgproject.content_profile_p"><x:title>p</x:title><x:version>9.9</x:version>
     <x:platform idref="#pam"/></x:Profile>
   <cl:platform-specification><cl:platform id="pam"><cl:logical-test operator="AND" negate="false">
     <cl:fact-ref name="cpe:/a:pam"/></cl:logical-test></cl:platform></cl:platform-specification>
   <x:Rule id="{p}file_only"><x:check system="http://oval.mitre.org/XMLSchema/oval-definitions-5">
     <x:check-content-ref name="oval:file_only:def:1"/></x:check></x:Rule>
   <x:Rule id="{p}needs_package"><x:check system="http://oval.mitre.org/XMLSchema/oval-definitions-5">
     <x:check-content-ref name="oval:needs_package:def:1"/></x:check></x:Rule>
   <x:Group id="xccdf_org.ssgproject.content_group_pam"><x:title>g</x:title><x:platform idref="#pam"/>
     <x:Value id="xccdf_org.ssgproject.content_value_v"><x:value>1</x:value>
       <x:value selector="two">2</x:value></x:Value>
     <x:Rule id="{p}in_pam_group"><x:check system="http://oval.mitre.org/XMLSchema/oval-definitions-5">
       <x:check-content-ref name="oval:file_only:def:1"/></x:check></x:Rule>
   </x:Group>
   <x:Rule id="{p}reads_proc"><x:check system="http://oval.mitre.org/XMLSchema/oval-definitions-5">
     <x:check-content-ref name="oval:reads_proc:def:1"/></x:check></x:Rule>
  </x:Benchmark>
 </ds:component>
 <ds:component id="oval"><d:oval_definitions>
  <d:definitions>
   <d:definition id="oval:file_only:def:1"><d:criteria>
     <d:criterion test_ref="oval:tfc:tst:1"/></d:criteria></d:definition>
   <d:definition id="oval:needs_package:def:1"><d:criteria operator="OR">
     <d:extend_definition definition_ref="oval:pam:def:1"/><d:criterion test_ref="oval:tfc:tst:1"/>
   </d:criteria></d:definition>
   <d:definition id="oval:pam:def:1"><d:criteria>
     <d:criterion test_ref="oval:dpkg:tst:1"/></d:criteria></d:definition>
   <d:definition id="oval:os:def:1"><d:criteria>
     <d:criterion test_ref="oval:tfc:tst:1"/></d:criteria></d:definition>
   <d:definition id="oval:reads_proc:def:1"><d:criteria>
     <d:criterion test_ref="oval:tfc:tst:1"/><d:criterion test_ref="oval:cpuinfo:tst:1"/>
   </d:criteria></d:definition>
  </d:definitions>
  <d:tests>
   <ind:textfilecontent54_test id="oval:tfc:tst:1"><ind:object object_ref="oval:etc:obj:1"/>
   </ind:textfilecontent54_test>
   <lin:dpkginfo_test id="oval:dpkg:tst:1"/>
   <ind:textfilecontent54_test id="oval:cpuinfo:tst:1"><ind:object object_ref="oval:cpuinfo:obj:1"/>
   </ind:textfilecontent54_test>
  </d:tests>
  <d:objects>
   <ind:textfilecontent54_object id="oval:etc:obj:1"><ind:filepath>/etc/profile</ind:filepath>
   </ind:textfilecontent54_object>
   <ind:textfilecontent54_object id="oval:cpuinfo:obj:1"><ind:filepath>/proc/cpuinfo</ind:filepath>
   </ind:textfilecontent54_object>
  </d:objects>
 </d:oval_definitions></ds:component>
</ds:data-stream-collection>
""".replace("{p}", PREFIX)


@pytest.fixture
def content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "content"
    d.mkdir()
    (d / "ssg-ubuntu2204-ds.xml").write_text(DS)
    monkeypatch.setenv(openscap.ENV_CONTENT, str(d))
    return d


def test_content_info_reads_the_benchmark_version(content: Path) -> None:
    info = openscap.content_info("ubuntu")
    assert info == ContentInfo("ubuntu", content / "ssg-ubuntu2204-ds.xml",
                               "xccdf_org.ssgproject.content_profile_cis_level1_server", "0.1.99")
    assert info.describe() == ("ssg-ubuntu2204-ds.xml (SSG 0.1.99) profile "
                               "xccdf_org.ssgproject.content_profile_cis_level1_server")
    assert openscap.no_content_reason("ubuntu") is None


def test_content_info_without_content(content: Path) -> None:
    assert openscap.content_info("debian") is None
    assert "no Debian 12 product" in str(openscap.no_content_reason("debian"))
    assert openscap.content_info("sle-micro") is None  # ssg-sle15-ds.xml is not in the directory
    assert "ssg-sle15-ds.xml not found" in str(openscap.no_content_reason("sle-micro"))
    with pytest.raises(UserError, match="unknown OS family"):
        openscap.content_info("plan9")


def test_offline_probes_follow_checks_and_platforms(content: Path) -> None:
    probes = openscap.offline_probes(content / "ssg-ubuntu2204-ds.xml")
    # file_only: textfilecontent only; the profile's platform does not leak into rules
    assert probes == {PREFIX + "needs_package": frozenset({"dpkginfo"}),  # via extend_definition
                      PREFIX + "in_pam_group": frozenset({"dpkginfo"}),  # via the group's platform
                      PREFIX + "reads_proc": frozenset({"files under /proc"})}  # empty in an image root


def test_datastream_index_rules_groups_and_values(content: Path) -> None:
    index = openscap.datastream_index(content / "ssg-ubuntu2204-ds.xml")
    assert index.rules == {PREFIX + r for r in ("file_only", "needs_package", "in_pam_group", "reads_proc")}
    assert index.groups[PREFIX + "in_pam_group"] == ("xccdf_org.ssgproject.content_group_pam",)
    assert index.groups[PREFIX + "file_only"] == ()
    assert index.values == {"xccdf_org.ssgproject.content_value_v": frozenset({"", "two"})}


def _fake_oscap(bin_dir: Path, body: str) -> None:
    tool = bin_dir / "oscap"
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(0o755)


def test_scanner_info(fake_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_oscap(fake_bin, 'echo "OpenSCAP command line tool (oscap) 1.3.7"\necho "Copyright ..."\n')
    assert openscap.scanner_info() == ScannerVersion("1.3.7")
    assert str(openscap.scanner_info()) == "OpenSCAP 1.3.7"
    _fake_oscap(fake_bin, "echo nonsense\n")
    with pytest.raises(BuildError, match="unexpected output"):
        openscap.scanner_info()
    monkeypatch.setenv("PATH", str(fake_bin))
    (fake_bin / "oscap").unlink()
    assert openscap.scanner_info() is None


# A fake `oscap xccdf eval`: records its argv and OSCAP_PROBE_ROOT, copies $IMAGEFACTORY_FAKE_ARF to the
# --results-arf path, writes the --report path and exits $IMAGEFACTORY_FAKE_RC.
FAKE_EVAL = """\
if [ "$1" = "--version" ]; then echo "OpenSCAP command line tool (oscap) 1.3.7"; exit 0; fi
echo "$OSCAP_PROBE_ROOT" > "$IMAGEFACTORY_FAKE_LOG"
echo "$@" >> "$IMAGEFACTORY_FAKE_LOG"
while [ $# -gt 0 ]; do
  case "$1" in
    --results-arf) cp "$IMAGEFACTORY_FAKE_ARF" "$2"; shift ;;
    --report) echo "<html/>" > "$2"; shift ;;
  esac
  shift
done
echo "OpenSCAP Error: something broke" >&2
exit "$IMAGEFACTORY_FAKE_RC"
"""


@pytest.fixture
def fake_eval(tmp_path: Path, fake_bin: Path, content: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _fake_oscap(fake_bin, FAKE_EVAL)
    arf = tmp_path / "canned-arf.xml"
    arf.write_text(ARF)
    monkeypatch.setenv("IMAGEFACTORY_FAKE_ARF", str(arf))
    monkeypatch.setenv("IMAGEFACTORY_FAKE_LOG", str(tmp_path / "oscap.log"))
    (tmp_path / "root").mkdir()
    return tmp_path / "oscap.log"


def test_scan_offline_runs_oscap_on_the_root(tmp_path: Path, fake_eval: Path, content: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEFACTORY_FAKE_RC", "2")
    tailoring = tmp_path / "t.xml"
    scan = openscap.scan_offline(tmp_path / "root", family="ubuntu", outdir=tmp_path / "out",
                                 tailoring=tailoring)
    assert scan is not None
    probe_root, argv = fake_eval.read_text().splitlines()
    assert probe_root == str((tmp_path / "root").resolve())
    out = tmp_path / "out"
    assert argv == (f"xccdf eval --profile xccdf_imagefactory_profile_tailored --tailoring-file {tailoring} "
                    f"--results-arf {out}/openscap-arf.xml --report {out}/openscap-report.html "
                    f"{content}/ssg-ubuntu2204-ds.xml")
    assert scan.returncode == 2 and scan.profile == openscap.TAILORED_PROFILE
    assert scan.results[PREFIX + "b"] == "fail" and scan.counts["fail"] == 1
    assert scan.check_outcomes == {PREFIX + "waived": "fail", PREFIX + "negated": "fail"}
    assert scan.summary()["counts"] == scan.counts and scan.scanner_version == "OpenSCAP 1.3.7"


def test_scan_offline_untailored_uses_the_family_profile(tmp_path: Path, fake_eval: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEFACTORY_FAKE_RC", "0")
    scan = openscap.scan_offline(tmp_path / "root", family="ubuntu", outdir=tmp_path / "out")
    assert scan is not None and scan.tailoring is None
    argv = fake_eval.read_text()
    assert "--profile xccdf_org.ssgproject.content_profile_cis_level1_server --results-arf" in argv


@pytest.mark.parametrize("rc", ["1", "3"])
def test_scan_offline_errors(tmp_path: Path, fake_eval: Path, monkeypatch: pytest.MonkeyPatch,
                             rc: str) -> None:
    monkeypatch.setenv("IMAGEFACTORY_FAKE_RC", rc)
    out = tmp_path / "out"
    out.mkdir()
    (out / "openscap-arf.xml").write_text("stale")
    with pytest.raises(BuildError, match=f"exit code {rc}:\nOpenSCAP Error: something broke"):
        openscap.scan_offline(tmp_path / "root", family="ubuntu", outdir=out)


def test_scan_offline_without_results_is_an_error(tmp_path: Path, fake_eval: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale ARF from an earlier run must not be read as this run's results."""
    monkeypatch.setenv("IMAGEFACTORY_FAKE_RC", "0")
    monkeypatch.setenv("IMAGEFACTORY_FAKE_ARF", str(tmp_path / "nothing-here"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "openscap-arf.xml").write_text(ARF)
    with pytest.raises(BuildError, match="wrote no results"):
        openscap.scan_offline(tmp_path / "root", family="ubuntu", outdir=out)


def test_scan_offline_without_content_or_root(tmp_path: Path, fake_eval: Path) -> None:
    assert openscap.scan_offline(tmp_path / "root", family="debian", outdir=tmp_path / "out") is None
    with pytest.raises(UserError, match="not a directory"):
        openscap.scan_offline(tmp_path / "missing", family="ubuntu", outdir=tmp_path / "out")


def test_scan_offline_without_oscap(tmp_path: Path, fake_bin: Path, content: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from imagefactory.errors import CommandNotFound

    monkeypatch.setenv("PATH", str(fake_bin))
    with pytest.raises(CommandNotFound, match="oscap not found"):
        openscap.scan_offline(tmp_path, family="ubuntu", outdir=tmp_path / "out")


def test_a_hanging_oscap_is_stopped_and_retried(content: Path, fake_bin: Path, tmp_path: Path) -> None:
    # oscap 1.3.7 sometimes deadlocks (all threads in futex waits): the scan must not hang a build.
    calls = tmp_path / "calls"
    (fake_bin / "oscap").write_text(f"""#!/bin/bash
if [ "$1" = --version ]; then echo "OpenSCAP command line tool (oscap) 1.3.7"; exit 0; fi
echo run >> {calls}
exec sleep 300
""")
    (fake_bin / "oscap").chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    start = time.monotonic()
    with pytest.raises(BuildError, match="hung 2 times"):
        openscap.scan_offline(root, family="ubuntu", outdir=tmp_path / "out", timeout=1, attempts=2)
    assert calls.read_text().split() == ["run", "run"]
    assert time.monotonic() - start < 60


# --- content per release: Ubuntu 24.04 is never scanned with the 22.04 datastream ------------------

NOBLE_OS_RELEASE = 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\n'


def _os_release(root: Path, text: str) -> Path:
    """The layout of Debian and Ubuntu: /etc/os-release -> ../usr/lib/os-release."""
    (root / "usr/lib").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/os-release").write_text(text)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    return root


def test_ubuntu_2404_has_no_content_in_ssg_0_1_65(content: Path) -> None:
    # the directory holds ssg-ubuntu2204-ds.xml only, like Debian 12's ssg-debderived 0.1.65
    assert openscap.content_info("ubuntu", "22.04") == openscap.content_info("ubuntu")
    assert openscap.content_info("ubuntu", "24.04") is None
    why = str(openscap.no_content_reason("ubuntu", "24.04"))
    assert "has no Ubuntu 24.04 product" in why and f"{content}/ssg-ubuntu2404-ds.xml not found" in why
    # newer content (IMAGEFACTORY_SCAP_CONTENT) with an Ubuntu 24.04 product is used, STIG profile
    (content / "ssg-ubuntu2404-ds.xml").write_text(DS)
    assert openscap.content_info("ubuntu", "24.04") == ContentInfo(
        "ubuntu", content / "ssg-ubuntu2404-ds.xml", "xccdf_org.ssgproject.content_profile_stig", "0.1.99")


def test_tailoring_follows_the_benchmark_release(tmp_path: Path, content: Path) -> None:
    out = tmp_path / "t.xml"
    assert openscap.compile_tailoring(out, family="ubuntu", benchmark="ubuntu2404", waivers={},
                                      disabled={"UBTU-24-300026": "kiosk"}) is None
    assert not out.exists()
    (content / "ssg-ubuntu2404-ds.xml").write_text(DS)
    assert openscap.compile_tailoring(out, family="ubuntu", benchmark="ubuntu2404", waivers={},
                                      disabled={"UBTU-24-300026": "kiosk"}) == out
    root = ET.parse(out).getroot()
    assert root.find(f"{X}benchmark").get("href") == f"{content}/ssg-ubuntu2404-ds.xml"  # type: ignore[union-attr]
    prof = root.find(f"{X}Profile")
    assert prof is not None and prof.get("extends") == "xccdf_org.ssgproject.content_profile_stig"
    assert [s.get("idref") for s in prof.findall(f"{X}select")] == [PREFIX + "disable_ctrlaltdel_reboot"]


def test_scan_offline_picks_the_content_of_the_image_release(tmp_path: Path, fake_eval: Path, content: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEFACTORY_FAKE_RC", "0")
    noble = _os_release(tmp_path / "noble", NOBLE_OS_RELEASE)
    assert openscap.root_release(noble, "ubuntu") == "24.04"
    assert openscap.root_release(noble, "debian") is None  # another distribution's tree
    # a noble root with only 22.04 content: recorded as no content, oscap never runs
    assert openscap.scan_offline(noble, family="ubuntu", outdir=tmp_path / "out") is None
    assert not fake_eval.exists() and not (tmp_path / "out").exists()
    jammy = _os_release(tmp_path / "jammy", NOBLE_OS_RELEASE.replace("24.04", "22.04"))
    # the caller's release wins over the tree's
    assert openscap.scan_offline(jammy, family="ubuntu", outdir=tmp_path / "out", release="24.04") is None
    assert not fake_eval.exists()
    scan = openscap.scan_offline(jammy, family="ubuntu", outdir=tmp_path / "out")
    assert scan is not None and scan.content.datastream == content / "ssg-ubuntu2204-ds.xml"
    (content / "ssg-ubuntu2404-ds.xml").write_text(DS)
    scan = openscap.scan_offline(noble, family="ubuntu", outdir=tmp_path / "out")
    assert scan is not None and scan.content.datastream == content / "ssg-ubuntu2404-ds.xml"
    assert "--profile xccdf_org.ssgproject.content_profile_stig " in fake_eval.read_text()
