"""Debian family: mmdebstrap roots, apt/dpkg, ifupdown networking, cloud-init user `debian`."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from ..fsutil import read_in_root, resolve_in_root, write_in_root
from ..recipes.model import Recipe
from .base import ChrootRoot, Distro

CLOUD_CFG = """# Written by imagefactory.
# Only the datasources a golden image meets: NoCloud (boot tests, Harvester/KubeVirt) and
# ConfigDrive; probing for every cloud's metadata service delays each first boot.
datasource_list: [NoCloud, ConfigDrive, None]
# Map the instance's hostname to 127.0.1.1 (else sudo cannot resolve it); nothing else.
manage_etc_hosts: localhost
"""
LOCALE = "en_US.UTF-8"  # cloud-init's default locale; without it the locale module fails
PERIODIC_TIMERS = ("apt-daily.timer", "apt-daily-upgrade.timer")


class Debian(Distro):
    family = "debian"
    releases: ClassVar[dict[str, str]] = {"11": "bullseye", "12": "bookworm", "13": "trixie"}
    base_packages: ClassVar[tuple[str, ...]] = (
        "apt",  # in Debian's minbase anyway; Ubuntu's apt is not Essential and would be missing
        "systemd-sysv",
        "dbus",
        "openssh-server",
        "sudo",  # cloud-init's default user and Packer's shutdown command need it
        "cloud-init",
        "cloud-guest-utils",  # growpart: the root grows to the VM's disk
        "ifupdown",  # cloud-init's network renderer on Debian
        "isc-dhcp-client",
        "locales",  # without it cloud-init reports an error
        "netbase",
        "ca-certificates",
    )
    builders: ClassVar[dict[str, tuple[str, ...]]] = {
        "rootfs": ("mmdebstrap",),
        "packer": ("cloud-image", "local-image"),
    }
    default_user = "debian"
    kernel_package = "linux-image-cloud-amd64"  # signed (Secure Boot), virtio drivers, small
    default_keyring: ClassVar[str | None] = "/usr/share/keyrings/debian-archive-keyring.gpg"
    # dosfstools: systemd fscks the ESP before mounting it at /boot/efi (fstab pass 1)
    efi_packages: ClassVar[tuple[str, ...]] = ("shim-signed", "grub-efi-amd64-signed", "dosfstools")
    efi_shim: ClassVar[tuple[str, ...]] = ("/usr/lib/shim/shimx64.efi.signed",)
    efi_grub: ClassVar[tuple[str, ...]] = ("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",)
    efi_mokmanager: ClassVar[tuple[str, ...]] = ("/usr/lib/shim/mmx64.efi.signed", "/usr/lib/shim/mmx64.efi")
    efi_vendor = "debian"
    default_package_mirrors: ClassVar[tuple[str, ...]] = (
        "http://deb.debian.org/debian", "http://deb.debian.org/debian-security",
        "http://security.debian.org/")
    package_caches: ClassVar[tuple[str, ...]] = (
        "var/lib/apt/lists",
        "var/cache/apt",
        "var/cache/debconf/templates.dat-old",
        "var/cache/debconf/config.dat-old",
        "var/lib/dpkg/status-old",
    )

    def feature_packages(self, recipe: Recipe) -> tuple[str, ...]:
        return ("unattended-upgrades",) if recipe.packages.auto_updates else ()

    def configure(self, ctx: ChrootRoot) -> None:
        # In-root writes (fsutil): a base image's links never lead outside its root.
        write_in_root(ctx.root, "etc/cloud/cloud.cfg.d/90-imagefactory.cfg", CLOUD_CFG)
        self.generate_locale(ctx)
        write_in_root(ctx.root, "etc/default/locale", f"LANG={LOCALE}\n")
        self.configure_periodic_updates(ctx)

    def generate_locale(self, ctx: ChrootRoot) -> None:
        text = read_in_root(ctx.root, "etc/locale.gen") or ""
        if f"\n{LOCALE} UTF-8" not in f"\n{text}":
            write_in_root(ctx.root, "etc/locale.gen", text + f"{LOCALE} UTF-8\n")
        ctx.in_root(["locale-gen"])

    def configure_periodic_updates(self, ctx: ChrootRoot) -> None:
        """apt's periodic jobs as the recipe says (`packages.auto_updates`): off by default - an
        air-gapped node has no archive to reach, and an image changes through a rebuild - so the
        timers are masked and APT::Periodic is 0; on, unattended-upgrades (installed with the
        bootstrap) applies security updates daily."""
        on = ctx.recipe.packages.auto_updates
        value = "1" if on else "0"
        write_in_root(
            ctx.root, "etc/apt/apt.conf.d/20auto-upgrades",
            "// Written by imagefactory (recipe key packages.auto_updates).\n"
            f'APT::Periodic::Update-Package-Lists "{value}";\n'
            f'APT::Periodic::Unattended-Upgrade "{value}";\n')
        ctx.in_root(["systemctl", "unmask" if on else "mask", *PERIODIC_TIMERS])
        if on:
            ctx.in_root(["systemctl", "enable", *PERIODIC_TIMERS])

    def installed_packages(self, root: Path) -> list[tuple[str, str]]:
        # Read dpkg's status file directly: no chroot, no subprocess, same answer.
        status = read_in_root(root, "var/lib/dpkg/status") or ""
        out: list[tuple[str, str]] = []
        for para in status.split("\n\n"):
            fields: dict[str, str] = {}
            for line in para.splitlines():
                if line and not line[0].isspace() and ":" in line:
                    k, _, v = line.partition(":")
                    fields[k] = v.strip()
            if fields.get("Status", "").endswith(" installed") and "Package" in fields:
                out.append((fields["Package"], fields.get("Version", "")))
        return sorted(out)

    def kernel_paths(self, root: Path) -> tuple[str, str]:
        # The /vmlinuz and /initrd.img symlinks follow kernel upgrades made inside the guest.
        for kernel, initrd in (("/vmlinuz", "/initrd.img"), ("/boot/vmlinuz", "/boot/initrd.img")):
            if resolve_in_root(root, kernel).exists() and resolve_in_root(root, initrd).exists():
                return kernel, initrd
        raise FileNotFoundError("no kernel/initrd symlinks in the root (is a linux-image installed?)")
