"""The real oscap (openscap-scanner 1.3.7) with the packaged SSG content (0.1.65) on crafted
Ubuntu 22.04-looking trees: file-based CIS rules follow the tree, tailoring widens the profile to
the STIG and deselects and unscores rules, the results fold into STIG ids, and a disagreement with
imagefactory's own check shows up in the report. A full CIS Level 1 Server scan takes ~4-5 s here,
the widened one ~15 s, so the tests scan the whole profile like the product does."""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

import pytest

from imagefactory.stig import openscap
from imagefactory.stig.cac import rule_id
from imagefactory.stig.results import WaiverDecision, WaiverType

pytestmark = pytest.mark.integration

# File-content/metadata rules of the CIS profile whose checks work offline (no dpkginfo guard).
TMOUT, USB, STICKY = rule_id("accounts_tmout"), rule_id("kernel_module_usb-storage_disabled"), \
    rule_id("dir_perms_world_writable_sticky_bits")
PASSWD, SSHD_CONFIG = rule_id("file_permissions_etc_passwd"), rule_id("file_permissions_sshd_config")
FILE_RULES = (TMOUT, USB, STICKY, PASSWD, SSHD_CONFIG)


@pytest.fixture(autouse=True)
def _need_oscap() -> None:
    if shutil.which("oscap") is None:
        pytest.skip("oscap is not installed (Debian package openscap-scanner)")
    ds = openscap.content_dir() / "ssg-ubuntu2204-ds.xml"
    if not ds.is_file():
        pytest.skip(f"SCAP content {ds} is missing (Debian package ssg-debderived)")


def _put(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    os.chmod(p, mode)


def ubuntu_root(root: Path, *, compliant: bool) -> Path:
    """A tree the ubuntu2204 platform CPE accepts (`/etc/lsb-release`), compliant or not with
    the FILE_RULES."""
    _put(root, "/etc/lsb-release", "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=22.04\nDISTRIB_CODENAME=jammy\n"
                                   'DISTRIB_DESCRIPTION="Ubuntu 22.04.4 LTS"\n')
    _put(root, "/etc/os-release", 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\n'
                                  "VERSION_CODENAME=jammy\nID=ubuntu\nID_LIKE=debian\n")
    _put(root, "/etc/passwd", "root:x:0:0:root:/root:/bin/bash\n", 0o644 if compliant else 0o666)
    _put(root, "/etc/ssh/sshd_config", "PermitEmptyPasswords no\nPermitRootLogin no\n",
         0o600 if compliant else 0o644)
    _put(root, "/etc/login.defs", "PASS_MAX_DAYS 60\nPASS_MIN_DAYS 1\nUMASK 077\n")
    (root / "srv/shared").mkdir(parents=True)
    os.chmod(root / "srv/shared", 0o1777 if compliant else 0o777)
    if compliant:
        _put(root, "/etc/profile.d/99-tmout.sh", "declare -xr TMOUT=600\n")
        _put(root, "/etc/modprobe.d/usb-storage.conf", "install usb-storage /bin/false\n")
    return root


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, openscap.OscapScan]:
    """One untailored scan of each tree (shared: each takes a few seconds)."""
    out = {}
    for name, ok in (("good", True), ("bad", False)):
        tmp = tmp_path_factory.mktemp(name)
        scan = openscap.scan_offline(ubuntu_root(tmp / "root", compliant=ok), family="ubuntu",
                                     outdir=tmp / "out")
        assert scan is not None
        out[name] = scan
    return out


def test_scan_offline_records_scanner_content_and_artifacts(scans: dict[str, openscap.OscapScan]) -> None:
    scan = scans["bad"]
    assert str(scan.scanner) == "OpenSCAP 1.3.7"
    assert scan.content.ssg_version == "0.1.65"
    assert scan.profile == "xccdf_org.ssgproject.content_profile_cis_level1_server"
    assert scan.returncode == 2  # some rules fail
    assert scan.arf.name == "openscap-arf.xml" and scan.arf.stat().st_size > 0
    assert scan.report.name == "openscap-report.html" and scan.report.stat().st_size > 0
    assert scan.counts["fail"] > 0 and scan.counts["pass"] > 0
    assert openscap.parse_arf(scan.arf) == scan.results


