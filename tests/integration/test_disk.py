"""Disks made from a directory without loop devices: every layout's partition table, the ESP's
files, the BIOS boot chain's pointers; and the Packer builder's offline opening of a disk laid
out like Canonical's 24.04 cloud image (a separate /boot)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
from pathlib import Path
from typing import Literal

import pytest

from imagefactory.builders import disk, efi
from imagefactory.chroot import mounts_under
from tests.conftest import require_root
from tests.unit.test_efi import pe

pytestmark = pytest.mark.integration


def tiny_root(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "boot/vmlinuz-1").write_bytes(b"kernel")
    (root / "etc/hostname").write_text("localhost\n")
    return root


def boot_files(d: Path) -> efi.BootFiles:
    d.mkdir()
    return efi.BootFiles(pe(d / "shimx64.efi.signed"), pe(d / "grubx64.efi.signed"), pe(d / "mmx64.efi"))


def sfdisk(raw: Path) -> dict[int, dict[str, str]]:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, check=True,
                                      text=True).stdout)["partitiontable"]
    return {int(p["node"].removeprefix(str(raw))): p for p in table["partitions"]}


def mtools(tool: str, raw: Path, offset: int, *args: str) -> str:
    return subprocess.run([tool, "-i", f"{raw}@@{offset}", *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize(("table", "bios", "uefi"), [("msdos", True, False), ("gpt", True, False),
                                                      ("gpt", False, True), ("gpt", True, True)])
def test_layouts(tmp_path: Path, table: Literal["msdos", "gpt"], bios: bool, uefi: bool) -> None:
    root = tiny_root(tmp_path / "root")
    layout = disk.new_layout(512 * 1024**2, table=table, bios=bios, uefi=uefi)
    disk.write_fstab(root, layout)
    raw = tmp_path / "disk.raw"
    disk.make_raw(root, raw, layout, tmp_path, boot_files(tmp_path / "efi") if uefi else None, "ubuntu")
    parts = sfdisk(raw)
    root_part = parts[1]
    assert int(root_part["start"]) * 512 == layout.part_offset
    if table == "msdos":
        assert list(parts) == [1] and root_part["type"] == "83"
    else:
        # Canonical's and Debian's numbering: root 1 (last on the disk), BIOS boot 14, ESP 15
        assert sorted(parts) == sorted([1, *([14] if bios else []), *([15] if uefi else [])])
        assert root_part["type"] == disk.GPT_LINUX
        assert int(root_part["start"]) == max(int(p["start"]) for p in parts.values())
    # the root filesystem holds the tree and the fstab names the ESP by its volume id
    fstab = subprocess.run(["debugfs", "-R", "cat /etc/fstab", f"{raw}?offset={layout.part_offset}"],
                           capture_output=True, text=True, check=True).stdout
    assert f"UUID={layout.fs_uuid} / ext4" in fstab
    assert (f"UUID={layout.esp_uuid} /boot/efi vfat" in fstab) == uefi
    # never given up on a slow first boot (udev's coldplug after systemd's 90 s device timeout)
    assert ("nofail,x-systemd.device-timeout=0 0 1" in fstab) == uefi
    mbr = raw.read_bytes()[:512]
    if uefi:
        esp = parts[15]
        assert esp["type"] == disk.GPT_ESP
        off = int(esp["start"]) * 512
        listing = mtools("mdir", raw, off, "-b", "-/", "::/EFI")
        for f in ("::/EFI/BOOT/BOOTX64.EFI", "::/EFI/BOOT/grubx64.efi", "::/EFI/BOOT/mmx64.efi",
                  "::/EFI/ubuntu/grub.cfg", "::/EFI/ubuntu/shimx64.efi"):
            assert f in listing.split(), listing
        assert "fbx64.efi" not in listing  # no fallback: it would write NVRAM entries and reboot
        stub = mtools("mtype", raw, off, "::/EFI/ubuntu/grub.cfg")
        assert f"search.fs_uuid {layout.fs_uuid} root" in stub and "configfile" in stub
        blkid = subprocess.run(["blkid", "--probe", "--offset", str(off), "-o", "export", str(raw)],
                               capture_output=True, text=True, check=True).stdout
        assert f"UUID={layout.esp_uuid}" in blkid and "TYPE=vfat" in blkid
    if bios:
        # boot.img points at core.img, core.img's block list at the rest of itself
        core_sector = 1 if table == "msdos" else int(parts[14]["start"])
        assert struct.unpack_from("<Q", mbr, disk.BOOT_IMG_KERNEL_SECTOR)[0] == core_sector
        with open(raw, "rb") as f:
            f.seek(core_sector * 512)
            diskboot = f.read(512)
        assert struct.unpack_from("<Q", diskboot, disk.DISKBOOT_BLOCKLIST_START)[0] == core_sector + 1
        if table == "gpt":
            assert parts[14]["type"] == disk.GPT_BIOS_BOOT
    else:
        assert mbr[:440] == bytes(440)  # UEFI only: no BIOS boot code
    assert mbr[510:512] == b"\x55\xaa"


def test_a_seeded_disk_is_a_function_of_the_roots_content(tmp_path: Path) -> None:
    """Two builds of one recipe from the same content, written at different times (different
    mtimes, atimes and ctimes): byte-identical disks with the seed and the epoch - GPT GUIDs, ext4
    UUID, hash seed and times, the ESP's volume id and times. Without them every build differs."""
    import hashlib
    import time

    def build(n: int, seed: str | None, epoch: int | None) -> bytes:
        root = tiny_root(tmp_path / f"root{n}")
        (root / "etc/generated.conf").write_text("written by the build\n")
        for i in range(50):  # enough files for a hashed (htree) directory
            (root / "etc" / f"file-{i:03d}.conf").write_text(f"{i}\n")
        os.utime(root / "boot/vmlinuz-1", (1_600_000_000 + n, 1_600_000_000))  # read at another time
        layout = disk.new_layout(256 * 1024**2, table="gpt", bios=True, uefi=True, seed=seed)
        disk.write_fstab(root, layout)
        raw = tmp_path / f"disk{n}.raw"
        files = boot_files(tmp_path / f"efi{n}")
        for f in (files.shim, files.grub, files.mokmanager):  # as a package installed them
            assert f is not None
            os.utime(f, (1_650_000_000, 1_650_000_000))
        disk.make_raw(root, raw, layout, tmp_path, files, "debian", epoch)
        return hashlib.sha256(raw.read_bytes()).digest()

    epoch = 1_700_000_000
    first = build(1, "debian-12-base", epoch)
    time.sleep(1.1)  # the second build's files are newer
    assert build(2, "debian-12-base", epoch) == first
    assert build(3, "debian-12-base", epoch + 1) != first  # the epoch is in the disk
    assert build(4, None, None) != build(5, None, None)  # random identifiers and real times
    # e2fsprogs' count of bytes it wrote (it varies between runs on larger trees) is not kept
    seeded = disk.new_layout(256 * 1024**2, table="gpt", bios=True, uefi=True, seed="debian-12-base")
    sb = subprocess.run(["dumpe2fs", "-h", f"{tmp_path / 'disk1.raw'}?offset={seeded.part_offset}"],
                        capture_output=True, text=True, check=True).stdout
    assert "Filesystem UUID:" in sb and "Lifetime writes" not in sb
    unseeded = subprocess.run(["dumpe2fs", "-h", f"{tmp_path / 'disk4.raw'}?offset={seeded.part_offset}"],
                              capture_output=True, text=True, check=True).stdout
    assert "Lifetime writes" in unseeded
    layout = disk.new_layout(256 * 1024**2, table="gpt", uefi=True, seed="debian-12-base")
    assert layout == disk.new_layout(256 * 1024**2, table="gpt", uefi=True, seed="debian-12-base")
    assert layout.fs_uuid != disk.new_layout(256 * 1024**2, table="gpt", uefi=True, seed="other").fs_uuid
    root = tmp_path / "root1"
    assert max(p.lstat().st_mtime for p in root.rglob("*")) <= epoch


