"""The control catalogues (stig/*.yaml): every id exists in its XCCDF, the join carries DISA's
title and CAT, coverage per benchmark, and validation errors that name the file and the id."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from imagefactory.errors import ValidationError
from imagefactory.stig.catalogue import catalogue_dir, load_catalogue, parse_catalogue
from imagefactory.stig.kinds import Kind
from imagefactory.stig.xccdf import load_benchmark

NAMES = ("ubuntu2204", "ubuntu2404", "slmicro5", "rke2")

# CAT I rules that cannot be baked into an image, with the phase they are handled in.
UBUNTU_CAT1_NOT_BAKED = {
    "UBTU-22-212010": "first-boot",  # GRUB password hash: per-site secret
    "UBTU-22-432015": "first-boot",  # sudo group membership: site decision
    "UBTU-22-612040": "first-boot",  # smart-card PKI mapping
    "UBTU-22-671010": "first-boot",  # FIPS: Ubuntu Pro + reboot
    "UBTU-22-211000": "verify",  # vendor support: date / subscription
}
UBUNTU2404_CAT1_NOT_BAKED = {
    "UBTU-24-102000": "first-boot",  # GRUB password hash: per-site secret
    "UBTU-24-600130": "first-boot",  # sudo group membership: site decision
    "UBTU-24-400370": "first-boot",  # PKI certificate mapping: the site's SSSD domain
    "UBTU-24-600030": "first-boot",  # FIPS: Ubuntu Pro + reboot
}
# Every control of the 22.04 catalogue -> its 24.04 counterpart (matched on title, check and fix
# text: the numbering differs), or None where the 24.04 V1R1 STIG has no such rule.
UBUNTU_22_TO_24: dict[str, str | None] = {
    "UBTU-22-211015": "UBTU-24-300026", "UBTU-22-215030": "UBTU-24-100040",
    "UBTU-22-215035": "UBTU-24-100030",
    "UBTU-22-215040": None,  # nfs-kernel-server
    "UBTU-22-255010": "UBTU-24-100800", "UBTU-22-255015": "UBTU-24-100810",
    "UBTU-22-255025": "UBTU-24-300031", "UBTU-22-255040": "UBTU-24-300022",
    "UBTU-22-271030": "UBTU-24-300025", "UBTU-22-611060": "UBTU-24-300028",
    "UBTU-22-611065": "UBTU-24-300027", "UBTU-22-212010": "UBTU-24-102000",
    "UBTU-22-432015": "UBTU-24-600130", "UBTU-22-612040": "UBTU-24-400370",
    "UBTU-22-671010": "UBTU-24-600030", "UBTU-22-211000": "UBTU-24-700400",
    "UBTU-22-212015": "UBTU-24-102010", "UBTU-22-213010": "UBTU-24-600140",
    "UBTU-22-213015": "UBTU-24-600070", "UBTU-22-213020": "UBTU-24-700310",
    "UBTU-22-213025": "UBTU-24-700300", "UBTU-22-253010": "UBTU-24-600190",
    "UBTU-22-291010": "UBTU-24-300039", "UBTU-22-214010": "UBTU-24-300001",
    "UBTU-22-214015": "UBTU-24-700320", "UBTU-22-215010": "UBTU-24-100600",
    "UBTU-22-215015": "UBTU-24-100700", "UBTU-22-215020": "UBTU-24-100010",
    "UBTU-22-215025": "UBTU-24-100020", "UBTU-22-251010": "UBTU-24-100300",
    "UBTU-22-412025": "UBTU-24-101000", "UBTU-22-431010": "UBTU-24-100500",
    "UBTU-22-612010": "UBTU-24-100910", "UBTU-22-612015": "UBTU-24-100900",
    "UBTU-22-651010": "UBTU-24-100100", "UBTU-22-653010": "UBTU-24-100400",
    "UBTU-22-431015": "UBTU-24-100510", "UBTU-22-652010": "UBTU-24-100200",
    "UBTU-22-653015": "UBTU-24-100410", "UBTU-22-251015": "UBTU-24-100310",
    "UBTU-22-251020": "UBTU-24-100310", "UBTU-22-252010": "UBTU-24-600160",
    "UBTU-22-252015": "UBTU-24-600180", "UBTU-22-252020": "UBTU-24-901220",
    "UBTU-22-255020": "UBTU-24-200640", "UBTU-22-255030": "UBTU-24-600000",
    "UBTU-22-255035": "UBTU-24-600010", "UBTU-22-255045": "UBTU-24-300023",
    "UBTU-22-255050": "UBTU-24-100820", "UBTU-22-255055": "UBTU-24-100830",
    "UBTU-22-255060": "UBTU-24-100840", "UBTU-22-255065": "UBTU-24-500050",
    "UBTU-22-411010": "UBTU-24-400110", "UBTU-22-411015": "UBTU-24-400000",
    "UBTU-22-411025": "UBTU-24-400300", "UBTU-22-411030": "UBTU-24-400310",
    "UBTU-22-411035": "UBTU-24-200260", "UBTU-22-412020": "UBTU-24-200000",
    "UBTU-22-412030": "UBTU-24-200060", "UBTU-22-412035": "UBTU-24-300030",
    "UBTU-22-611070": "UBTU-24-400400", "UBTU-22-411045": "UBTU-24-200610",
    "UBTU-22-412010": "UBTU-24-300017", "UBTU-22-611010": "UBTU-24-400260",
    "UBTU-22-611015": "UBTU-24-400270", "UBTU-22-611020": "UBTU-24-400280",
    "UBTU-22-611025": "UBTU-24-400330", "UBTU-22-611030": "UBTU-24-300014",
    "UBTU-22-611035": "UBTU-24-400320", "UBTU-22-611040": "UBTU-24-400290",
    "UBTU-22-611045": "UBTU-24-300016", "UBTU-22-611055": "UBTU-24-400220",
    "UBTU-22-432010": "UBTU-24-300021",
    "UBTU-22-654224": None,  # ALL ALL=(ALL) ALL in sudoers
    "UBTU-22-432011": "UBTU-24-300021", "UBTU-22-232010": "UBTU-24-901260",
    "UBTU-22-232015": "UBTU-24-300011", "UBTU-22-232020": "UBTU-24-300006",
    "UBTU-22-232025": "UBTU-24-700120", "UBTU-22-232026": "UBTU-24-700010",
    "UBTU-22-232027": "UBTU-24-700020", "UBTU-22-232035": "UBTU-24-901230",
    "UBTU-22-232040": "UBTU-24-901270", "UBTU-22-232045": "UBTU-24-901280",
    "UBTU-22-232050": "UBTU-24-300012", "UBTU-22-232055": "UBTU-24-300013",
    "UBTU-22-232060": "UBTU-24-300008", "UBTU-22-232065": "UBTU-24-300010",
    "UBTU-22-232070": "UBTU-24-300007", "UBTU-22-232075": "UBTU-24-300009",
    "UBTU-22-232080": "UBTU-24-700080", "UBTU-22-232085": "UBTU-24-700060",
    "UBTU-22-232090": "UBTU-24-700090", "UBTU-22-232095": "UBTU-24-700070",
    "UBTU-22-232100": "UBTU-24-700040", "UBTU-22-232105": "UBTU-24-700050",
    "UBTU-22-232110": "UBTU-24-901240", "UBTU-22-232120": "UBTU-24-700110",
    "UBTU-22-232125": "UBTU-24-700100", "UBTU-22-232140": "UBTU-24-700030",
    "UBTU-22-232145": "UBTU-24-600150", "UBTU-22-232030": "UBTU-24-700150",
    "UBTU-22-232130": "UBTU-24-700140", "UBTU-22-232135": "UBTU-24-700130",
    "UBTU-22-651015": "UBTU-24-100110", "UBTU-22-651020": "UBTU-24-100130",
    "UBTU-22-651030": "UBTU-24-90890", "UBTU-22-652015": "UBTU-24-200090",
    "UBTU-22-653020": "UBTU-24-100450", "UBTU-22-653025": "UBTU-24-900980",
    "UBTU-22-653030": None,  # disk_full_action
    "UBTU-22-653040": "UBTU-24-900960", "UBTU-22-653045": "UBTU-24-901300",
    "UBTU-22-653050": "UBTU-24-901310", "UBTU-22-653055": "UBTU-24-901350",
    "UBTU-22-653060": "UBTU-24-901380", "UBTU-22-653065": "UBTU-24-900040",
    "UBTU-22-653070": "UBTU-24-900050", "UBTU-22-653075": "UBTU-24-900060",
    "UBTU-22-654010": "UBTU-24-900220", "UBTU-22-654015": "UBTU-24-900240",
    "UBTU-22-654020": "UBTU-24-900300", "UBTU-22-654025": "UBTU-24-900210",
    "UBTU-22-654030": "UBTU-24-900080", "UBTU-22-654035": "UBTU-24-900190",
    "UBTU-22-654040": "UBTU-24-900320", "UBTU-22-654045": "UBTU-24-900750",
    "UBTU-22-654050": "UBTU-24-900290", "UBTU-22-654055": "UBTU-24-900740",
    "UBTU-22-654060": "UBTU-24-900730", "UBTU-22-654065": "UBTU-24-900090",
    "UBTU-22-654070": "UBTU-24-900200", "UBTU-22-654075": "UBTU-24-900330",
    "UBTU-22-654080": "UBTU-24-900270", "UBTU-22-654085": "UBTU-24-900230",
    "UBTU-22-654090": "UBTU-24-900110", "UBTU-22-654095": "UBTU-24-900120",
    "UBTU-22-654100": "UBTU-24-900070", "UBTU-22-654105": "UBTU-24-900170",
    "UBTU-22-654110": "UBTU-24-900180", "UBTU-22-654115": "UBTU-24-900100",
    "UBTU-22-654120": "UBTU-24-900280", "UBTU-22-654125": "UBTU-24-900310",
    "UBTU-22-654130": "UBTU-24-200290", "UBTU-22-654135": "UBTU-24-200310",
    "UBTU-22-654140": "UBTU-24-200320", "UBTU-22-654145": "UBTU-24-200280",
    "UBTU-22-654150": "UBTU-24-200300", "UBTU-22-654155": "UBTU-24-900150",
    "UBTU-22-654160": "UBTU-24-900140", "UBTU-22-654165": "UBTU-24-900160",
    "UBTU-22-654170": "UBTU-24-900350", "UBTU-22-654175": "UBTU-24-900340",
    "UBTU-22-654180": "UBTU-24-900130", "UBTU-22-654185": "UBTU-24-900540",
    "UBTU-22-654190": "UBTU-24-300029", "UBTU-22-654195": "UBTU-24-900610",
    "UBTU-22-654200": "UBTU-24-900590", "UBTU-22-654205": "UBTU-24-900600",
    "UBTU-22-654210": "UBTU-24-900250", "UBTU-22-654215": "UBTU-24-900260",
    "UBTU-22-654220": "UBTU-24-900510", "UBTU-22-654225": "UBTU-24-900520",
    "UBTU-22-654230": "UBTU-24-200580", "UBTU-22-654235": "UBTU-24-500010",
    "UBTU-22-654041": None,  # cron audit rules
}
# Where the 24.04 control is handled differently from its 22.04 counterpart, and why.
UBUNTU_2404_PHASE_CHANGES = {
    "UBTU-22-432010": ("bake", "waive-by-default"),  # 24.04 joins !authenticate and NOPASSWD in one check
}
# 24.04 controls whose fix or check kinds differ from their 22.04 counterpart's.
UBUNTU_2404_HANDLING_CHANGES = {
    "UBTU-24-300039",  # install usb-storage /bin/true (22.04: /bin/false), checked as written
    "UBTU-24-901350",  # log_group and the group of the existing audit logs
    "UBTU-24-700120",  # verified: rsyslog active, or /var/log 0755 or less
    "UBTU-24-400370",  # SSSD's ldap_user_certificate (22.04: pam_pkcs11's use_mappers)
}
# 24.04 rules the 22.04 catalogue has no counterpart for, automated or checked with the same kinds.
UBUNTU_2404_NEW = {"UBTU-24-100850", "UBTU-24-100860", "UBTU-24-400030", "UBTU-24-901250", "UBTU-24-909000",
                   "UBTU-24-200680", "UBTU-24-600230"}
SLEM_CAT1_NOT_BAKED = {
    "SLEM-05-212010": "first-boot",
    "SLEM-05-212015": "first-boot",
    "SLEM-05-671010": "first-boot",
    "SLEM-05-211010": "verify",
    "SLEM-05-411065": "bake",  # check only: nothing to fix in a clean image
}
# disk encryption (a platform/partitioning decision) and GUI autologin (no GUI): not in the catalogue
SLEM_CAT1_NOT_IN_CATALOGUE = {"SLEM-05-231040", "SLEM-05-272010"}
RKE2_CONFIG_LEVEL = {f"CNTR-R2-{n}" for n in (
    "000010", "000030", "000060", "000100", "000110", "000120", "000130", "000140", "000150", "000160",
    "000320", "000520", "000890", "000940", "000970", "001130", "001270", "001500")}


@pytest.mark.parametrize("name", NAMES)
def test_every_id_exists_and_the_join_is_the_xccdf(name: str) -> None:
    cat = load_catalogue(name)
    bench = load_benchmark(name)
    assert cat.benchmark is bench
    assert cat.controls
    for c in cat.controls:
        rule = bench.rules[c.id]
        assert c.rule is rule
        assert (c.rule.title, c.rule.cat, c.rule.vuln_id, c.rule.rule_id) == (
            rule.title, rule.cat, rule.vuln_id, rule.rule_id)
    assert len({c.id for c in cat.controls}) == len(cat.controls)


@pytest.mark.parametrize("name", NAMES)
def test_yaml_holds_no_xccdf_data(name: str) -> None:
    raw = yaml.safe_load((catalogue_dir() / f"{name}.yaml").read_text())
    assert set(raw) <= {"benchmark", "description", "controls"}
    for entry in raw["controls"]:
        assert set(entry) <= {"id", "phase", "applies_to", "reason", "fix", "check"}, entry["id"]
    text = (catalogue_dir() / f"{name}.yaml").read_text()
    bench = load_benchmark(name)
    assert not any(r.title in text or r.vuln_id + "\n" in text for r in bench.rules.values())


def test_all_rules_lists_every_xccdf_rule() -> None:
    cat = load_catalogue("ubuntu2204")
    rows = cat.all_rules()
    assert [r.stig_id for r, _ in rows] == list(cat.benchmark.rules)
    assert len(rows) == 188
    by_id = {r.stig_id: c for r, c in rows}
    assert by_id["UBTU-22-213010"] is cat.get("UBTU-22-213010")
    assert by_id["UBTU-22-231010"] is None  # disk encryption: not automated, reported as manual
    assert sum(c is not None for c in by_id.values()) == len(cat.controls)


def test_coverage_ubuntu2204() -> None:
    cat = load_catalogue("ubuntu2204")
    automated = [c for c in cat.controls if c.automated]
    assert len(automated) >= 80
    cat1 = [r for r in cat.benchmark.rules.values() if r.cat == 1]
    not_baked = {r.stig_id: c for r in cat1 if not (c := cat.get(r.stig_id)) or not c.automated}
    assert {k: c.phase for k, c in not_baked.items() if c is not None} == UBUNTU_CAT1_NOT_BAKED
    assert all(c is not None and c.reason for c in not_baked.values())
    assert len(cat1) - len(not_baked) == 11


def test_coverage_ubuntu2404() -> None:
    cat = load_catalogue("ubuntu2404")
    bench = cat.benchmark
    assert (len(bench.rules), bench.count_by_cat()) == (188, {1: 14, 2: 156, 3: 18})
    assert "Release: 1 " in bench.release_info
    automated = [c for c in cat.controls if c.automated]
    assert len(automated) == 148
    assert {k: sum(c.rule.cat == k for c in automated) for k in (1, 2, 3)} == {1: 10, 2: 127, 3: 11}
    assert Counter(c.phase for c in cat.controls) == {"bake": 149, "first-boot": 8, "verify": 7,
                                                      "waive-by-default": 3}
    cat1 = [r for r in bench.rules.values() if r.cat == 1]
    not_baked = {r.stig_id: c for r in cat1 if not (c := cat.get(r.stig_id)) or not c.automated}
    assert {k: c.phase for k, c in not_baked.items() if c is not None} == UBUNTU2404_CAT1_NOT_BAKED
    assert all(c is not None and c.reason for c in not_baked.values())
    # Ubuntu only: no DISA STIG for Debian maps to 24.04 (Debian keeps ubuntu2204)
    assert all(c.applies_to == ("ubuntu",) for c in cat.controls)
    assert cat.controls_for("debian") == [] and cat.controls_for("sle-micro") == []
    rows = cat.all_rules()
    assert [r.stig_id for r, _ in rows] == list(bench.rules) and len(rows) == 188
    assert dict((r.stig_id, c) for r, c in rows)["UBTU-24-300024"] is None  # no pam_lastlog.so in noble


def test_ubuntu2404_follows_the_2204_catalogue() -> None:
    c22, c24 = load_catalogue("ubuntu2204"), load_catalogue("ubuntu2404")
    assert set(UBUNTU_22_TO_24) == {c.id for c in c22.controls_for("ubuntu")}
    mapped = {v for v in UBUNTU_22_TO_24.values() if v}
    assert mapped | UBUNTU_2404_NEW == {c.id for c in c24.controls}
    assert not mapped & UBUNTU_2404_NEW
    for old_id, new_id in UBUNTU_22_TO_24.items():
        old = c22.get(old_id)
        assert old is not None
        if new_id is None:
            continue
        new = c24.get(new_id)
        assert new is not None, new_id
        assert (old.phase, new.phase) == UBUNTU_2404_PHASE_CHANGES.get(old_id, (old.phase, old.phase)), old_id
        # same handling: the same kinds of fix and check, except where 24.04's text differs
        same = [sorted({k.kind_name() for k in (*c.checks_for("ubuntu"), *c.fix_for("ubuntu"))})
                for c in (old, new)]
        assert same[0] == same[1] or new_id in UBUNTU_2404_HANDLING_CHANGES, (old_id, new_id, same)


def test_ubuntu2404_noble_specifics() -> None:
    cat = load_catalogue("ubuntu2404")

    def kinds(stig_id: str) -> list[dict[str, object]]:
        c = cat.get(stig_id)
        assert c is not None
        return [k.model_dump(exclude_defaults=True) for k in c.checks_for("ubuntu")]

    # socket-activated sshd: the check text wants ssh.service itself enabled and active
    assert kinds("UBTU-24-100810") == [{"type": "service_enabled", "unit": "ssh.service"},
                                       {"type": "service_active", "unit": "ssh.service"}]
    assert kinds("UBTU-24-600070") == [{"type": "systemd_mask", "unit": "kdump-tools.service"}]
    assert {k["unit"] for k in kinds("UBTU-24-100200") if "unit" in k} == {"rsyslog.service"}
    # the 24.04 cipher/MAC/KEX lists, in the XCCDF's order
    for sid, key in (("UBTU-24-100820", "Ciphers"), ("UBTU-24-100830", "MACs"),
                     ("UBTU-24-100840", "KexAlgorithms")):
        (opt,) = kinds(sid)
        assert opt["key"] == key and f"{key} {opt['value']}" in cat.benchmark.rules[sid].fixtext
    # a per-site or disruptive control is never baked by default
    for sid in ("UBTU-24-300021", "UBTU-24-100310", "UBTU-24-200680"):
        c = cat.get(sid)
        assert c is not None and c.phase == "waive-by-default" and c.reason


def test_coverage_slmicro5() -> None:
    cat = load_catalogue("slmicro5")
    assert sum(c.automated for c in cat.controls) >= 40
    cat1 = [r.stig_id for r in cat.benchmark.rules.values() if r.cat == 1]
    missing = {i for i in cat1 if cat.get(i) is None}
    assert missing == SLEM_CAT1_NOT_IN_CATALOGUE
    not_baked = {i: c.phase for i in cat1 if (c := cat.get(i)) is not None and not c.automated}
    assert not_baked == SLEM_CAT1_NOT_BAKED


def test_coverage_rke2_every_config_level_control() -> None:
    cat = load_catalogue("rke2")
    assert {c.id for c in cat.controls} == RKE2_CONFIG_LEVEL
    assert all(c.phase == "bake" and c.automated for c in cat.controls)
    cat1 = {r.stig_id for r in cat.benchmark.rules.values() if r.cat == 1}
    assert cat1 <= RKE2_CONFIG_LEVEL
    # agents run a kubelet only: their controls touch kubelet-arg or file permissions
    agent = cat.controls_for("agent")
    assert {c.id for c in agent} == {"CNTR-R2-000110", "CNTR-R2-000130", "CNTR-R2-000150", "CNTR-R2-000520",
                                     "CNTR-R2-000890", "CNTR-R2-000940"}
    for c in agent:
        for k in c.fix_for("agent"):
            assert getattr(k, "key", "kubelet-arg") == "kubelet-arg" or k.kind_name() == "file_mode"


def test_debian_gets_the_family_generic_controls() -> None:
    cat = load_catalogue("ubuntu2204")
    deb = cat.controls_for("debian")
    assert len(deb) >= 100
    assert all(c.family_generic for c in deb)
    ids = {c.id for c in deb}
    # sshd, sysctl, login.defs, PAM, audit rules, modprobe, apt, package removal
    assert {"UBTU-22-255025", "UBTU-22-213010", "UBTU-22-411030", "UBTU-22-611060", "UBTU-22-654020",
            "UBTU-22-291010", "UBTU-22-214010", "UBTU-22-215035"} <= ids
    # Ubuntu-only: the syslog group, Ubuntu Pro FIPS, the Ubuntu release
    assert not {"UBTU-22-232125", "UBTU-22-671010", "UBTU-22-211000"} & ids
    assert cat.controls_for("sle-micro") == []


def test_checks_default_to_the_fix() -> None:
    c = load_catalogue("ubuntu2204").get("UBTU-22-213010")
    assert c is not None and c.checks_for("ubuntu") == c.fix_for("ubuntu")
    explicit = load_catalogue("ubuntu2204").get("UBTU-22-255015")
    assert explicit is not None
    assert [k.kind_name() for k in explicit.checks_for("ubuntu")] == ["service_enabled", "service_active"]
    assert all(isinstance(k, Kind) for k in explicit.fix_for("debian"))


def _write(tmp_path: Path, text: str, name: str = "ubuntu2204") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


GOOD = """\
benchmark: ubuntu2204
controls:
  - id: UBTU-22-213010
    phase: bake
    applies_to: [ubuntu]
    fix:
      ubuntu:
        - {type: sysctl, key: kernel.dmesg_restrict, value: "1"}
