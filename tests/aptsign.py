"""apt archives signed by throwaway keys, for tests of Release verification: gpg makes the keys
and signs (InRelease, Release.gpg) the way archive tools do; gpgv in the product verifies."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

RELEASE = """Origin: Ubuntu
Label: Ubuntu
Suite: {suite}
Codename: {codename}
Date: Fri, 04 Dec 2026 12:00:00 UTC
Architectures: amd64
Components: main restricted universe multiverse
Description: Ubuntu test
SHA256:
 0000000000000000000000000000000000000000000000000000000000000000 0 main/binary-amd64/Packages
"""


def gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback",
                           "--passphrase", "", *args], input=data, capture_output=True, check=True).stdout


def make_keys(base: Path) -> Iterator[dict[str, Path]]:
    """Two signing keys; their public halves as binary keyring files (as apt keyrings are)."""
    out: dict[str, Path] = {}
    for name in ("archive", "other"):
        home = base / name
        home.mkdir(mode=0o700)
        gpg(home, "--quick-gen-key", f"{name} <{name}@example.invalid>", "ed25519", "sign", "never")
        ring = base / f"{name}.gpg"
        ring.write_bytes(gpg(home, "--export"))
        out[name] = ring
        out[f"{name}-home"] = home
    yield out
    for name in ("archive", "other"):  # signing started an agent per home: stop it
        subprocess.run(["gpgconf", "--homedir", str(out[f"{name}-home"]), "--kill", "all"], check=False)


def publish(mirror: Path, suite: str, codename: str, home: Path, *, inline: bool = True,
            detached: bool = False, components: str | None = None, served: str | None = None) -> Path:
    """`served`: the Suite field when the directory serves another suite than its name."""
    d = mirror / "dists" / suite
    d.mkdir(parents=True, exist_ok=True)
    text = RELEASE.format(suite=served or suite, codename=codename)
    if components is not None:
        text = text.replace("main restricted universe multiverse", components)
    (d / "Release").write_text(text)
    if inline:
        (d / "InRelease").write_bytes(gpg(home, "--clearsign", "-o", "-", str(d / "Release")))
    if detached:
        (d / "Release.gpg").write_bytes(gpg(home, "--detach-sign", "-o", "-", str(d / "Release")))
    return d
