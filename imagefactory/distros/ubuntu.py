"""Ubuntu: Debian with its own releases, archive keyring, kernel flavour, netplan networking
(rendered by cloud-init), cloud-init user `ubuntu`, and nothing that phones home or nags."""

from __future__ import annotations

import os
from typing import ClassVar

from .. import keyrings
from ..fsutil import in_root, write_in_root
from .base import ChrootRoot
from .debian import LOCALE, Debian

# Ubuntu's own message-of-the-day news fetch (motd.ubuntu.com) and its timer.
MOTD_NEWS = "ENABLED=0\n"


class Ubuntu(Debian):
    family = "ubuntu"
    releases: ClassVar[dict[str, str]] = {"22.04": "jammy", "24.04": "noble"}
    base_packages: ClassVar[tuple[str, ...]] = (
        *(p for p in Debian.base_packages if p not in ("ifupdown", "isc-dhcp-client")),
        "netplan.io",  # cloud-init renders netplan on Ubuntu; systemd-networkd applies it
        "initramfs-tools",  # the kernel only recommends it (mmdebstrap installs no recommends)
        "lsb-release",  # cloud-init's Ubuntu distro module asks lsb_release at every boot
    )
    # noble split systemd-resolved out of systemd; without it DNS is unconfigured
    release_packages: ClassVar[dict[str, tuple[str, ...]]] = {"24.04": ("systemd-resolved",)}
    kernel_package = "linux-image-virtual"
    unwanted_packages: ClassVar[tuple[str, ...]] = (
        "snapd", "ubuntu-advantage-tools", "ubuntu-pro-client", "apport", "whoopsie",
        "popularity-contest", "motd-news-config")
    default_keyring: ClassVar[str | None] = str(keyrings.UBUNTU_ARCHIVE)
    efi_shim: ClassVar[tuple[str, ...]] = ("/usr/lib/shim/shimx64.efi.signed",)  # an alternatives link
    efi_mokmanager: ClassVar[tuple[str, ...]] = ("/usr/lib/shim/mmx64.efi",)
    efi_vendor = "ubuntu"
    default_user = "ubuntu"
    default_package_mirrors: ClassVar[tuple[str, ...]] = (
        "http://archive.ubuntu.com/ubuntu", "http://security.ubuntu.com/ubuntu")
    min_disk = 4 * 1024**3

    def configure(self, ctx: ChrootRoot) -> None:
        super().configure(ctx)
        write_in_root(ctx.root, "etc/default/motd-news", MOTD_NEWS)
        ctx.in_root(["systemctl", "mask", "motd-news.timer"])
        # systemd-resolved's stub, as on Ubuntu's own images (mmdebstrap leaves the build host's
        # file or nothing; sealing keeps a symlink and drops a copied file).
        resolv = in_root(ctx.root, "etc/resolv.conf")
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        os.symlink("../run/systemd/resolve/stub-resolv.conf", resolv)

    def generate_locale(self, ctx: ChrootRoot) -> None:
        # Ubuntu's locale-gen takes the locale to build (no /etc/locale.gen by default).
        ctx.in_root(["locale-gen", LOCALE])
