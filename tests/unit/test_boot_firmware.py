"""Which firmware each clone boots on, and the libvirt domain that gives it that firmware."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from imagefactory.build import build
from imagefactory.errors import UserError
from imagefactory.recipes import RecipeBook
from imagefactory.recipes.model import Disk
from imagefactory.testing import libvirt as lv
from imagefactory.testing.harness import clone_firmwares
from tests.conftest import RECIPES


def test_clones_cover_every_declared_firmware() -> None:
    assert clone_firmwares(Disk(firmware="hybrid")) == ("bios", "uefi-secure")
    assert clone_firmwares(Disk(firmware="hybrid", secure_boot=False)) == ("bios", "uefi")
    assert clone_firmwares(Disk(firmware="uefi")) == ("uefi-secure",)
    assert clone_firmwares(Disk(firmware="bios")) == ("bios",)
    # one clone of a hybrid disk: the Secure Boot chain, which a BIOS boot cannot vouch for
    assert clone_firmwares(Disk(firmware="hybrid"), clones=1) == ("uefi-secure",)
    assert clone_firmwares(Disk(firmware="hybrid"), clones=3) == ("bios", "uefi-secure")
    assert clone_firmwares(Disk(firmware="bios"), clones=1) == ("bios",)


def guest(tmp_path: Path, firmware: lv.GuestFirmware) -> lv.Guest:
    return lv.Guest(name="imagefactory-t-0", index=0, port=2222, mac="52:54:00:00:00:01",
                    overlay=tmp_path / "o.qcow2", seed=tmp_path / "s.iso", console=tmp_path / "c.log",
                    instance_id="i", hostname="h", firmware=firmware)


def test_bios_guest_is_i440fx_with_a_virtio_seed(tmp_path: Path) -> None:
    dom = ET.fromstring(lv.domain_xml(guest(tmp_path, "bios"), "tcg", 1024, 2))
    assert dom.find("os/type").get("machine") == "pc"  # type: ignore[union-attr]
    assert dom.find("os/loader") is None and dom.find("features/smm") is None
    disks = [(t.get("dev"), t.get("bus")) for t in dom.findall("devices/disk/target")]
    assert disks == [("vda", "virtio"), ("vdb", "virtio")]


def test_secure_boot_guest_is_q35_with_smm_secure_loader_and_microsoft_keys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lv, "OVMF_DIR", tmp_path)  # Debian's ovmf file names, without the package
    for code, template in lv.OVMF.values():
        (tmp_path / code).touch()
        (tmp_path / template).touch()
    nvram = tmp_path / "clone0_VARS.fd"
    dom = ET.fromstring(lv.domain_xml(guest(tmp_path, "uefi-secure"), "tcg", 1024, 2, nvram))
    assert dom.find("os/type").get("machine") == "q35"  # type: ignore[union-attr]
    loader = dom.find("os/loader")
    assert loader is not None and loader.get("secure") == "yes"
    assert (loader.text or "").endswith("OVMF_CODE_4M.secboot.fd")
    assert dom.find("os/nvram").get("template").endswith("OVMF_VARS_4M.ms.fd")  # type: ignore[union-attr]
    assert dom.find("os/nvram").text == str(nvram)  # type: ignore[union-attr]
    assert dom.find("features/smm").get("state") == "on"  # type: ignore[union-attr]
    # the seed is a virtio disk on q35 too (Debian's cloud kernel has no AHCI driver)
    disks = [(t.get("dev"), t.get("bus")) for t in dom.findall("devices/disk/target")]
    assert disks == [("vda", "virtio"), ("vdb", "virtio")]
    assert dom.find("devices/disk[2]/readonly") is not None
    args = [a.get("value") for a in dom.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    assert any(a and "bus=pcie.0" in a for a in args) and any(a and "restrict=on" in a for a in args)
    plain = ET.fromstring(lv.domain_xml(guest(tmp_path, "uefi"), "tcg", 1024, 2, nvram))
    assert plain.find("os/loader").get("secure") == "no"  # type: ignore[union-attr]
    assert plain.find("features/smm") is None


def test_uefi_without_ovmf_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lv, "OVMF_DIR", tmp_path)
    with pytest.raises(UserError, match="uefi-secure boot needs OVMF") as e:
        lv.ovmf_files("uefi-secure")
    assert "ovmf" in (e.value.hint or "")
    with pytest.raises(UserError, match="needs OVMF"):
        lv.domain_xml(guest(tmp_path, "uefi"), "tcg", 1024, 2, tmp_path / "v.fd")


def test_a_uefi_recipe_on_a_host_without_ovmf_fails_before_building(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lv, "OVMF_DIR", tmp_path / "no-ovmf")
    loaded = RecipeBook(RECIPES).load("ubuntu-22.04-base")
    with pytest.raises(UserError, match="uefi-secure boot needs OVMF"):
        build(loaded, tmp_path / "work")
    assert not (tmp_path / "work").exists()  # nothing started, nothing to clean up


def test_tcg_guests_share_the_host_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under TCG the guests that run at once get one vCPU per host core between them (at least
    one each, never more than asked); KVM gets what was asked."""
    monkeypatch.setattr(lv.os, "sched_getaffinity", lambda _pid: {0, 1})
    assert lv.guest_cpus(2, "tcg", 1) == 2
    assert lv.guest_cpus(2, "tcg", 2) == 1
    assert lv.guest_cpus(4, "tcg", 3) == 1
    assert lv.guest_cpus(1, "tcg", 1) == 1
    assert lv.guest_cpus(4, "kvm", 3) == 4
    monkeypatch.setattr(lv.os, "sched_getaffinity", lambda _pid: set(range(8)))
    assert lv.guest_cpus(2, "tcg", 2) == 2
    assert lv.guest_cpus(8, "tcg", 2) == 4


def test_a_recipe_can_ask_for_its_vcpus_under_tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tests.tcg_cpus: asked` (ubuntu-24.04-base: noble boots slower on one vCPU): every clone
    gets `tests.cpus`; the recipes default to sharing."""
    monkeypatch.setattr(lv.os, "sched_getaffinity", lambda _pid: {0, 1})
    assert lv.guest_cpus(2, "tcg", 2, "asked") == 2
    assert lv.guest_cpus(2, "tcg", 2, "shared") == 1
    book = RecipeBook(RECIPES)
    assert book.load("ubuntu-22.04-base").recipe.tests.tcg_cpus == "shared"
