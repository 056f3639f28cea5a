"""Ed25519 signatures over published manifests.

What is signed: the manifest as a JSON object *minus* its `signature` member, serialised
canonically (keys sorted, no whitespace, UTF-8, no NaN) - every other field, known or not, is
covered, so a consumer verifies exactly the bytes-equivalent document it received, never a
re-serialisation of a parsed model. The signature member records the algorithm, a key id (first
16 hex digits of the sha256 of the raw 32-byte public key, so operators can tell keys apart) and
the base64 signature.

Keys are PEM files (PKCS#8 private key without a passphrase, SubjectPublicKeyInfo public key).
The private key is a credential: it is read from `$IMAGEFACTORY_SIGNING_KEY` (PEM text) or from a
file that must not be readable by group or others (like ssh refuses loose private keys), and it
is only needed where images are published, promoted or revoked. Consumers need the public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import BuildError, UserError

ALGORITHM = "ed25519"
PRIVATE_KEY_ENV = "IMAGEFACTORY_SIGNING_KEY"  # PEM text of the private key
PUBLIC_KEY_ENV = "IMAGEFACTORY_SIGNING_PUBLIC_KEY"  # path of the public key file


class SignatureError(BuildError):
    """A manifest is unsigned, signed with another key, or was changed after signing."""


def canonical(document: dict[str, Any]) -> bytes:
    """The signed bytes: the document without `signature`, canonical JSON."""
    body = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(document: dict[str, Any], private: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of `document` with a fresh `signature` member."""
    sig = private.sign(canonical(document))
    return {**{k: v for k, v in document.items() if k != "signature"},
            "signature": {"algorithm": ALGORITHM, "key_id": key_id(private.public_key()),
                          "value": base64.b64encode(sig).decode()}}


def verify(document: dict[str, Any], public: Ed25519PublicKey, what: str) -> None:
    """Raise `SignatureError` unless `document` carries a valid signature by `public`."""
    sig = document.get("signature")
    if not isinstance(sig, dict) or not sig.get("value"):
        raise SignatureError(f"{what}: the manifest is not signed",
                             hint="unsigned images are refused; publish it again with a signing key")
    if sig.get("algorithm") != ALGORITHM:
        raise SignatureError(f"{what}: unsupported signature algorithm {sig.get('algorithm')!r}")
    expected_id = key_id(public)
    try:
        raw = base64.b64decode(str(sig["value"]), validate=True)
        public.verify(raw, canonical(document))
    except (InvalidSignature, ValueError):
        other = "" if sig.get("key_id") == expected_id else \
            f" (signed by key {sig.get('key_id')}, the configured public key is {expected_id})"
        raise SignatureError(f"{what}: the manifest signature does not verify{other}",
                             hint="the manifest was changed after signing or signed with another key; "
                                  "do not use this image") from None


def generate(directory: Path, name: str = "imagefactory", force: bool = False) -> tuple[Path, Path]:
    """Write `<name>.key` (0600) and `<name>.pub`; refuses to overwrite unless `force`."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if not force:
        for p in (private_path, public_path):
            if p.exists():
                raise UserError(f"{p}: already exists", hint="pass --force to replace the key pair "
                                "(images signed with the old key then fail verification)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = private_path.with_name(f".{private_path.name}.tmp")
    tmp.unlink(missing_ok=True)
    # Created 0600 from the start: the key never exists on disk with looser permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, private_path)
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    public_path.chmod(0o644)
    return private_path, public_path


def check_secret_file(path: Path, what: str) -> bytes:
    """Read a credential file, refusing it when group or others may read or write it."""
    try:
        st = path.stat()
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise UserError(f"{path}: {what} is accessible by group or others "
                            f"(mode {stat.S_IMODE(st.st_mode):04o})", hint=f"chmod 600 {path}")
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what}: {e.strerror}") from None


def load_private_key(path: str | None) -> Ed25519PrivateKey:
    """The signing key from $IMAGEFACTORY_SIGNING_KEY (PEM text) or the 0600 file `path`."""
    env = os.environ.get(PRIVATE_KEY_ENV)
    if env:
        data, where = env.encode(), f"${PRIVATE_KEY_ENV}"
    elif path:
        data, where = check_secret_file(Path(path), "signing key"), path
    else:
        raise UserError("no signing key: publishing, promoting and revoking sign the manifest",
                        hint=f"run 'imagefactory keys generate' and set signing.private_key in "
                             f"imagefactory.yaml (or ${PRIVATE_KEY_ENV})")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise UserError(f"{where}: not a PEM private key without passphrase ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{where}: not an ed25519 key", hint="use 'imagefactory keys generate'")
    return key


def load_public_key(path: str | None) -> Ed25519PublicKey:
    """The verification key from `path` (signing.public_key) or $IMAGEFACTORY_SIGNING_PUBLIC_KEY."""
    chosen = os.environ.get(PUBLIC_KEY_ENV) or path
    if not chosen:
        raise UserError("no public key to verify image signatures with",
                        hint=f"set signing.public_key in imagefactory.yaml (or ${PUBLIC_KEY_ENV}) to "
                             "the .pub file written by 'imagefactory keys generate'")
    try:
        data = Path(chosen).read_bytes()
    except OSError as e:
        raise UserError(f"{chosen}: cannot read the public key: {e.strerror}") from None
    return load_public_key_bytes(data, chosen)


def load_public_key_bytes(data: bytes, where: str) -> Ed25519PublicKey:
    """An ed25519 public key from PEM text (`where` names it in errors)."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise UserError(f"{where}: not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"{where}: not an ed25519 public key")
    return key