"""


def test_parse_a_small_catalogue(tmp_path: Path) -> None:
    cat = parse_catalogue(_write(tmp_path, GOOD))
    assert [c.id for c in cat.controls] == ["UBTU-22-213010"]
    assert cat.controls[0].rule.title == "Ubuntu 22.04 LTS must restrict access to the kernel message buffer."


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace("UBTU-22-213010", "UBTU-22-999999"), r"ubuntu2204.yaml:3: UBTU-22-999999: not a rule of"),
    (GOOD.replace("value: \"1\"}", "value: \"1\", colour: red}"),
     r"UBTU-22-213010\.fix\.ubuntu\.0\.sysctl\.colour"),
    (GOOD.replace("    fix:", "    titel: x\n    fix:"), r"UBTU-22-213010\.titel: Extra inputs"),
    (GOOD.replace("applies_to: [ubuntu]", "applies_to: [debian]"), r"fix for ubuntu which is not in"),
    (GOOD.replace("phase: bake", "phase: verify"), r"phase verify needs a reason"),
    (GOOD.replace("[ubuntu]", "[ubuntu, server]").replace("      ubuntu:", "      all:"),
     r"UBTU-22-213010\.applies_to: unknown server"),
    (GOOD + GOOD[GOOD.index("  - id"):], r"UBTU-22-213010: duplicate control"),
    (GOOD.replace("type: sysctl", "type: sysctl_please"), r"does not match any of the expected tags"),
    (GOOD.replace("benchmark: ubuntu2204", "benchmark: slmicro5"), r"does not match the file name"),
])
def test_validation_errors_name_file_and_id(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as e:
        parse_catalogue(_write(tmp_path, text))
    assert str(tmp_path / "ubuntu2204.yaml") in str(e.value)


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    entry = GOOD[GOOD.index("  - id"):]
    text = GOOD + entry.replace("213010", "999998") + entry.replace("213010", "999997")
    with pytest.raises(ValidationError) as e:
        parse_catalogue(_write(tmp_path, text))
    assert [p.path for p in e.value.problems] == ["UBTU-22-999998", "UBTU-22-999997"]
    assert [p.line for p in e.value.problems] == [9, 15]


def test_catalogue_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, GOOD)
    monkeypatch.setenv("IMAGEFACTORY_STIG_CATALOGUE", str(tmp_path))
    assert [c.id for c in load_catalogue("ubuntu2204").controls] == ["UBTU-22-213010"]


def test_booted_ssh_lists_come_from_the_selected_catalogue() -> None:
    from imagefactory.stig.actions import Tailoring
    from imagefactory.stig.selection import Selected
    from imagefactory.testing.suites.test_stig import SSH_ALGORITHMS, stig_ssh_lists

    for name, target in (("ubuntu2204", "ubuntu"), ("ubuntu2204", "debian"), ("ubuntu2404", "ubuntu")):
        lists = stig_ssh_lists(Selected(load_catalogue(name), target, Tailoring()))
        rules = load_benchmark(name).rules
        for option, stig_id in SSH_ALGORITHMS[name].items():
            assert f"{option} {','.join(lists[option])}" in rules[stig_id].fixtext, (name, option)
    assert stig_ssh_lists(Selected(load_catalogue("ubuntu2404"), "ubuntu", Tailoring()))["Ciphers"][0] == (
        "aes256-gcm@openssh.com")
