"""Throw-away SSH keys for one run (a boot test, a Packer build VM, a test cluster).

Its own small module because the builders, the test harness and the cluster tools all need it
and none of them may depend on another for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def ephemeral_key(directory: Path) -> tuple[Path, str]:
    """A fresh ed25519 key for one test run; the private half never leaves `directory`."""
    key = Ed25519PrivateKey.generate()
    path = directory / "id_ed25519"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption()))
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH).decode()
    return path, f"{pub} imagefactory-boot-test"
