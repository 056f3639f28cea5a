"""SLE Micro: its own family (zypper, read-only root, transactional-update)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from .base import Distro


class SLEMicro(Distro):
    family = "sle-micro"
    releases: ClassVar[dict[str, str]] = {"5.5": "SLE-Micro-5.5"}
    # SLE Micro is only built from SUSE's own qcow2 (no zypper bootstrap on a Debian host).
    builders: ClassVar[dict[str, tuple[str, ...]]] = {"packer": ("cloud-image",)}
    default_user = "sles"
    rke2_prefix = "/opt/rke2"
    zarf_dir = "/opt/zarf"
    min_disk = 20 * 1024**3
    package_caches: ClassVar[tuple[str, ...]] = ("var/cache/zypp",)
    package_manager = "transactional-update"
    # SUSE Customer Center / an RMT server over HTTPS (CONNECT through the proxy)
    default_package_mirrors: ClassVar[tuple[str, ...]] = (
        "https://updates.suse.com/", "https://scc.suse.com/")

    def installed_packages(self, root: Path) -> list[tuple[str, str]]:
        raise NotImplementedError("SLE Micro package lists come from the Packer builder (rpm -qa)")

    def kernel_paths(self, root: Path) -> tuple[str, str]:
        return "/boot/vmlinuz", "/boot/initrd"
