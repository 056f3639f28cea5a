"""The recipe was applied: files, services, kernel command line, packages, root size."""

from __future__ import annotations

from typing import Any

Clone = tuple[dict[str, Any], Any]


def test_kernel_cmdline(clone: Clone, target: dict[str, Any]) -> None:
    _, host = clone
    cmdline = host.file("/proc/cmdline").content_string.split()
    for arg in target["recipe"]["kernel"]["cmdline"]:
        assert arg in cmdline, f"{arg} missing from {cmdline}"


def test_files(clone: Clone, target: dict[str, Any]) -> None:
    _, host = clone
    for spec in target["recipe"]["files"]:
        f = host.file(spec["path"])
        assert f.exists, spec["path"]
        assert f.mode == int(spec["mode"], 8), (spec["path"], oct(f.mode))
        user, group = spec["owner"].split(":")
        assert (f.user, f.group) == (user, group), spec["path"]
        if spec.get("content") is not None:
            assert f.content_string == spec["content"]


def test_services(clone: Clone, target: dict[str, Any]) -> None:
    _, host = clone
    services = target["recipe"]["services"]
    for unit in services["enable"]:
        assert host.run(f"systemctl is-enabled {unit}").stdout.strip() in ("enabled", "alias"), unit
    for unit in services["disable"]:
        assert host.run(f"systemctl is-enabled {unit}").stdout.strip() == "disabled", unit
    for unit in services["mask"]:
        assert host.run(f"systemctl is-enabled {unit}").stdout.strip() == "masked", unit


def test_packages(clone: Clone, target: dict[str, Any]) -> None:
    _, host = clone
    for pkg in target["recipe"]["packages"]["install"]:
        assert host.package(pkg).is_installed, pkg
    for pkg in target["recipe"]["packages"]["remove"]:
        assert not host.package(pkg).is_installed, pkg


def test_root_filesystem_grew_to_disk(clone: Clone, target: dict[str, Any]) -> None:
    # The boot test gives each clone a disk 1 GiB larger than the image: growpart and
    # resize2fs must have used it on first boot.
    _, host = clone
    disk = int(host.run("lsblk -bdno SIZE /dev/vda").stdout.strip())
    root = int(host.run("df -B1 --output=size / | tail -1").stdout.strip())
    assert disk > target["image_virtual_size"]
    assert root > target["image_virtual_size"], (root, target["image_virtual_size"])
