"""The EFI system partition of a UEFI/hybrid disk, from the image's own signed boot chain.

Secure Boot only works with what the distribution signed: Microsoft signs its shim, the
distribution's key (built into that shim) signs its GRUB and its kernels. So the ESP holds the
image's own `shimx64.efi.signed` (as the removable-media path `EFI/BOOT/BOOTX64.EFI`, which
firmware boots without an NVRAM entry), its `grubx64.efi.signed` beside it, MokManager, and a
stub `grub.cfg` under `EFI/<vendor>/` - the prefix built into the signed GRUB (`/EFI/ubuntu`,
`/EFI/debian`) - that hands over to the image's `/boot/grub/grub.cfg` by filesystem UUID.
Shim's fallback (`fbx64.efi`) is left out on purpose: it would write boot entries into the
firmware and reboot each new VM once.

The FAT filesystem is made inside the raw disk at the partition's offset (`mkfs.vfat --offset`)
and filled with mtools: no loop device, no mount.

Signatures are inspected before the disk is made (`check_signed`): an unsigned shim, GRUB or
kernel would only show up as a firmware error at boot. This reads the PE Authenticode
certificate table and names the signers; it does not recompute the Authenticode digest - the
Secure Boot boot test (OVMF with Microsoft's keys, enforcing) is what proves the chain.
"""

from __future__ import annotations

import datetime as dt
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from ..errors import BuildError
from ..fsutil import resolve_in_root
from ..run import run

# Microsoft's CAs for third-party UEFI code (shim): the 2011 CA and its 2023 successor.
MICROSOFT_UEFI_CAS = ("Microsoft Corporation UEFI CA 2011", "Microsoft UEFI CA 2023")
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002


@dataclass(frozen=True)
class Signature:
    subject: str  # signing certificate's CN
    issuer: str  # its issuer's CN


@dataclass(frozen=True)
class BootFiles:
    """The image's signed EFI binaries (host paths inside the image root)."""

    shim: Path
    grub: Path
    mokmanager: Path | None


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def _der(blob: bytes) -> bytes:
    """The DER SEQUENCE at the start of `blob` without the zero padding signers append."""
    if len(blob) < 2 or blob[0] != 0x30:
        raise ValueError("not a DER SEQUENCE")
    if blob[1] < 0x80:
        return blob[:2 + blob[1]]
    n = blob[1] & 0x7F
    return blob[:2 + n + int.from_bytes(blob[2:2 + n], "big")]


def signatures(path: Path) -> list[Signature]:
    """The Authenticode signers of a PE/COFF file (empty when it is not signed). Raises
    BuildError when the file is not a PE image at all."""
    data = path.read_bytes()
    if data[:2] != b"MZ" or len(data) < 0x40:
        raise BuildError(f"{path}: not an EFI (PE/COFF) binary")
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe:pe + 4] != b"PE\0\0":
        raise BuildError(f"{path}: not an EFI (PE/COFF) binary")
    opt = pe + 24
    magic = struct.unpack_from("<H", data, opt)[0]
    dirs = opt + {0x10B: 96, 0x20B: 112}.get(magic, -1 - opt)
    if dirs < 0:
        raise BuildError(f"{path}: unknown PE optional header magic {magic:#x}")
    number = struct.unpack_from("<I", data, dirs - 4)[0]
    if number <= 4:
        return []
    offset, size = struct.unpack_from("<II", data, dirs + 4 * 8)  # entry 4: certificate table
    out: list[Signature] = []
    end = min(offset + size, len(data))
    while offset and offset + 8 <= end:
        length, _revision, kind = struct.unpack_from("<IHH", data, offset)
        if length < 8:
            break
        if kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            try:
                certs = pkcs7.load_der_pkcs7_certificates(_der(data[offset + 8:offset + length]))
            except ValueError as e:
                raise BuildError(f"{path}: unreadable Authenticode signature: {e}") from None
            out += [Signature(_cn(c.subject), _cn(c.issuer)) for c in certs]
        offset += (length + 7) & ~7  # entries are 8-byte aligned
    return out


