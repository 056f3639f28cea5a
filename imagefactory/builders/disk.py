"""A bootable disk from a root directory, without loop devices, mounts or a VM.

msdos label with one partition at 1 MiB, ext4 populated straight from the root with
`mkfs.ext4 -d`, GRUB for BIOS written by hand (boot.img in the MBR, core.img in the gap before
the partition), then `qemu-img convert` to (compressed) qcow2. Space never written stays a hole
in the raw file, so free space is zero in the image without a separate zeroing pass.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError
from ..run import run

log = logging.getLogger(__name__)

SECTOR = 512
PART_START = 2048  # sectors: 1 MiB, room for GRUB's core.img
GRUB_DIR = Path("/usr/lib/grub/i386-pc")
# Modules built into core.img so GRUB needs nothing from the image's /boot/grub.
GRUB_MODULES = (
    "biosdisk", "part_msdos", "ext2", "search_fs_uuid", "search", "normal", "linux", "echo",
    "serial", "terminal", "test", "configfile", "gzio", "minicmd", "sleep", "all_video",
)


@dataclass(frozen=True)
class DiskLayout:
    size: int  # bytes, whole MiB
    fs_uuid: str

    @property
    def part_offset(self) -> int:
        return PART_START * SECTOR

    @property
    def fs_size(self) -> int:
        return self.size - self.part_offset


def new_layout(size: int) -> DiskLayout:
    return DiskLayout(size=size, fs_uuid=str(uuid.uuid4()))


def root_size(root: Path) -> int:
    """Apparent bytes used by the files under `root` (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in root.rglob("*"):
        try:
            st = p.lstat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512 if st.st_blocks else st.st_size
    return total


def write_fstab(root: Path, layout: DiskLayout) -> None:
    (root / "etc/fstab").write_text(
        "# <file system> <mount point> <type> <options> <dump> <pass>\n"
        f"UUID={layout.fs_uuid} / ext4 defaults,errors=remount-ro 0 1\n"
    )


def write_grub_cfg(root: Path, layout: DiskLayout, kernel: str, initrd: str, cmdline: str,
                   title: str) -> None:
    grub = root / "boot/grub"
    grub.mkdir(parents=True, exist_ok=True)
    # Serial first: the boot test reads the console log; tty0 for people at a screen.
    (grub / "grub.cfg").write_text(
        "# Written by imagefactory.\n"
        "serial --unit=0 --speed=115200\n"
        "terminal_input serial console\n"
        "terminal_output serial console\n"
        "set default=0\n"
        "set timeout=1\n"
        f"menuentry '{title}' {{\n"
        f"  search --no-floppy --fs-uuid --set=root {layout.fs_uuid}\n"
        f"  linux {kernel} root=UUID={layout.fs_uuid} ro {cmdline}\n"
        f"  initrd {initrd}\n"
        "}\n"
    )


def make_raw(root: Path, raw: Path, layout: DiskLayout, scratch: Path) -> None:
    """Partition, populate and make bootable the raw disk `raw` from `root`."""
    if not (GRUB_DIR / "boot.img").is_file():
        raise BuildError(f"{GRUB_DIR}/boot.img not found", hint="install the Debian package grub-pc-bin")
    with open(raw, "wb") as f:
        f.truncate(layout.size)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", str(raw)],
        input=f"label: dos\nstart={PART_START}, type=83, bootable\n")
    run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", layout.fs_uuid,
         "-E", f"offset={layout.part_offset}", "-d", str(root), str(raw),
         f"{layout.fs_size // 1024}k"])
    early = scratch / "early.cfg"
    early.write_text(
        f"search --no-floppy --fs-uuid --set=root {layout.fs_uuid}\n"
        "set prefix=($root)/boot/grub\n"
    )
    core = scratch / "core.img"
    run(["grub-mkimage", "-O", "i386-pc", "-o", str(core), "-c", str(early),
         "-p", "/boot/grub", *GRUB_MODULES])
    core_bytes = core.read_bytes()
    if len(core_bytes) > (PART_START - 1) * SECTOR:
        raise BuildError(f"GRUB core.img is {len(core_bytes)} bytes: too big for the boot gap")
    boot = (GRUB_DIR / "boot.img").read_bytes()
    with open(raw, "r+b") as f:
        f.seek(0)
        f.write(boot[:440])  # keep the partition table (from byte 446) and disk signature
        f.seek(SECTOR)
        f.write(core_bytes)


def convert(raw: Path, out: Path, fmt: str, compression: str) -> None:
    """raw -> qcow2 (optionally compressed), or a sparse copy for raw output."""
    if fmt == "raw":
        run(["qemu-img", "convert", "-O", "raw", str(raw), str(out)])
        return
    argv = ["qemu-img", "convert", "-O", "qcow2", "-m", "4", "-W"]
    if compression != "none":
        argv += ["-c", "-o", f"compression_type={compression}"]
    run([*argv, str(raw), str(out)])


def virtual_size(image: Path) -> int:
    import json

    info = json.loads(run(["qemu-img", "info", "--output=json", str(image)], quiet=True).stdout)
    return int(info["virtual-size"])