def test_file_rules_follow_the_tree(scans: dict[str, openscap.OscapScan]) -> None:
    good, bad = scans["good"].results, scans["bad"].results
    assert {r: good[r] for r in FILE_RULES} == dict.fromkeys(FILE_RULES, "pass")
    assert {r: bad[r] for r in FILE_RULES} == dict.fromkeys(FILE_RULES, "fail")


def test_dpkginfo_pitfall_is_flagged_not_trusted(scans: dict[str, openscap.OscapScan]) -> None:
    """sshd_config says PermitEmptyPasswords yes nowhere, yet the rule passes on both trees:
    dpkginfo fails offline, so "openssh-server is not installed". It must not count as a pass."""
    sshd = rule_id("sshd_disable_empty_passwords")
    assert scans["good"].results[sshd] == "pass"
    assert "dpkginfo" in scans["bad"].unreliable[sshd]
    res = openscap.to_stig(scans["bad"], "ubuntu2204", "ubuntu")
    assert res.results["UBTU-22-255025"].status == "notchecked"
    assert "not trusted offline" in res.results["UBTU-22-255025"].evidence
    assert PASSWD not in scans["bad"].unreliable


def test_to_stig_maps_file_rules_to_stig_ids(scans: dict[str, openscap.OscapScan]) -> None:
    expect = {"UBTU-22-412030": TMOUT, "UBTU-22-291010": USB, "UBTU-22-232145": STICKY}
    good = openscap.to_stig(scans["good"], "ubuntu2204", "ubuntu")
    bad = openscap.to_stig(scans["bad"], "ubuntu2204", "ubuntu")
    assert (bad.scanner, bad.mode, bad.target) == ("OpenSCAP 1.3.7", "offline", "ubuntu")
    assert bad.content == ("ssg-ubuntu2204-ds.xml (SSG 0.1.65) profile "
                           "xccdf_org.ssgproject.content_profile_cis_level1_server")
    for stig_id, rule in expect.items():
        assert good.results[stig_id].status == "pass"
        assert bad.results[stig_id].status == "fail"
        assert bad.results[stig_id].source == "openscap"
        assert f"{rule}: fail" in bad.results[stig_id].evidence
    # grub2_uefi_password is not in the CIS profile: a partial view gives no result
    assert "UBTU-22-212010" not in bad.results


def _decision(wid: str, type_: WaiverType, *, expired: bool = False) -> WaiverDecision:
    return WaiverDecision(wid, type_, f"justification of {wid}", "ISSO", date(2025, 1, 1),
                          date(2025, 6, 1) if expired else None, expired)


def test_tailoring_is_accepted_and_applied(tmp_path: Path) -> None:
    root = ubuntu_root(tmp_path / "root", compliant=False)
    waivers = {"UBTU-22-412030": _decision("W-NA", "not-applicable"),
               "UBTU-22-291010": _decision("W-RISK", "risk-accepted"),
               "UBTU-22-232145": _decision("W-OLD", "risk-accepted", expired=True)}
    tailoring = openscap.compile_tailoring(
        tmp_path / "tailoring.xml", family="ubuntu", benchmark="ubuntu2204", waivers=waivers,
        disabled={"UBTU-22-255025": "sshd is not shipped"})
    assert tailoring is not None
    scan = openscap.scan_offline(root, family="ubuntu", outdir=tmp_path / "out", tailoring=tailoring)
    assert scan is not None and scan.profile == openscap.TAILORED_PROFILE
    r = scan.results
    assert r[TMOUT] == "notselected"  # not-applicable waiver
    assert r[rule_id("sshd_disable_empty_passwords")] == "notselected"  # disabled control
    assert r[USB] == "informational"  # unscored: evaluated, reported as informational...
    assert scan.check_outcomes[USB] == "fail"  # ...and its check's own outcome is kept
    assert r[STICKY] == "fail"  # expired waiver: compiled into nothing, the finding counts
    # the tailored profile still evaluates everything else
    assert r[PASSWD] == "fail"
    res = openscap.to_stig(scan, "ubuntu2204", "ubuntu")
    assert "UBTU-22-412030" not in res.results and "UBTU-22-255025" not in res.results
    assert res.results["UBTU-22-291010"].status == "fail"  # a waiver never changes a result
    assert "unscored by tailoring" in res.results["UBTU-22-291010"].evidence
    assert res.results["UBTU-22-232145"].status == "fail"
    assert res.content.endswith("tailored (tailoring.xml)")
    # the remarks travel into the ARF's embedded tailoring
    text = scan.arf.read_text()
    assert "W-RISK (risk-accepted)" in text and "sshd is not shipped" in text


