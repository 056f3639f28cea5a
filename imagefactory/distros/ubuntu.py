"""Ubuntu: Debian with its own releases, kernel flavour, netplan and cloud-init user `ubuntu`."""

from __future__ import annotations

from typing import ClassVar

from .debian import Debian


class Ubuntu(Debian):
    family = "ubuntu"
    releases: ClassVar[dict[str, str]] = {"22.04": "jammy", "24.04": "noble"}
    base_packages: ClassVar[tuple[str, ...]] = (
        *(p for p in Debian.base_packages
          if p not in ("linux-image-cloud-amd64", "ifupdown", "isc-dhcp-client")),
        "linux-image-virtual",
        "netplan.io",
    )
    default_user = "ubuntu"
    default_package_mirrors: ClassVar[tuple[str, ...]] = (
        "http://archive.ubuntu.com/ubuntu", "http://security.ubuntu.com/ubuntu")
    min_disk = 4 * 1024**3
