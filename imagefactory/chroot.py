"""Running commands inside an image root, safely for the build host.

`Chroot` mounts only what package maintainer scripts need (proc, a read-only sysfs, /dev and
devpts), installs a `policy-rc.d` so no service starts, and undoes all of it on exit - also on
errors and Ctrl-C. Nothing here writes the host's kernel settings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .errors import BuildError
from .interrupts import uninterrupted
from .run import Result, run

log = logging.getLogger(__name__)

POLICY_RC_D = "usr/sbin/policy-rc.d"
# Environment for commands in the root: no host locale leaking in, no interactive prompts.
CHROOT_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
    "LC_ALL": "C.UTF-8",
    "LANG": "C.UTF-8",
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
}


def mounts_under(root: Path, *, include_root: bool = True) -> list[str]:
    """Mount points at or below `root` (deepest first), from /proc/self/mountinfo."""
    prefix = os.path.realpath(root)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if (include_root and point == prefix) or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_all(root: Path, *, include_root: bool = True) -> None:
    """Unmount everything under `root`; lazily if a mount is busy (it must not outlive us)."""
    for point in mounts_under(root, include_root=include_root):
        if run(["umount", point], check=False).returncode != 0:
            run(["umount", "-l", point], check=False)


class Chroot:
    """Context manager: `with Chroot(root) as c: c.run([...])`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __enter__(self) -> Chroot:
        try:
            for sub, argv in (
                ("proc", ["mount", "-t", "proc", "proc"]),
                ("sys", ["mount", "-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs"]),
                ("dev", ["mount", "--bind", "/dev"]),
                # A bind of a shared /dev is a peer of the host's: devpts mounted below it would
                # appear on the host's /dev/pts (and stay there if the build is killed). As a
                # slave it still sees the host's devices, and nothing of ours goes back.
                ("dev", ["mount", "--make-rslave"]),
                ("dev/pts", ["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts"]),
            ):
                target = self.root / sub
                for part in (self.root / sub.split("/")[0], target):
                    # mount(8) follows a link on the host: an image's `/proc -> /` would put
                    # proc over the build host's root
                    if part.is_symlink():
                        raise BuildError(f"/{sub} in the image root is a symbolic link "
                                         f"(to {os.readlink(part)}): refusing to mount over it")
                target.mkdir(parents=True, exist_ok=True)
                run([*argv, str(target)])
            policy = self.root / POLICY_RC_D
            policy.write_text("#!/bin/sh\n# imagefactory: no service starts during the build\nexit 101\n")
            policy.chmod(0o755)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        with uninterrupted():
            (self.root / POLICY_RC_D).unlink(missing_ok=True)
            # only what we mounted: the root itself may be a mounted disk (Packer builder)
            unmount_all(self.root, include_root=False)

    def run(self, argv: Sequence[str], *, check: bool = True, quiet: bool = False,
            env: dict[str, str] | None = None) -> Result:
        return run(["chroot", str(self.root), *argv], env={**CHROOT_ENV, **(env or {})}, check=check,
                   quiet=quiet)
