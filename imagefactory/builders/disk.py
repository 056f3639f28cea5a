"""A bootable disk from a root directory, without loop devices, mounts or a VM.

Layouts (`disk.firmware`, `disk.partition_table`):
- `bios` on msdos: one root partition at 1 MiB, GRUB's core.img in the gap before it.
- GPT, as Debian's and Ubuntu's own cloud images lay it out: partition 14 the BIOS boot
  partition (4 MiB, holds core.img) for `bios`/`hybrid`, partition 15 the EFI system partition
  (106 MiB FAT32, `builders.efi`) for `uefi`/`hybrid`, partition 1 the root filling the rest - last
  on the disk, so cloud-init's growpart can grow it into a larger VM disk.

The root is ext4 populated straight from the directory with `mkfs.ext4 -d`; GRUB for BIOS is
written by hand (boot.img in the MBR pointing at core.img, core.img's own block list pointing at
the rest of itself); the ESP is FAT32 made in place with mtools. Then `qemu-img convert` to
(compressed) qcow2. Space never written stays a hole in the raw file, so free space is zero in
the image without a separate zeroing pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..chroot import unmount_all
from ..errors import BuildError
from ..fsutil import resolve_in_root
from ..interrupts import uninterrupted
from ..run import run
from . import efi, inplace

log = logging.getLogger(__name__)

SECTOR = 512
MIB = 2048  # sectors
PART_START = MIB  # the first partition starts at 1 MiB (room for core.img on msdos)
BIOS_BOOT_SECTORS = 4 * MIB
ESP_SECTORS = 106 * MIB
GPT_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
GPT_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GPT_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
SEED_NAMESPACE = uuid.UUID("6f0f3c0e-5d2a-4a57-9a52-6b1e1f7c2a10")  # imagefactory's, for uuid5
GRUB_DIR = Path("/usr/lib/grub/i386-pc")
# Modules built into core.img so GRUB needs nothing from the image's /boot/grub.
GRUB_MODULES = (
    "biosdisk", "part_msdos", "part_gpt", "ext2", "search_fs_uuid", "search", "normal", "linux",
    "echo", "serial", "terminal", "test", "configfile", "gzio", "minicmd", "sleep", "all_video",
)
# boot.img: the 64-bit LBA of core.img's first sector (GRUB_BOOT_MACHINE_KERNEL_SECTOR);
# core.img (diskboot.img, its first sector): the block list of the rest, start LBA first.
BOOT_IMG_KERNEL_SECTOR = 0x5C
DISKBOOT_BLOCKLIST_START = 0x200 - 12

Role = Literal["bios-boot", "esp", "root"]


@dataclass(frozen=True)
class Partition:
    number: int
    role: Role
    start: int  # sector
    size: int  # sectors; 0 = up to the end of the disk (known after partitioning)


@dataclass(frozen=True)
class DiskLayout:
    size: int  # bytes, whole MiB
    fs_uuid: str
    table: Literal["msdos", "gpt"] = "msdos"
    bios: bool = True
    uefi: bool = False
    esp_id: str = "00000000"  # FAT volume id (8 hex digits, shown as XXXX-XXXX)
    seed: str | None = None  # what every identifier derives from (None: random, as mkfs would)

    def derived(self, what: str) -> str | None:
        """A UUID for `what` (the GPT's disk GUID, a partition's GUID, ext4's hash seed) from the
        seed, or None to let the tool pick a random one."""
        return str(uuid.uuid5(SEED_NAMESPACE, f"{self.seed}/{what}")) if self.seed else None

    @property
    def partitions(self) -> list[Partition]:
        if self.table == "msdos":
            return [Partition(1, "root", PART_START, 0)]
        parts, start = [], PART_START
        if self.bios:
            parts.append(Partition(14, "bios-boot", start, BIOS_BOOT_SECTORS))
            start += BIOS_BOOT_SECTORS
        if self.uefi:
            parts.append(Partition(15, "esp", start, ESP_SECTORS))
            start += ESP_SECTORS
        return [*parts, Partition(1, "root", start, 0)]

    def part(self, role: Role) -> Partition:
        return next(p for p in self.partitions if p.role == role)

    @property
    def part_offset(self) -> int:
        """Byte offset of the root filesystem."""
        return self.part("root").start * SECTOR

    @property
    def overhead(self) -> int:
        """Bytes of the disk that the root filesystem cannot use."""
        return self.part_offset + (MIB * SECTOR if self.table == "gpt" else 0)  # + backup GPT, aligned

    @property
    def esp_uuid(self) -> str:
        return f"{self.esp_id[:4]}-{self.esp_id[4:]}".upper()

    def describe(self) -> dict[str, object]:
        """For the manifest: what boots it and where its partitions lie."""
        return {"table": self.table, "firmware": ("hybrid" if self.bios and self.uefi
                                                  else "uefi" if self.uefi else "bios"),
                "root_uuid": self.fs_uuid, "esp_uuid": self.esp_uuid if self.uefi else None,
                "partitions": [{"number": p.number, "role": p.role, "offset": p.start * SECTOR}
                               for p in self.partitions]}


def new_layout(size: int, *, table: Literal["msdos", "gpt"] = "msdos", bios: bool = True,
               uefi: bool = False, seed: str | None = None) -> DiskLayout:
    """A layout whose identifiers (root file system UUID, ESP volume id, GPT GUIDs, ext4 hash
    seed) derive from `seed` - the recipe's name, so that every build of a recipe has the same
    ones and two builds differ only where their content does (ext4's metadata checksums are
    seeded with the UUID: a random one changes every metadata block) - or are random."""
    if seed is None:
        return DiskLayout(size=size, fs_uuid=str(uuid.uuid4()), table=table, bios=bios, uefi=uefi,
                          esp_id=secrets.token_hex(4))
    esp_id = hashlib.sha256(f"{seed}/esp".encode()).hexdigest()[:8]
    return DiskLayout(size=size, fs_uuid=str(uuid.uuid5(SEED_NAMESPACE, f"{seed}/root")), table=table,
                      bios=bios, uefi=uefi, esp_id=esp_id, seed=seed)


def clamp_times(root: Path, epoch: int) -> int:
    """Every file's mtime no later than `epoch` and its atime equal to it (what `mkfs -d` copies
    into the image): files the build wrote would otherwise carry the build's time, and files it
    read their access time. Package files keep their (older) times. Returns how many changed."""
    changed = 0
    limit = epoch * 1_000_000_000
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                mtime = min(st.st_mtime_ns, limit)
                if (st.st_mtime_ns, st.st_atime_ns) != (mtime, mtime):
                    os.utime(e.path, ns=(mtime, mtime), follow_symlinks=False)
                    changed += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return changed


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
    lines = ["# <file system> <mount point> <type> <options> <dump> <pass>",
             f"UUID={layout.fs_uuid} / ext4 defaults,errors=remount-ro 0 1"]
    if layout.uefi:
        # Package updates of shim/GRUB inside the guest expect the ESP at /boot/efi. No device
        # timeout: on a slow first boot (TCG, a loaded host) udev's coldplug came later than
        # systemd's default 90 s and the ESP stayed unmounted; `nofail` keeps the boot from
        # waiting, the mount happens when the device appears.
        (root / "boot/efi").mkdir(parents=True, exist_ok=True)
        options = "umask=0077,nofail,x-systemd.device-timeout=0"
        lines.append(f"UUID={layout.esp_uuid} /boot/efi vfat {options} 0 1")
    (root / "etc/fstab").write_text("\n".join(lines) + "\n")


def write_grub_cfg(root: Path, layout: DiskLayout, kernel: str, initrd: str, cmdline: str,
                   title: str) -> None:
    grub = root / "boot/grub"
    grub.mkdir(parents=True, exist_ok=True)
    # Serial first: the boot test reads the console log; tty0 for people at a screen. The same
    # file serves BIOS GRUB (core.img) and the signed EFI GRUB (through the ESP's stub).
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


def _sfdisk_script(raw: Path, layout: DiskLayout) -> str:
    if layout.table == "msdos":
        return f"label: dos\nstart={PART_START}, type=83, bootable\n"
    types = {"bios-boot": GPT_BIOS_BOOT, "esp": GPT_ESP, "root": GPT_LINUX}
    names = {"bios-boot": "BIOS boot", "esp": "EFI System", "root": "root"}
    lines = ["label: gpt"]
    for p in layout.partitions:
        size = f", size={p.size}" if p.size else ""
        # sfdisk names partitions after the device: "<file><number>" sets the number
        guid = f", uuid={u}" if (u := layout.derived(f"partition-{p.number}")) else ""
        lines.append(f'{raw}{p.number} : start={p.start}{size}, type={types[p.role]}, name="{names[p.role]}"'
                     f"{guid}")
    if label := layout.derived("gpt"):
        lines.insert(1, f"label-id: {label}")
    return "\n".join(lines) + "\n"


def make_raw(root: Path, raw: Path, layout: DiskLayout, scratch: Path,
             boot_files: efi.BootFiles | None = None, efi_vendor: str = "", epoch: int | None = None,
             base: dict[str, inplace.Entry] | None = None) -> tuple[dict[str, inplace.Entry] | None, bool]:
    """Partition, populate and make bootable the raw disk `raw` from `root` (an ESP needs the
    image's signed `boot_files` and the vendor directory its GRUB reads). With `epoch` (and a
    seeded layout) the disk is a function of the root's content: file times clamped to it, the
    file systems' own times set to it, every identifier derived from the seed; and with `base`
    (the file index of the predecessor whose disk `raw` already holds) the root file system is
    written in place over the base's (`inplace`), unless the tree holds what debugfs cannot
    write. Returns the root's file index when `epoch` is given (the next build's base), and
    whether the file system was written in place."""
    if layout.bios and not (GRUB_DIR / "boot.img").is_file():
        raise BuildError(f"{GRUB_DIR}/boot.img not found", hint="install the Debian package grub-pc-bin")
    if layout.uefi and boot_files is None:
        raise BuildError("internal: a UEFI layout without the image's EFI binaries")
    files = None
    if epoch is not None:
        log.info("file times clamped to %d: %d changed", epoch, clamp_times(root, epoch))
        files = inplace.index(root)
    written = base is not None and files is not None and epoch is not None and \
        _in_place(raw, layout, base, files, root, scratch, epoch)
    if not written:
        _mkfs(root, raw, layout, scratch, epoch)
    if layout.uefi:
        assert boot_files is not None
        esp = layout.part("esp")
        if written:  # mkfs.vfat writes FAT structures only: no file of the base's ESP stays behind
            run(["fallocate", "--punch-hole", "--offset", str(esp.start * SECTOR), "--length",
                 str(esp.size * SECTOR), str(raw)])
        efi.make_esp(raw, esp.start * SECTOR, esp.size * SECTOR, layout.esp_id, boot_files, efi_vendor,
                     layout.fs_uuid, scratch, epoch)
    if layout.bios:
        _install_bios_grub(raw, layout, scratch)
    return files, bool(written)


def _in_place(raw: Path, layout: DiskLayout, base: dict[str, inplace.Entry], files: dict[str, inplace.Entry],
              root: Path, scratch: Path, epoch: int) -> bool:
    parts = {p.number: p for p in raw_partitions(raw)}
    at = parts.get(layout.part("root").number)
    if at is None or at.offset != layout.part_offset or raw.stat().st_size != layout.size:
        raise BuildError(f"internal: the base disk's root partition is not at {layout.part_offset}")
    try:
        inplace.apply(raw, layout.part_offset, base, files, root, scratch, epoch)
    except inplace.Unsupported as e:
        log.warning("root file system not written in place (%s): a full mkfs instead", e)
        return False
    clear_lifetime_writes(raw, layout.part_offset)
    return True


def _mkfs(root: Path, raw: Path, layout: DiskLayout, scratch: Path, epoch: int | None) -> None:
    with open(raw, "wb") as f:
        f.truncate(layout.size)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", str(raw)], input=_sfdisk_script(raw, layout))
    written = {p.number: p for p in raw_partitions(raw)}[layout.part("root").number]
    if written.offset != layout.part_offset:
        raise BuildError(f"internal: sfdisk put the root at {written.offset}, not {layout.part_offset}")
    extended = f"offset={layout.part_offset}"
    if hash_seed := layout.derived("ext4-hash-seed"):
        extended += f",hash_seed={hash_seed}"  # directory hashes (htree) otherwise use a random seed
    # e2fsprogs' own knob for inode and superblock times (its test suite's)
    env = {"E2FSPROGS_FAKE_TIME": str(epoch)} if epoch is not None else None
    run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", layout.fs_uuid,
         "-E", extended, "-d", str(root), str(raw), f"{written.size // 1024}k"], env=env)
    if epoch is not None:
        _set_ctimes(root, raw, layout.part_offset, epoch, scratch)
        clear_lifetime_writes(raw, layout.part_offset)


def _set_ctimes(root: Path, raw: Path, offset: int, epoch: int, scratch: Path) -> None:
    """`mkfs -d` (e2fsprogs 1.47.0) copies each file's ctime and atime from the directory - when
    the build wrote it (or `clamp_times` touched it), when mkfs itself read it - and
    E2FSPROGS_FAKE_TIME does not cover those: set both to the epoch with debugfs, by path, in one
    run (mtimes are the files' own, clamped)."""
    script, skipped = [], 0
    for p in [root, *root.rglob("*")]:
        rel = "/" + p.relative_to(root).as_posix() if p != root else "/"
        if "\n" in rel:
            skipped += 1  # debugfs cannot quote a newline; that inode keeps its ctime
            continue
        # in debugfs' quotes a quote is doubled and a backslash is literal (systemd's \x2d names)
        q = '"' + rel.replace('"', '""') + '"'
        script += [f"sif {q} ctime @{epoch}", f"sif {q} atime @{epoch}"]
    cmds = scratch / "ctimes.debugfs"
    cmds.write_bytes(b"\n".join(os.fsencode(c) for c in script) + b"\n")  # names need not be UTF-8
    r = run(["debugfs", "-w", "-f", str(cmds), f"{raw}?offset={offset}"], quiet=True,
            env={"E2FSPROGS_FAKE_TIME": str(epoch)})  # its superblock write time too
    # debugfs reports a failed command on stderr and still exits 0
    errors = [line for line in r.stderr.splitlines() if line and not line.startswith("debugfs ")]
    if errors:
        raise BuildError(f"debugfs could not set the inode times: {errors[0]}")
    log.info("ctime and atime of %d inodes set to %d (%d names debugfs cannot quote left as they are)",
             len(script) // 2, epoch, skipped)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C = _crc32c_table()


def _ext4_crc(data: bytes) -> int:
    """ext4's metadata checksum: crc32c from ~0, without the final inversion."""
    c = 0xFFFFFFFF
    for b in data:
        c = CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c


def clear_lifetime_writes(raw: Path, offset: int) -> int:
    """Zero `s_kbytes_written` in the ext4 superblock at `offset` and in every backup of it,
    checksums kept right. e2fsprogs adds each session's bytes written to it, and those differ
    between two mkfs runs of the same tree (the only difference left between two builds of one
    recipe's identical inputs). Returns how many superblocks were changed."""
    with open(raw, "r+b") as f:
        f.seek(offset + 1024)
        sb = f.read(1024)
        if sb[0x38:0x3A] != b"\x53\xef":
            raise BuildError("internal: no ext4 superblock where the root file system should be")
        first, log_size = struct.unpack_from("<II", sb, 0x14)
        per_group = struct.unpack_from("<I", sb, 0x20)[0]
        block = 1024 << log_size
        blocks = struct.unpack_from("<I", sb, 0x04)[0] | (struct.unpack_from("<I", sb, 0x150)[0] << 32)
        groups = (blocks - first + per_group - 1) // per_group
        sparse = struct.unpack_from("<I", sb, 0x64)[0] & 0x1
        csum = struct.unpack_from("<I", sb, 0x64)[0] & 0x400

        def has_backup(g: int) -> bool:
            if g in (0, 1) or not sparse:
                return True
            for base in (3, 5, 7):
                n = base
                while n < g:
                    n *= base
                if n == g:
                    return True
            return False

        changed = 0
        for g in range(groups):
            if not has_backup(g):
                continue
            at = offset + 1024 if g == 0 else offset + (first + g * per_group) * block
            f.seek(at)
            copy = bytearray(f.read(1024))
            if copy[0x38:0x3A] != b"\x53\xef" or copy[0x178:0x180] == bytes(8):
                continue
            copy[0x178:0x180] = bytes(8)
            if csum:
                struct.pack_into("<I", copy, 0x3FC, _ext4_crc(bytes(copy[:0x3FC])))
            f.seek(at)
            f.write(copy)
            changed += 1
    return changed


def _install_bios_grub(raw: Path, layout: DiskLayout, scratch: Path) -> None:
    """boot.img into the MBR's code area, core.img into the gap (msdos) or the BIOS boot
    partition (GPT), each told where the next stage lies, as grub-install would."""
    early = scratch / "early.cfg"
    early.write_text(
        f"search --no-floppy --fs-uuid --set=root {layout.fs_uuid}\n"
        "set prefix=($root)/boot/grub\n"
    )
    core = scratch / "core.img"
    run(["grub-mkimage", "-O", "i386-pc", "-o", str(core), "-c", str(early),
         "-p", "/boot/grub", *GRUB_MODULES])
    core_bytes = bytearray(core.read_bytes())
    if layout.table == "msdos":
        first, room = 1, PART_START - 1
    else:
        bios_boot = layout.part("bios-boot")
        first, room = bios_boot.start, bios_boot.size
    if len(core_bytes) > room * SECTOR:
        raise BuildError(f"GRUB core.img is {len(core_bytes)} bytes: too big for {room * SECTOR} bytes")
    struct.pack_into("<Q", core_bytes, DISKBOOT_BLOCKLIST_START, first + 1)
    boot = bytearray((GRUB_DIR / "boot.img").read_bytes())
    struct.pack_into("<Q", boot, BOOT_IMG_KERNEL_SECTOR, first)
    with open(raw, "r+b") as f:
        f.seek(0)
        f.write(boot[:440])  # keep the partition table (from byte 446) and disk signature
        f.seek(first * SECTOR)
        f.write(core_bytes)


def to_raw(image: Path, raw: Path) -> None:
    """An earlier build's image (qcow2 or raw) as the raw disk a build continues from."""
    run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)])


