"""The recipe was applied: files, services, kernel command line, packages, root size.

The facts each test reads are gathered up front (`wanted`, see conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from imagefactory.testing import facts as F

Clone = tuple[dict[str, Any], F.FactStore]

DISK_SIZE = "lsblk -bdno SIZE /dev/vda"
ROOT_SIZE = "df -B1 --output=size / | tail -1"
# The SecureBoot EFI variable: 4 bytes of attributes, then 1 when Secure Boot is enforced.
SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
SECURE_BOOT_STATE = f"od -An -tu1 {SECURE_BOOT_VAR}"
ESP_LOADER = "/boot/efi/EFI/BOOT/BOOTX64.EFI"
APT_PERIODIC = "apt-config dump APT::Periodic"
APT_TIMERS = ("apt-daily.timer", "apt-daily-upgrade.timer")
NETPLAN = "/etc/netplan/50-cloud-init.yaml"
NETWORKCTL = "networkctl status eth0 --no-pager"
IFUPDOWN = "/etc/network/interfaces.d/50-cloud-init"
ADDRESS = "ip -4 addr show eth0"
# The compiled AppArmor policy (steps/apparmor.py): each cache directory (one per kernel feature
# set) and its entries, `.features` (what it was compiled for) included, with their ctimes: the
# parser stamps a compiled profile with its source's mtime (its freshness check), so only the
# ctime says when it was written.
APPARMOR_CACHE = "find /var/cache/apparmor -mindepth 1 -maxdepth 2 -printf '%C@\\t%p\\n'"
# Profiles a service recompiles at every start, cache or not: Ubuntu's rsyslog.service runs
# /usr/lib/rsyslog/reload-apparmor-profile (`apparmor_parser -r -W -T`, skip reading the cache).
FORCED_RECOMPILE = frozenset({"usr.sbin.rsyslogd"})


def wanted(target: dict[str, Any], clone: dict[str, Any]) -> Iterator[F.Item]:
    """What this suite reads from a clone."""
    recipe = target["recipe"]
    family = recipe["os"]["family"]
    yield F.read("/proc/cmdline")
    for spec in recipe["files"]:
        yield F.stat(spec["path"])
        yield F.read(spec["path"])
    services = recipe["services"]
    yield from map(F.is_enabled, (*services["enable"], *services["disable"], *services["mask"]))
    yield F.PACKAGES
    yield from map(F.cmd, (DISK_SIZE, ROOT_SIZE, ADDRESS))
    yield F.stat("/sys/firmware/efi")
    yield from (F.cmd(APPARMOR_CACHE), F.read("/proc/stat"))
    if clone["firmware"] != "bios":
        yield from (F.cmd(SECURE_BOOT_STATE), F.cmd("dmesg"), F.read("/proc/mounts"), F.stat(ESP_LOADER))
    if family in ("debian", "ubuntu"):
        yield F.cmd(APT_PERIODIC)
        yield from map(F.is_enabled, APT_TIMERS)
    if family == "ubuntu":
        yield from (F.is_enabled("motd-news.timer"), F.read("/etc/default/motd-news"), F.stat(NETPLAN),
                    F.read(NETPLAN), F.cmd(NETWORKCTL), F.is_active("systemd-resolved"))
    elif family == "debian":
        yield F.read(IFUPDOWN)


def test_kernel_cmdline(clone: Clone, target: dict[str, Any]) -> None:
    _, g = clone
    cmdline = g.text("/proc/cmdline").split()
    for arg in target["recipe"]["kernel"]["cmdline"]:
        assert arg in cmdline, f"{arg} missing from {cmdline}"


def test_files(clone: Clone, target: dict[str, Any]) -> None:
    _, g = clone
    for spec in target["recipe"]["files"]:
        f = g.file(spec["path"])
        assert f.exists, spec["path"]
        assert f.mode == int(spec["mode"], 8), (spec["path"], oct(f.mode))
        user, group = spec["owner"].split(":")
        assert (f.user, f.group) == (user, group), spec["path"]
        if spec.get("content") is not None:
            assert g.text(spec["path"]) == spec["content"]


def test_services(clone: Clone, target: dict[str, Any]) -> None:
    _, g = clone
    services = target["recipe"]["services"]
    for unit in services["enable"]:
        assert g.is_enabled(unit) in ("enabled", "alias"), unit
    for unit in services["disable"]:
        assert g.is_enabled(unit) == "disabled", unit
    for unit in services["mask"]:
        assert g.is_enabled(unit) == "masked", unit


def test_packages(clone: Clone, target: dict[str, Any]) -> None:
    _, g = clone
    for pkg in target["recipe"]["packages"]["install"]:
        assert g.installed(pkg), pkg
    for pkg in target["recipe"]["packages"]["remove"]:
        assert not g.installed(pkg), pkg


def test_root_filesystem_grew_to_disk(clone: Clone, target: dict[str, Any]) -> None:
    # The boot test gives each clone a disk 1 GiB larger than the image: growpart and
    # resize2fs must have used it on first boot.
    _, g = clone
    disk = int(g.cmd(DISK_SIZE).stdout.strip())
    root = int(g.cmd(ROOT_SIZE).stdout.strip())
    assert disk > target["image_virtual_size"]
    assert root > target["image_virtual_size"], (root, target["image_virtual_size"])


def test_booted_on_the_declared_firmware(clone: Clone, target: dict[str, Any]) -> None:
    # disk.firmware: a hybrid disk boots one clone per firmware; the guest says which it got.
    info, g = clone
    firmware = info["firmware"]
    assert g.file("/sys/firmware/efi").is_directory == (firmware != "bios"), firmware
    if firmware == "bios":
        return
    state = g.cmd(SECURE_BOOT_STATE).stdout.split()
    assert state and state[-1] == ("1" if firmware == "uefi-secure" else "0"), (firmware, state)
    if firmware == "uefi-secure":
        assert "Secure boot enabled" in g.cmd("dmesg").stdout  # the kernel agrees (lockdown)
    # the ESP the firmware booted from is the image's own, mounted where package updates expect it
    assert g.mount_fs("/boot/efi") == "vfat"
    assert g.file(ESP_LOADER).is_file


def test_apt_periodic_jobs_as_the_recipe_says(clone: Clone, target: dict[str, Any]) -> None:
    if target["recipe"]["os"]["family"] not in ("debian", "ubuntu"):
        return
    _, g = clone
    on = target["recipe"]["packages"]["auto_updates"]
    dump = g.cmd(APT_PERIODIC).stdout
    for key in ("Update-Package-Lists", "Unattended-Upgrade"):
        assert f'APT::Periodic::{key} "{1 if on else 0}";' in dump, dump
    for timer in APT_TIMERS:
        state = g.is_enabled(timer)
        assert state == ("enabled" if on else "masked"), (timer, state)


def test_nothing_phones_home(clone: Clone, target: dict[str, Any]) -> None:
    # Packages the family never ships (snapd, Ubuntu Pro client, apport, popcon, ...) are absent
    # and Ubuntu's motd news fetch is off.
    _, g = clone
    present = [p for p in target["distro"]["unwanted_packages"] if g.installed(p)]
    assert present == []
    if target["recipe"]["os"]["family"] == "ubuntu":
        assert g.is_enabled("motd-news.timer") == "masked"
        assert "ENABLED=0" in g.text("/etc/default/motd-news")


def test_network_rendered_by_cloud_init(clone: Clone, target: dict[str, Any]) -> None:
    # Ubuntu: netplan (applied by systemd-networkd); Debian: ifupdown. Either way cloud-init
    # wrote it this boot from the seed's network-config, and the interface has its address.
    _, g = clone
    family = target["recipe"]["os"]["family"]
    if family == "ubuntu":
        assert g.file(NETPLAN).exists and "eth0" in g.text(NETPLAN)
        status = g.cmd(NETWORKCTL).stdout
        assert "configured" in status and "10.0.2." in status, status
        assert g.is_active("systemd-resolved")
    elif family == "debian":
        assert "eth0" in g.text(IFUPDOWN)
    assert "inet 10.0.2." in g.cmd(ADDRESS).stdout


def test_apparmor_policy_loaded_from_the_shipped_cache(clone: Clone) -> None:
    # An image that ships compiled AppArmor policy (a cache directory whose `.features` predates
    # this boot) must have booted from it: no profile in it rewritten this boot, no directory
    # compiled for another feature set. Either would mean that the kernel's features differ from
    # the captured set the build compiled for (imagefactory/apparmor_features/): refresh it. An
    # image without a shipped cache compiles at boot as apparmor.service always did; nothing to
    # vouch for. The directory's own time is not evidence: a profile a service recompiles on
    # purpose (FORCED_RECOMPILE) renames its new copy into it.
    _, g = clone
    limit = g.boot_time() - 5  # a few seconds of slack for the clock settling right after boot
    entries: dict[str, list[tuple[float, str]]] = {}
    for line in g.cmd(APPARMOR_CACHE).stdout.splitlines():
        ctime, _, path = line.partition("\t")
        top = "/".join(path.split("/")[:5])  # /var/cache/apparmor/<hash>.0
        if path != top:
            entries.setdefault(top, []).append((float(ctime), path))
    shipped = {top for top, items in entries.items()
               if any(p == f"{top}/.features" and t <= limit for t, p in items)}
    if not shipped:
        return
    other = sorted(set(entries) - shipped)
    assert other == [], f"compiled at boot for another feature set than {sorted(shipped)}: {other}"
    rewritten = [p for top in shipped for t, p in entries[top]
                 if t > limit and p.rsplit("/", 1)[-1] not in FORCED_RECOMPILE]
    assert rewritten == [], f"recompiled at boot despite the shipped cache: {rewritten}"
