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


# --- an existing disk image, opened for offline steps (Packer builder) ------------------------

LINUX_TYPES = {"83", "0fc63daf-8483-4772-8e79-3d69d8477de4"}


def root_partition(raw: Path) -> tuple[int, int]:
    """(offset, size) in bytes of the root filesystem: the largest Linux partition."""
    import json

    table = json.loads(run(["sfdisk", "--json", str(raw)], quiet=True).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", SECTOR))
    parts = [p for p in table.get("partitions", []) if str(p.get("type", "")).lower() in LINUX_TYPES]
    if not parts:
        raise BuildError(f"{raw}: no Linux partition in the image", hint="is the source a cloud image?")
    best = max(parts, key=lambda p: int(p["size"]))
    return int(best["start"]) * sector, int(best["size"]) * sector


class OpenedImage:
    """`image` converted to the raw file `raw`, its root partition on a loop device mounted at
    `mountpoint`. `close()` (or leaving the `with`) unmounts and detaches, also on errors and
    Ctrl-C; the raw file stays for the caller to convert."""

    def __init__(self, image: Path, raw: Path, mountpoint: Path) -> None:
        self.image, self.raw, self.mountpoint = image, raw, mountpoint
        self.loop: str | None = None
        self.mounted = False

    def __enter__(self) -> OpenedImage:
        try:
            run(["qemu-img", "convert", "-O", "raw", str(self.image), str(self.raw)])
            offset, size = root_partition(self.raw)
            self.loop = run(["losetup", "--find", "--show", "-o", str(offset), "--sizelimit", str(size),
                             str(self.raw)], quiet=True).stdout.strip()
            self.mountpoint.mkdir(parents=True, exist_ok=True)
            run(["mount", self.loop, str(self.mountpoint)])
            self.mounted = True
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        from ..chroot import unmount_all

        try:
            if self.mounted:
                # Free blocks the build VM and the steps wrote and deleted become holes in the raw
                # file (loop devices pass discards through), so the qcow2 does not carry them.
                run(["fstrim", str(self.mountpoint)], check=False)
                unmount_all(self.mountpoint)  # with anything a failed step left mounted below it
                self.mounted = False
        finally:
            if self.loop:
                run(["losetup", "-d", self.loop], check=False)
                self.loop = None

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_kernel_args(root: Path, args: list[str]) -> None:
    """Append `args` to every `linux` line of the image's grub.cfg and to GRUB_CMDLINE_LINUX in
    /etc/default/grub (so that the next update-grub inside the guest keeps them)."""
    import re

    found = False
    for cfg in (root / "boot/grub/grub.cfg", root / "boot/grub2/grub.cfg"):
        if not cfg.is_file():
            continue
        found = True
        lines = []
        for line in cfg.read_text().splitlines(keepends=True):
            if re.match(r"^\s*linux(efi)?\s", line):
                words = line.rstrip("\n").split()
                line = line.rstrip("\n") + "".join(f" {a}" for a in args if a not in words) + "\n"
            lines.append(line)
        cfg.write_text("".join(lines))
    default = root / "etc/default/grub"
    if default.is_file():
        text = default.read_text()
        m = re.search(r'^GRUB_CMDLINE_LINUX="([^"]*)"', text, re.M)
        if m:
            words = m[1].split()
            new = " ".join([*words, *(a for a in args if a not in words)])
            text = text[:m.start()] + f'GRUB_CMDLINE_LINUX="{new}"' + text[m.end():]
        else:
            text += f'GRUB_CMDLINE_LINUX="{" ".join(args)}"\n'
        default.write_text(text)
    if not found:
        raise BuildError("no grub.cfg in the image: cannot add kernel arguments " + " ".join(args),
                         hint="the Packer builder supports GRUB-booted (BIOS) cloud images")


def detach_loops(directory: Path) -> None:
    """Detach loop devices whose backing file lies under `directory` (cleanup of last resort)."""
    import json

    out = run(["losetup", "--json", "--list"], check=False, quiet=True).stdout
    devices = json.loads(out).get("loopdevices", []) if out.strip() else []
    prefix = str(directory.resolve()) + "/"
    for d in devices:
        if str(d.get("back-file", "")).split(" (deleted)")[0].startswith(prefix):
            run(["losetup", "-d", d["name"]], check=False)