def test_opened_image_mounts_a_separate_boot_like_ubuntu_2404(tmp_path: Path) -> None:
    """Root (p1), /boot on its own XBOOTLDR partition (p16, found through the root's fstab by
    LABEL), BIOS boot (p14) and ESP (p15): the offline steps see the kernel under /boot, and
    closing leaves no mount and no loop device."""
    require_root()
    raw = tmp_path / "cloud.raw"
    with open(raw, "wb") as f:
        f.truncate(400 * 1024**2)
    xbootldr = "BC13C2FF-59E6-4262-A352-B275FD6F7172"
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", str(raw)], check=True,
                   capture_output=True,
                   input=f"label: gpt\n{raw}14 : start=2048, size=8192, type={disk.GPT_BIOS_BOOT}\n"
                         f"{raw}15 : start=10240, size=217088, type={disk.GPT_ESP}\n"
                         f"{raw}16 : start=227328, size=204800, type={xbootldr}\n"
                         f"{raw}1 : start=432128, type={disk.GPT_LINUX}\n", text=True)
    root = tiny_root(tmp_path / "root")
    (root / "boot/vmlinuz-1").unlink()
    (root / "etc/fstab").write_text("LABEL=cloudimg-rootfs / ext4 defaults 0 1\n"
                                    "LABEL=BOOT /boot ext4 defaults 0 2\n"
                                    "LABEL=UEFI /boot/efi vfat umask=0077 0 1\n")
    boot = tmp_path / "bootfs"
    boot.mkdir()
    (boot / "vmlinuz-6.8.0-1-generic").write_bytes(b"kernel")
    parts = sfdisk(raw)
    for number, label, tree in ((1, "cloudimg-rootfs", root), (16, "BOOT", boot)):
        p = parts[number]
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, "-E", f"offset={int(p['start']) * 512}",
                        "-d", str(tree), str(raw), f"{int(p['size']) // 2}k"], check=True)
    image = tmp_path / "cloud.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(image)], check=True)
    mnt = tmp_path / "mnt"
    with disk.OpenedImage(image, tmp_path / "work.raw", mnt) as opened:
        assert opened.mounted == ["/", "/boot"]
        assert (mnt / "etc/hostname").read_text() == "localhost\n"
        assert (mnt / "boot/vmlinuz-6.8.0-1-generic").read_bytes() == b"kernel"
        (mnt / "boot/grub").mkdir()
        (mnt / "boot/grub/grub.cfg").write_text("linux /vmlinuz-6.8.0-1-generic root=LABEL=rootfs\n")
        disk.add_kernel_args(mnt, ["audit=1"])
        loops = list(opened.loops)
    assert mounts_under(mnt) == []
    # by backing file, not device name: a build running beside this test may take the freed loop
    listed = subprocess.run(["losetup", "--list", "--noheadings", "-O", "BACK-FILE"], capture_output=True,
                            text=True).stdout.split()
    assert loops and not [f for f in listed if f.startswith(str(tmp_path))]
    # the kernel argument landed on the /boot filesystem, not in the root's empty /boot directory
    boot_fs = f"{tmp_path / 'work.raw'}?offset={227328 * 512}"
    out = subprocess.run(["debugfs", "-R", "cat /grub/grub.cfg", boot_fs], capture_output=True,
                         text=True).stdout
    assert "audit=1" in out
    assert not os.path.exists(mnt / "boot/grub")


