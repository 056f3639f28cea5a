"""The key of the root cache (imagefactory.rootcache): the same inputs give the same key, and a
change to any input that decides the root gives another one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from imagefactory.archive import Suite
from imagefactory.rootcache import Inputs, release_fingerprint

RELEASE = b"Codename: x\nDate: Sat, 05 Dec 2026 00:00:00 UTC\nSHA256:\n aa 10 main/binary-amd64/Packages.xz\n"


def _inputs(tmp_path: Path, release: bytes = RELEASE) -> Inputs:
    ring = tmp_path / "archive.gpg"
    if not ring.exists():
        ring.write_bytes(b"key one")
    return Inputs(("--mode=root", "--variant=apt", "--include=a,b"), "jammy", ("http://m/ubuntu",), (ring,),
                  (Suite("http://m/ubuntu", "jammy", release, "F00"),), "mmdebstrap 1.3.5")


def test_same_inputs_same_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert _inputs(tmp_path).key() == _inputs(tmp_path).key()
    # a re-signed Release with a new Date and the same indexes resolves to the same packages
    redated = RELEASE.replace(b"Sat, 05 Dec", b"Sun, 06 Dec")
    assert _inputs(tmp_path, redated).key() == _inputs(tmp_path).key()
    assert release_fingerprint(b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n" + RELEASE
                               + b"-----BEGIN PGP SIGNATURE-----\nxyz\n") == release_fingerprint(RELEASE)


def test_every_input_is_in_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    base = _inputs(tmp_path)
    keys = {base.key()}
    moved = Suite("http://m/ubuntu", "jammy", RELEASE.replace(b" aa ", b" ab "), "F00")  # a new index
    for change in ({"options": ("--mode=root", "--variant=apt", "--include=a,b,c")},
                   {"suite": "jammy-proposed"},
                   {"mirrors": ("http://m/ubuntu", "deb http://m/ubuntu jammy-security main")},
                   {"releases": (moved,)},
                   {"tool_version": "mmdebstrap 1.4.0"},
                   {"source_date_epoch": 1700000000}):  # what mmdebstrap and the packages' scripts get
        keys.add(dataclasses.replace(base, **change).key())  # type: ignore[arg-type]
    (tmp_path / "archive.gpg").write_bytes(b"key two")  # same path, other key
    keys.add(base.key())
    assert len(keys) == 8
