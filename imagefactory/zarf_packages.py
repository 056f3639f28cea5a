"""Zarf package files checked the way `zarf package deploy` checks them, before they are baked.

Upstream (zarf-dev/zarf v0.84.0, src/pkg/packager/layout/package.go):
- integrity, always: `metadata.aggregateChecksum` is the sha256 of `checksums.txt`, whose lines
  (`<sha256> <path>`) cover every file of the package except `zarf.yaml` (the root of trust),
  `checksums.txt` itself, the signatures and the `build.provenanceFiles` a signed zarf.yaml names;
  a file missing, a mismatch or an extra file is fatal (validatePackageIntegrity);
- signature: `zarf.yaml` signed with a cosign key, either as a Sigstore bundle (`zarf.bundle.sig`,
  written since v0.71, the only format since v0.81) or as the legacy base64 signature
  (`zarf.yaml.sig`). `build.signed` says whether the package is signed. With a key, an unsigned
  package is fatal ("verification material was provided but the package is not signed"), as is a
  bad signature; without a key, deploy only warns (VerifyIfPossible).

A site that signs its packages names the public key in the recipe (`zarf.verify.key`): the build
refuses an unsigned or wrongly signed package here, and first boot passes `--key` to every deploy,
so the node refuses one that was swapped after the build.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .tarballs import ArchiveProblem, open_tar_stream

ZARF_YAML = "zarf.yaml"
CHECKSUMS = "checksums.txt"
BUNDLE = "zarf.bundle.sig"
LEGACY_SIGNATURE = "zarf.yaml.sig"
_SMALL = {ZARF_YAML, CHECKSUMS, BUNDLE, LEGACY_SIGNATURE}
_SMALL_LIMIT = 16 << 20  # zarf.yaml and friends; anything larger is not a Zarf package

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


class PackageProblem(Exception):
    """A package (or key) that `zarf package deploy` would refuse; the message says why."""


@dataclass(frozen=True)
class PackageCheck:
    name: str
    kind: str
    version: str
    signed: bool
    signature: str | None  # "bundle" | "legacy" when verified with a key, else None
    aggregate_checksum: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "version": self.version,
                "signed": self.signed, "signature_verified": self.signature}


def load_public_key(data: bytes, where: str) -> PublicKey:
    """A cosign public key (PEM `PUBLIC KEY`: ECDSA P-256 from `cosign generate-key-pair`,
    Ed25519 or RSA)."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise PackageProblem(f"{where}: not a PEM public key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise PackageProblem(f"{where}: {type(key).__name__} keys are not cosign keys")
    return key


