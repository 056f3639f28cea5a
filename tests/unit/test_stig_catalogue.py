"""The control catalogues (stig/*.yaml): every id exists in its XCCDF, the join carries DISA's
title and CAT, coverage per benchmark, and validation errors that name the file and the id."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imagefactory.errors import ValidationError
from imagefactory.stig.catalogue import catalogue_dir, load_catalogue, parse_catalogue
from imagefactory.stig.kinds import Kind
from imagefactory.stig.xccdf import load_benchmark

NAMES = ("ubuntu2204", "slmicro5", "rke2")

# CAT I rules that cannot be baked into an image, with the phase they are handled in.
UBUNTU_CAT1_NOT_BAKED = {
    "UBTU-22-212010": "first-boot",  # GRUB password hash: per-site secret
    "UBTU-22-432015": "first-boot",  # sudo group membership: site decision
    "UBTU-22-612040": "first-boot",  # smart-card PKI mapping
    "UBTU-22-671010": "first-boot",  # FIPS: Ubuntu Pro + reboot
    "UBTU-22-211000": "verify",  # vendor support: date / subscription
}
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