def test_oscap_info_reads_the_tailoring(tmp_path: Path) -> None:
    from imagefactory.run import run

    t = openscap.compile_tailoring(tmp_path / "t.xml", family="ubuntu", benchmark="ubuntu2204",
                                   waivers={}, disabled={"UBTU-22-211015": "no console"})
    assert t is not None
    info = run(["oscap", "info", t], quiet=True)
    assert "XCCDF Tailoring" in info.stdout and openscap.TAILORED_PROFILE in info.stdout
    run(["oscap", "xccdf", "validate", "--skip-schematron", t], quiet=True)  # XCCDF 1.2 schema
    ET.parse(t)


def test_other_distro_tree_is_notapplicable_everywhere(tmp_path: Path) -> None:
    """The platform CPE pitfall: without Ubuntu's lsb-release every rule is notapplicable."""
    root = tmp_path / "root"
    _put(root, "/etc/os-release", "ID=debian\nVERSION_ID=12\n")
    scan = openscap.scan_offline(root, family="ubuntu", outdir=tmp_path / "out")
    assert scan is not None
    evaluated = {v for v in scan.results.values() if v != "notselected"}
    assert evaluated == {"notapplicable"}


def test_ubuntu_2404_tree_is_not_scanned_with_the_2204_content(tmp_path: Path) -> None:
    """SSG 0.1.65 has no Ubuntu 24.04 product, and its 22.04 content's platform check wants jammy:
    a noble tree is recorded as "no content" instead of a scan where every rule is notapplicable."""
    if (openscap.content_dir() / "ssg-ubuntu2404-ds.xml").is_file():
        pytest.skip("this SCAP content has an Ubuntu 24.04 product")
    root = tmp_path / "root"
    _put(root, "/etc/lsb-release", "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=24.04\nDISTRIB_CODENAME=noble\n")
    _put(root, "/usr/lib/os-release", 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\n')
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    assert openscap.content_info("ubuntu") is not None  # the 22.04 datastream is installed
    assert openscap.scan_offline(root, family="ubuntu", outdir=tmp_path / "out") is None
    assert not (tmp_path / "out").exists()
    assert "has no Ubuntu 24.04 product" in str(openscap.no_content_reason("ubuntu", "24.04"))
    assert openscap.compile_tailoring(tmp_path / "t.xml", family="ubuntu", benchmark="ubuntu2404",
                                      waivers={}, disabled={}) is None


def test_families_without_content_are_not_scanned(tmp_path: Path) -> None:
    assert openscap.scan_offline(tmp_path, family="debian", outdir=tmp_path / "out") is None
    assert not (tmp_path / "out").exists()


def test_bad_tailoring_is_a_build_error(tmp_path: Path) -> None:
    from imagefactory.errors import BuildError

    root = ubuntu_root(tmp_path / "root", compliant=True)
    bogus = tmp_path / "bogus.xml"
    bogus.write_text("<not-xccdf/>")
    with pytest.raises(BuildError, match="exit code 1"):
        openscap.scan_offline(root, family="ubuntu", outdir=tmp_path / "out", tailoring=bogus)


# --- the tailoring widened to the STIG, and the comparison with imagefactory's checks ---------

CTRLALTDEL = rule_id("disable_ctrlaltdel_reboot")  # UBTU-22-211015: not in the CIS profile


@pytest.fixture(scope="module")
def stig_scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, openscap.OscapScan]:
    """A tree where imagefactory and SSG 0.1.65 disagree on UBTU-22-412030: DISA's fix, a plain
    `TMOUT=900` in /etc/profile.d, passes DISA's check text; SSG's accounts_tmout wants `declare -xr`.
    Scanned with the widened tailoring, UBTU-22-291010 disabled."""
    tmp = tmp_path_factory.mktemp("stig")
    root = ubuntu_root(tmp / "root", compliant=False)
    _put(root, "/etc/profile.d/99-terminal_tmout.sh", "TMOUT=900\n")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/ctrl-alt-del.target").symlink_to("/dev/null")
    _put(root, "/dev/null", "")  # the symlink probe resolves the link inside the root
    tailoring = openscap.compile_tailoring(tmp / "tailoring.xml", family="ubuntu", benchmark="ubuntu2204",
                                           waivers={}, disabled={"UBTU-22-291010": "USB storage needed"})
    assert tailoring is not None
    scan = openscap.scan_offline(root, family="ubuntu", outdir=tmp / "out", tailoring=tailoring)
    assert scan is not None
    return root, scan


