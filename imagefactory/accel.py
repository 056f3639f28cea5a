"""Which qemu accelerator a VM gets: shared by the Packer builder, the boot tests and clusters
(its own small module so that none of them depends on another for it)."""

from __future__ import annotations

import contextlib
import os


def resolve_accelerator(requested: str) -> str:
    """`auto` means kvm on bare metal with /dev/kvm, tcg otherwise.

    Nested KVM (a hypervisor flag in /proc/cpuinfo) is treated as unusable: on the machines this
    was built on it hangs guests. Ask for `kvm` explicitly to override.
    """
    if requested != "auto":
        return requested
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags") and " hypervisor" in line:
                return "tcg"
    return "kvm"