def convert(raw: Path, out: Path, fmt: str, compression: str) -> None:
    """raw -> qcow2 (optionally compressed), or a sparse copy for raw output."""
    if fmt == "raw":
        run(["qemu-img", "convert", "-O", "raw", str(raw), str(out)])
        return
    # In-order writes (no -W): with out-of-order writes the compressed clusters land wherever the
    # coroutine that compressed them finished, and two conversions of one disk differ.
    argv = ["qemu-img", "convert", "-O", "qcow2", "-m", "4"]
    if compression != "none":
        argv += ["-c", "-o", f"compression_type={compression}"]
    run([*argv, str(raw), str(out)])
    # A qcow2 file ends wherever its last cluster ends (compressed ones anywhere), but Longhorn
    # writes a Harvester backing image with direct I/O and fails a download whose size is not a
    # multiple of 512. Zeros after the last cluster are outside the image: qemu ignores them.
    size = out.stat().st_size
    if size % 512:
        with open(out, "ab") as f:
            f.write(b"\0" * (512 - size % 512))


def virtual_size(image: Path) -> int:
    info = json.loads(run(["qemu-img", "info", "--output=json", str(image)], quiet=True).stdout)
    return int(info["virtual-size"])


# --- an existing disk image, opened for offline steps (Packer builder) ------------------------