def test_widened_tailoring_evaluates_the_stig_rules(stig_scan: tuple[Path, openscap.OscapScan]) -> None:
    _, scan = stig_scan
    from imagefactory.stig.cac import load_mapping

    assert scan.results[CTRLALTDEL] == "pass"  # selected by the widening, its Group re-selected
    assert scan.results[USB] == "notselected"  # disabled control: deselected although CIS selects it
    assert scan.results[TMOUT] == "fail"
    mapped = set(load_mapping("ubuntu2204").all_rules()) & set(scan.results)
    evaluated = {r for r in mapped if scan.results[r] != "notselected"}
    assert len(evaluated) == len(mapped) - 1 > 150  # every mapped rule the content has, but USB's


def test_a_disagreement_appears_in_the_report(stig_scan: tuple[Path, openscap.OscapScan]) -> None:
    from datetime import UTC, datetime

    from imagefactory.stig.actions import check_root
    from imagefactory.stig.catalogue import load_catalogue
    from imagefactory.stig.report import ImageInfo, Selection, build_report, render_html
    from imagefactory.stig.results import RuleResult, ScanResults

    root, scan = stig_scan
    cat = load_catalogue("ubuntu2204")
    controls = [c for c in cat.controls_for("ubuntu") if c.id in ("UBTU-22-412030", "UBTU-22-211015")]
    checked = check_root(root, "ubuntu", controls, packages=[])
    assert {k: v.status for k, v in checked.items()} == {"UBTU-22-412030": "pass", "UBTU-22-211015": "pass"}
    ours = ScanResults("ubuntu2204", "ubuntu", "offline",
                       {k: RuleResult(v.status, v.evidence, "offline") for k, v in checked.items()},
                       scanner="imagefactory 0.1.0")
    theirs = openscap.to_stig(scan, "ubuntu2204", "ubuntu")
    image = ImageInfo(name="t", recipe="t", build_id="1", digest="0" * 64, os_family="ubuntu",
                      os_release="22.04", created="2026-05-01T00:00:00Z")
    rep = build_report([ours, theirs], image=image, selections=[Selection(benchmark="ubuntu2204",
                                                                           target="ubuntu")],
                       waivers={}, scanners=[], today=date(2026, 5, 1),
                       generated=datetime(2026, 5, 1, tzinfo=UTC))
    cmp = rep.benchmarks[0].comparison
    assert cmp is not None
    assert cmp.agreed == {"UBTU-22-211015": "pass"}
    (d,) = cmp.disagreements
    assert (d.stig_id, d.imagefactory, d.openscap) == ("UBTU-22-412030", "pass", "fail")
    assert d.openscap_rules == {TMOUT: "fail"} and "TMOUT=900" in d.imagefactory_evidence
    assert d.note is not None and "declare -xr" in d.note
    assert "UBTU-22-291010" not in theirs.results  # deselected (disabled control): not judged
    assert 'href="#ubuntu2204-ubuntu-UBTU-22-412030"' in render_html(rep)