@pytest.mark.parametrize(("compression", "data"), [("none", False), ("none", True), ("zstd", True)])
def test_qcow2_sizes_are_multiples_of_512(tmp_path: Path, compression: str, data: bool) -> None:
    """Longhorn (Harvester's image backend) fails a download whose size is not a multiple of 512:
    the converted image is padded with zeros after its last cluster, and qemu still reads it.
    (qemu-img's qcow2 of an empty 64 MiB disk is 196616 bytes.)"""
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * 1024**2)
        for i in range(0, 64 * 1024**2 if data else 0, 4 * 1024**2 + 777):  # data qcow2 must keep
            f.seek(i)
            f.write(os.urandom(3000))
    out = tmp_path / "disk.qcow2"
    disk.convert(raw, out, "qcow2", compression)
    assert out.stat().st_size % 512 == 0
    subprocess.run(["qemu-img", "check", str(out)], check=True, capture_output=True)
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(out), str(back)], check=True)
    assert back.read_bytes() == raw.read_bytes()


def test_one_disk_converts_to_one_qcow2(tmp_path: Path) -> None:
    """Reproducible images: a disk converts to the same qcow2 bytes every time (with qemu-img's
    out-of-order writes, `-W`, the compressed clusters land in completion order: here three
    conversions of a 150 MB disk gave three different files)."""
    raw = tmp_path / "disk.raw"
    rnd = random.Random(5)
    words = [b"alpha", b"systemd", b"libc6", b"/usr/lib/x86_64-linux-gnu/", b"beta"]
    with open(raw, "wb") as f:
        for _ in range(24):
            f.write(rnd.randbytes(2 * 1024**2))
            f.write(bytes(1024**2))
            f.write(b" ".join(rnd.choice(words) for _ in range(150_000)))
    digests = set()
    for n in range(3):
        out = tmp_path / f"disk{n}.qcow2"
        disk.convert(raw, out, "qcow2", "zstd")
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1
