"""EFI binaries' Authenticode signers, the Secure Boot pre-check, and paths resolved inside an
image root (alternatives symlinks must never lead to the build host's files)."""

from __future__ import annotations

import datetime as dt
import os
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from imagefactory.builders import efi
from imagefactory.errors import BuildError
from imagefactory.fsutil import resolve_in_root


def _cert(subject: str, issuer: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert, key


def pe(path: Path, signer: tuple[str, str] | None = None) -> Path:
    """A minimal PE32+ file, optionally with a PKCS#7 certificate table entry (zero-padded to 8
    bytes, as signing tools write it)."""
    head = bytearray(0x200)
    head[:2] = b"MZ"
    struct.pack_into("<I", head, 0x3C, 0x40)
    head[0x40:0x44] = b"PE\0\0"
    opt = 0x40 + 24
    struct.pack_into("<H", head, opt, 0x20B)
    struct.pack_into("<I", head, opt + 108, 16)  # NumberOfRvaAndSizes
    blob = b""
    if signer is not None:
        cert, key = _cert(*signer)
        der = (pkcs7.PKCS7SignatureBuilder().set_data(b"image digest").add_signer(cert, key, hashes.SHA256())
               .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature]))
        entry = struct.pack("<IHH", 8 + len(der), 0x0200, 2) + der
        blob = entry + b"\0" * (-len(entry) % 8)
        struct.pack_into("<II", head, opt + 112 + 4 * 8, len(head), len(blob))
    path.write_bytes(bytes(head) + blob)
    return path


def test_signers_of_a_signed_and_an_unsigned_binary(tmp_path: Path) -> None:
    signed = pe(tmp_path / "grubx64.efi", ("Example Secure Boot Signing", "Example Master CA"))
    assert efi.signatures(signed) == [efi.Signature("Example Secure Boot Signing", "Example Master CA")]
    assert efi.signatures(pe(tmp_path / "plain.efi")) == []
    (tmp_path / "text").write_text("#!/bin/sh\n")
    with pytest.raises(BuildError, match="not an EFI"):
        efi.signatures(tmp_path / "text")


def test_check_signed_wants_a_microsoft_signed_shim_and_signed_grub_and_kernel(tmp_path: Path) -> None:
    ms = ("Microsoft Windows UEFI Driver Publisher", "Microsoft Corporation UEFI CA 2011")
    vendor = ("Vendor Secure Boot Signing", "Vendor Master CA")
    files = efi.BootFiles(pe(tmp_path / "shim", ms), pe(tmp_path / "grub", vendor), None)
    kernel = pe(tmp_path / "vmlinuz", vendor)
    report = efi.check_signed(files, kernel)
    assert report["shim"] == [
        "Microsoft Windows UEFI Driver Publisher (issuer: Microsoft Corporation UEFI CA 2011)"]
    with pytest.raises(BuildError, match="kernel vmlinuz-unsigned is not signed"):
        efi.check_signed(files, pe(tmp_path / "vmlinuz-unsigned"))
    self_signed = efi.BootFiles(pe(tmp_path / "shim2", vendor), files.grub, None)
    with pytest.raises(BuildError, match="not signed by Microsoft"):
        efi.check_signed(self_signed, kernel)


def test_boot_files_resolve_alternatives_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/shim").mkdir(parents=True)
    (root / "usr/lib/grub/x86_64-efi-signed").mkdir(parents=True)
    (root / "etc/alternatives").mkdir(parents=True)
    (root / "usr/lib/shim/shimx64.efi.signed.latest").write_bytes(b"shim")
    (root / "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed").write_bytes(b"grub")
    # Ubuntu: an absolute alternatives link, which on the host would point at the host's file
    os.symlink("/etc/alternatives/shimx64.efi.signed", root / "usr/lib/shim/shimx64.efi.signed")
    os.symlink("/usr/lib/shim/shimx64.efi.signed.latest", root / "etc/alternatives/shimx64.efi.signed")
    found = efi.find_boot_files(root, ("/usr/lib/shim/shimx64.efi.signed",),
                                ("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",),
                                ("/usr/lib/shim/mmx64.efi",))
    assert found.shim == root.resolve() / "usr/lib/shim/shimx64.efi.signed.latest"
    assert found.mokmanager is None
    with pytest.raises(BuildError, match="no signed GRUB"):
        efi.find_boot_files(root, ("/usr/lib/shim/shimx64.efi.signed",), ("/usr/lib/grub/none",), ())


def test_resolve_in_root_never_leaves_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    os.symlink("/run", root / "var/run")  # as Debian ships it
    os.symlink("../../../../../../etc", root / "escape")
    os.symlink("loop", root / "loop")
    real = root.resolve()
    assert resolve_in_root(root, "/var/run/x/y.conf") == real / "run/x/y.conf"
    assert resolve_in_root(root, "/../../etc/passwd") == real / "etc/passwd"
    assert resolve_in_root(root, "/escape/passwd") == real / "etc/passwd"
    with pytest.raises(BuildError, match="too many levels"):
        resolve_in_root(root, "/loop/x")
