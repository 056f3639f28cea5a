"""The VM tier for Ubuntu: ubuntu-22.04-base and ubuntu-24.04-base built from the Ubuntu archive
(mmdebstrap, -updates and -security in the same run, the shipped keyring), on a hybrid GPT disk
with Ubuntu's signed shim, GRUB and kernel; one clone boots under SeaBIOS, the other under OVMF
with Secure Boot enforced; hardened and reported against their own STIG benchmarks."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagefactory import keyrings
from imagefactory.distros import get as distro
from imagefactory.stig.catalogue import load_catalogue
from imagefactory.stig.report import load_report

pytestmark = [pytest.mark.integration, pytest.mark.vm]

RELEASES = {"22.04": ("jammy", "ubuntu2204", "5.15."), "24.04": ("noble", "ubuntu2404", "6.8.")}


@pytest.fixture(scope="module", params=sorted(RELEASES))
def ubuntu(request: pytest.FixtureRequest, build_once: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    return build_once(f"ubuntu-{request.param}-base") | {"release": request.param}


def test_built_from_the_archive_and_boot_tested(ubuntu: dict[str, Any]) -> None:
    codename, _, kernel = RELEASES[ubuntu["release"]]
    out = Path(ubuntu["path"])
    m = json.loads((out / "manifest.json").read_text())
    t = m["tests"]
    assert t["ok"] is True and t["failed"] == t["errors"] == 0, t["failures"]
    assert t["suites"] == ["hygiene", "recipe", "stig"]
    src = m["source"]
    assert (src["mirror"], src["suite"]) == ("http://archive.ubuntu.com/ubuntu", codename)
    assert src["keyring"] == str(keyrings.UBUNTU_ARCHIVE)
    assert src["signed_by"] == "F6ECB3762474EDA9D21B7022871920D1991BC93C"  # the 2018 archive key
    assert src["updates"]["suite"] == f"{codename}-updates"
    assert src["security"]["suite"] == f"{codename}-security"
    assert src["updates"]["signed_by"] == src["security"]["signed_by"] == src["signed_by"]
    names = {p["name"] for p in m["packages"]}
    assert {"linux-image-virtual", "netplan.io", "cloud-init", "shim-signed", "grub-efi-amd64-signed",
            "systemd-resolved" if ubuntu["release"] == "24.04" else "systemd"} <= names
    assert not names & set(distro("ubuntu").unwanted_packages)  # no snapd, Pro client, apport, popcon
    assert m["kernel"].startswith(kernel) and m["kernel"].endswith("-generic")
    assert m["steps"][0]["name"] == "check-mirror" and m["steps"][-1]["name"] == "boot-test"


def test_apparmor_policy_shipped_compiled_and_used(ubuntu: dict[str, Any]) -> None:
    """The build compiled the image's AppArmor policy for its kernel's feature set
    (steps/apparmor.py); each clone's `recipe` suite saw it boot from that cache, recompiling
    nothing (noble's ~90 profiles took 214 s of a TCG clone's CPU at first boot without it)."""
    out = Path(ubuntu["path"])
    cache = json.loads((out / "manifest.json").read_text())["apparmor_cache"]
    assert cache is not None and cache["features"].startswith("ubuntu-"), cache
    [(directory, profiles)] = cache["directories"].items()
    # entries: `.features` and one per profile (noble 98; jammy 4: lsb_release, nvidia_modprobe,
    # sbin.dhclient, usr.sbin.chronyd)
    assert directory.endswith(".0") and profiles > (50 if ubuntu["release"] == "24.04" else 3), cache
    junit = ET.parse(out / "junit.xml").getroot()
    cases = [c for c in junit.iter("testcase")
             if c.get("name", "").startswith("test_apparmor_policy_loaded_from_the_shipped_cache")]
    assert len(cases) == 2
    assert all(c.find(x) is None for c in cases for x in ("failure", "error", "skipped"))


def test_hybrid_disk_with_ubuntus_signed_boot_chain(ubuntu: dict[str, Any]) -> None:
    d = ubuntu["disk"]
    assert (d["table"], d["firmware"], d["secure_boot"]) == ("gpt", "hybrid", True)
    assert [(p["number"], p["role"]) for p in d["partitions"]] == [(14, "bios-boot"), (15, "esp"),
                                                                    (1, "root")]
    signers = d["signers"]
    assert any("(issuer: Microsoft Corporation UEFI CA 2011)" in s for s in signers["shim"]), signers
    for part in ("grub", "kernel"):
        assert any(s.startswith("Canonical Ltd. Secure Boot Signing") for s in signers[part]), signers


def test_each_clone_booted_on_its_firmware(ubuntu: dict[str, Any]) -> None:
    """Clone 0 under SeaBIOS, clone 1 under OVMF with Microsoft's keys and Secure Boot on: the
    in-guest test read /sys/firmware/efi, the SecureBoot variable and the kernel's own message."""
    junit = ET.parse(Path(ubuntu["path"]) / "junit.xml").getroot()
    cases = [c for c in junit.iter("testcase")
             if c.get("name", "").startswith("test_booted_on_the_declared_firmware")]
    assert len(cases) == 2
    assert all(c.find(x) is None for c in cases for x in ("failure", "error", "skipped"))
    log = (Path(ubuntu["path"]) / "build.log").read_text()
    assert "secureboot: Secure boot enabled" in log  # the UEFI clone's serial console, in the log
    assert " (bios, " in log and " (uefi-secure, " in log  # "booting <domain> (<firmware>, ..."


def test_stig_report_from_its_own_benchmark(ubuntu: dict[str, Any]) -> None:
    _, benchmark, _ = RELEASES[ubuntu["release"]]
    report = load_report(Path(ubuntu["path"]) / "stig-report.json")
    [b] = report.benchmarks
    cat = load_catalogue(benchmark)
    assert (b.benchmark, b.target) == (benchmark, "ubuntu")
    rows = {r.stig_id: r for r in b.rows}
    assert len(rows) == len(cat.benchmark.rules)  # every rule reported, none dropped
    applied = {c.id for c in cat.controls_for("ubuntu") if c.phase in ("bake", "verify")}
    assert {i for i in applied if rows[i].result != "pass"} == set()
    assert all(rows[i].source == "booted" for i in applied)
    assert not [i for i, r in rows.items() if r.result == "error"]
    first_boot = {c.id for c in cat.controls_for("ubuntu") if c.phase == "first-boot"}
    assert {i for i in first_boot if rows[i].result == "notchecked"} == first_boot  # never "pass"
    assert b.counts.open[1] == 0 and report.gate is not None and report.gate.passed
    # every open finding is carried by a shipped, justified waiver (stig/waivers/cloud-image.yaml)
    assert {i: r.waiver.waiver_id for i, r in rows.items() if r.result == "fail" and r.waiver} != {}
    assert [i for i, r in rows.items() if r.result == "fail" and r.waiver is None] == []