# Partition types a root filesystem may carry: msdos 83, GPT "Linux filesystem" and "Linux root
# (x86-64)" (systemd's discoverable partitions). A separate /boot (Ubuntu 24.04's cloud images:
# GPT "Linux extended boot", XBOOTLDR) is found through the root's fstab instead.
LINUX_TYPES = {"83", "0fc63daf-8483-4772-8e79-3d69d8477de4", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"}
# What the offline steps write below the root and therefore mount from the image's fstab. The ESP
# (/boot/efi) is not among them: no offline step writes there, and the build host's kernel
# may not even have vfat.
OFFLINE_MOUNTS = ("/boot",)


@dataclass(frozen=True)
class RawPartition:
    number: int
    offset: int  # bytes
    size: int  # bytes
    type: str  # lower-case msdos id or GPT type GUID


def raw_partitions(raw: Path) -> list[RawPartition]:
    table = json.loads(run(["sfdisk", "--json", str(raw)], quiet=True).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", SECTOR))
    out = []
    for p in table.get("partitions", []):
        m = re.search(r"(\d+)$", str(p["node"]))
        out.append(RawPartition(int(m[1]) if m else 0, int(p["start"]) * sector, int(p["size"]) * sector,
                                str(p.get("type", "")).lower()))
    return out


def root_partition(raw: Path) -> tuple[int, int]:
    """(offset, size) in bytes of the root filesystem: the largest Linux partition."""
    parts = [p for p in raw_partitions(raw) if p.type in LINUX_TYPES]
    if not parts:
        raise BuildError(f"{raw}: no Linux partition in the image", hint="is the source a cloud image?")
    best = max(parts, key=lambda p: p.size)
    return best.offset, best.size


def fstab_mounts(fstab: str) -> dict[str, str]:
    """mount point -> source spec (UUID=..., LABEL=..., PARTUUID=..., /dev/...) of an fstab."""
    out = {}
    for line in fstab.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2:
            out[fields[1].rstrip("/") or "/"] = fields[0]
    return out


def _probe(raw: Path, part: RawPartition) -> dict[str, str]:
    """What blkid reads at a partition of the raw file (UUID, LABEL, TYPE, PART_ENTRY_*)."""
    out = run(["blkid", "--probe", "--offset", str(part.offset), "--size", str(part.size),
               "--output", "export", str(raw)], check=False, quiet=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


class OpenedImage:
    """`image` converted to the raw file `raw`, its root partition on a loop device mounted at
    `mountpoint`, and the partitions the root's fstab mounts at `OFFLINE_MOUNTS` (a separate
    /boot) mounted below it. `close()` (or leaving the `with`) unmounts and detaches, also on
    errors and Ctrl-C; the raw file stays for the caller to convert."""

    def __init__(self, image: Path, raw: Path, mountpoint: Path) -> None:
        self.image, self.raw, self.mountpoint = image, raw, mountpoint
        self.loops: list[str] = []
        self.mounted: list[str] = []  # mount points inside the root, "/" first

    def __enter__(self) -> OpenedImage:
        try:
            run(["qemu-img", "convert", "-O", "raw", str(self.image), str(self.raw)])
            offset, size = root_partition(self.raw)
            self._mount(offset, size, self.mountpoint)
            self.mounted.append("/")
            fstab = resolve_in_root(self.mountpoint, "/etc/fstab")
            mounts = fstab_mounts(fstab.read_text(errors="replace")) if fstab.is_file() else {}
            for point in OFFLINE_MOUNTS:
                if point in mounts:
                    part = self._find(mounts[point], point)
                    target = resolve_in_root(self.mountpoint, point)
                    target.mkdir(parents=True, exist_ok=True)
                    self._mount(part.offset, part.size, target)
                    self.mounted.append(point)
        except BaseException:
            self.close()
            raise
        return self

    def _mount(self, offset: int, size: int, target: Path) -> None:
        loop = run(["losetup", "--find", "--show", "-o", str(offset), "--sizelimit", str(size),
                    str(self.raw)], quiet=True).stdout.strip()
        self.loops.append(loop)
        target.mkdir(parents=True, exist_ok=True)
        # nodev,nosuid: the filesystem came from a downloaded image
        run(["mount", "-o", "nodev,nosuid", loop, str(target)])

    def _find(self, spec: str, point: str) -> RawPartition:
        """The partition an fstab source names, matched by what blkid reads on each partition."""
        key, _, value = spec.partition("=")
        field = {"UUID": "UUID", "LABEL": "LABEL", "PARTUUID": "PART_ENTRY_UUID",
                 "PARTLABEL": "PART_ENTRY_NAME"}.get(key)
        if field is not None:
            for part in raw_partitions(self.raw):
                if _probe(self.raw, part).get(field, "").lower() == value.strip('"').lower():
                    return part
        raise BuildError(f"the image's fstab mounts {point} from {spec}: no such partition in the image",
                         hint="imagefactory finds partitions by UUID=, LABEL=, PARTUUID= or PARTLABEL=")

    def close(self) -> None:
        with uninterrupted():
            self._close()

    def _close(self) -> None:
        try:
            for point in reversed(self.mounted):
                # Free blocks the build VM and the steps wrote and deleted become holes in the raw
                # file (loop devices pass discards through), so the qcow2 does not carry them.
                run(["fstrim", str(resolve_in_root(self.mountpoint, point))], check=False)
            if self.mounted:
                unmount_all(self.mountpoint)  # with anything a failed step left mounted below it
            self.mounted = []
        finally:
            for loop in reversed(self.loops):
                run(["losetup", "-d", loop], check=False)
            self.loops = []

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_kernel_args(root: Path, args: list[str]) -> None:
    """Append `args` to every `linux` line of the image's grub.cfg and to GRUB_CMDLINE_LINUX in
    /etc/default/grub (so that the next update-grub inside the guest keeps them)."""
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
                         hint="imagefactory supports GRUB-booted images (BIOS, UEFI or hybrid)")


def detach_loops(directory: Path) -> None:
    """Detach loop devices whose backing file lies under `directory` (cleanup of last resort)."""
    out = run(["losetup", "--json", "--list"], check=False, quiet=True).stdout
    devices = json.loads(out).get("loopdevices", []) if out.strip() else []
    prefix = str(directory.resolve()) + "/"
    for d in devices:
        if str(d.get("back-file", "")).split(" (deleted)")[0].startswith(prefix):
            run(["losetup", "-d", d["name"]], check=False)