def read_key(directory: Path, rel: str) -> tuple[bytes, PublicKey]:
    """The recipe's `zarf.verify.key`: a file inside the recipe directory (a link out of it is
    refused: nothing of the build host goes into an image), holding a cosign public key."""
    base = directory.resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise PackageProblem(f"{rel} resolves to {path}, outside the recipe directory {base}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PackageProblem(f"{rel}: {e.strerror}") from None
    return data, load_public_key(data, rel)


def _verify(key: PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def _scan(path: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    small: dict[str, bytes] = {}
    digests: dict[str, str] = {}
    try:
        with open_tar_stream(path) as tar:
            for m in tar:
                if not m.isfile():
                    continue
                name = m.name.removeprefix("./")
                f = tar.extractfile(m)
                assert f is not None
                if name in _SMALL:
                    if m.size > _SMALL_LIMIT:
                        raise PackageProblem(f"{name} is {m.size} bytes: not a Zarf package")
                    small[name] = f.read()
                    digests[name] = hashlib.sha256(small[name]).hexdigest()
                    continue
                h = hashlib.sha256()
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                digests[name] = h.hexdigest()
    except ArchiveProblem as e:
        raise PackageProblem(f"not a readable Zarf package archive: {e}") from None
    return small, digests


def _definition(raw: bytes) -> dict[str, Any]:
    try:
        # v1beta1 packages carry a second document; the first (v1alpha1) is what zarf reads.
        doc = next(iter(yaml.safe_load_all(raw)), None)
    except yaml.YAMLError as e:
        raise PackageProblem(f"zarf.yaml does not parse ({e})") from None
    if not isinstance(doc, dict):
        raise PackageProblem("zarf.yaml is not a mapping")
    return doc


def _check_integrity(pkg: dict[str, Any], small: dict[str, bytes], digests: dict[str, str]) -> str:
    if CHECKSUMS not in small:
        raise PackageProblem("checksums.txt missing")
    aggregate = str((pkg.get("metadata") or {}).get("aggregateChecksum") or "")
    if hashlib.sha256(small[CHECKSUMS]).hexdigest() != aggregate:
        raise PackageProblem(f"checksums.txt does not match metadata.aggregateChecksum {aggregate!r}")
    remaining = {n for n in digests if n not in (ZARF_YAML, CHECKSUMS, BUNDLE, LEGACY_SIGNATURE)}
    build = pkg.get("build") or {}
    if _signed(build, small):
        remaining -= set(build.get("provenanceFiles") or ())
    for line in small[CHECKSUMS].decode(errors="replace").split("\n"):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise PackageProblem(f"invalid checksum line: {line}")
        sha, rel = parts
        if rel not in digests:
            raise PackageProblem(f"file {rel} from checksum missing in layout")
        if digests[rel] != sha:
            raise PackageProblem(f"{rel}: sha256 {digests[rel]} does not match checksums.txt ({sha})")
        remaining.discard(rel)
    if remaining:
        raise PackageProblem("package contains additional files not present in the checksum "
                             + ", ".join(sorted(remaining)))
    return aggregate


def _signed(build: dict[str, Any], small: dict[str, bytes]) -> bool:
    if isinstance(build.get("signed"), bool):
        return bool(build["signed"])
    return LEGACY_SIGNATURE in small  # packages from before build.signed existed


def _bundle_signature(raw: bytes, zarf_yaml: bytes) -> bytes:
    try:
        bundle = json.loads(raw)
        ms = bundle["messageSignature"]
        digest = ms.get("messageDigest") or {}
        signature = base64.b64decode(ms["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise PackageProblem(f"zarf.bundle.sig is not a key-signed Sigstore bundle ({e})") from None
    if "certificate" in (bundle.get("verificationMaterial") or {}) or \
            "x509CertificateChain" in (bundle.get("verificationMaterial") or {}):
        raise PackageProblem("the package was signed keyless (certificate in zarf.bundle.sig): "
                             "a key cannot verify it")
    expected = base64.b64encode(hashlib.sha256(zarf_yaml).digest()).decode()
    if digest and (digest.get("algorithm") != "SHA2_256" or digest.get("digest") != expected):
        raise PackageProblem("zarf.bundle.sig was made for a different zarf.yaml")
    return signature


def check_package(path: Path, key: PublicKey | None) -> PackageCheck:
    """Integrity always; with ``key``, the signature over zarf.yaml as `zarf package deploy --key`."""
    small, digests = _scan(path)
    if ZARF_YAML not in small:
        raise PackageProblem("zarf.yaml missing: not a Zarf package")
    pkg = _definition(small[ZARF_YAML])
    aggregate = _check_integrity(pkg, small, digests)
    meta = pkg.get("metadata") or {}
    signed = _signed(pkg.get("build") or {}, small)
    verified: str | None = None
    if key is not None:
        if not signed:
            raise PackageProblem("verification material was provided but the package is not signed")
        if BUNDLE in small:
            verified = "bundle"
            signature = _bundle_signature(small[BUNDLE], small[ZARF_YAML])
        elif LEGACY_SIGNATURE in small:
            verified = "legacy"
            try:
                signature = base64.b64decode(small[LEGACY_SIGNATURE].strip(), validate=True)
            except binascii.Error:
                raise PackageProblem("zarf.yaml.sig is not base64") from None
        else:
            raise PackageProblem("signature not found: neither bundle nor legacy signature exists")
        if not _verify(key, signature, small[ZARF_YAML]):
            raise PackageProblem(f"signature verification failed: {verified} signature does not "
                                 "match zarf.yaml with the configured key")
    return PackageCheck(name=str(meta.get("name", "")), kind=str(pkg.get("kind", "")),
                        version=str(meta.get("version", "")), signed=signed, signature=verified,
                        aggregate_checksum=aggregate)