def find_boot_files(root: Path, shim: tuple[str, ...], grub: tuple[str, ...],
                    mokmanager: tuple[str, ...]) -> BootFiles:
    """The first existing candidate of each, resolved inside `root` (alternatives symlinks)."""

    def first(candidates: tuple[str, ...]) -> Path | None:
        for c in candidates:
            p = resolve_in_root(root, c)
            if p.is_file():
                return p
        return None

    found_shim, found_grub = first(shim), first(grub)
    if found_shim is None or found_grub is None:
        missing = [name for name, p in (("shim", found_shim), ("GRUB", found_grub)) if p is None]
        raise BuildError(f"no signed {' and '.join(missing)} in the image (looked for "
                         f"{', '.join((*shim, *grub))})",
                         hint="the distro's shim-signed and grub-efi-amd64-signed packages must be "
                              "installed for disk.firmware uefi/hybrid")
    return BootFiles(found_shim, found_grub, first(mokmanager))


def check_signed(files: BootFiles, kernel: Path) -> dict[str, list[str]]:
    """Refuse an unsigned shim, GRUB or kernel (and a shim Microsoft did not sign); return who
    signed each, for the manifest."""
    report: dict[str, list[str]] = {}
    problems: list[str] = []
    for name, path in (("shim", files.shim), ("grub", files.grub), ("kernel", kernel)):
        sigs = signatures(path)
        report[name] = sorted({f"{s.subject} (issuer: {s.issuer})" for s in sigs})
        if not sigs:
            problems.append(f"{name} {path.name} is not signed")
        elif name == "shim" and not any(s.issuer in MICROSOFT_UEFI_CAS for s in sigs):
            problems.append(f"shim {path.name} is not signed by Microsoft's UEFI CA "
                            f"(signers: {'; '.join(report[name])})")
    if problems:
        raise BuildError("Secure Boot: " + "; ".join(problems),
                         hint="install the distribution's signed packages (shim-signed, "
                              "grub-efi-amd64-signed, a signed linux-image), or set "
                              "disk.secure_boot: false")
    return report


def stub_grub_cfg(fs_uuid: str) -> str:
    """The ESP's grub.cfg: find the root filesystem, continue with its own grub.cfg."""
    return (f"search.fs_uuid {fs_uuid} root\n"
            "set prefix=($root)'/boot/grub'\n"
            "configfile $prefix/grub.cfg\n")


def make_esp(raw: Path, offset: int, size: int, volume_id: str, files: BootFiles, vendor: str,
             fs_uuid: str, scratch: Path, epoch: int | None = None) -> None:
    """FAT32 at `offset` (bytes) of `raw`, `size` bytes, holding the removable-media boot path
    and the vendor directory with the stub grub.cfg. With `epoch`, the file system's and the
    files' times are that (dosfstools and mtools read SOURCE_DATE_EPOCH; files keep their own
    times, clamped)."""
    env = {"SOURCE_DATE_EPOCH": str(epoch), "TZ": "UTC"} if epoch is not None else None
    # FAT stores creation and access times that mtools takes from the clock: a frozen one
    # (libfaketime) makes them the epoch's
    clock = ["faketime", "-f", dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")] \
        if epoch is not None else []  # -f: the clock stands still (without it, it starts there and runs)
    # 512-byte clusters: a ~100 MiB FAT32 then has enough clusters for mtools to accept it.
    run([*clock, "mkfs.vfat", "-F", "32", "-s", "1", "-n", "EFI", "-i", volume_id, "--offset",
         str(offset // 512), str(raw), str(size // 1024)], env=env)
    image = f"{raw}@@{offset}"
    stub = scratch / "esp-grub.cfg"
    stub.write_text(stub_grub_cfg(fs_uuid))
    if epoch is not None:
        os.utime(stub, (epoch, epoch))
    run([*clock, "mmd", "-i", image, "::/EFI", "::/EFI/BOOT", f"::/EFI/{vendor}"], env=env)
    copies = [(files.shim, "/EFI/BOOT/BOOTX64.EFI"), (files.grub, "/EFI/BOOT/grubx64.efi"),
              (files.shim, f"/EFI/{vendor}/shimx64.efi"), (files.grub, f"/EFI/{vendor}/grubx64.efi"),
              (stub, f"/EFI/{vendor}/grub.cfg")]
    if files.mokmanager is not None:
        copies += [(files.mokmanager, "/EFI/BOOT/mmx64.efi"), (files.mokmanager, f"/EFI/{vendor}/mmx64.efi")]
    for src, dest in copies:
        # -m: the file's own modification time (the package's), not the time of the copy
        run([*clock, "mcopy", "-m", "-i", image, str(src), f"::{dest}"] if epoch is not None
            else ["mcopy", "-i", image, str(src), f"::{dest}"], env=env)
