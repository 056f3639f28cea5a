from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagefactory.errors import UserError
from imagefactory.store.local import LocalStore


def fake_build(tmp: Path, name: str, version: str) -> Path:
    d = tmp / "builds" / name / version
    d.mkdir(parents=True)
    (d / "image.qcow2").write_bytes(b"QFI\xfb" + version.encode())
    (d / "checklists").mkdir()  # builds have subdirectories (STIG checklists)
    (d / "checklists/ubuntu2204-debian.cklb").write_text("{}")
    (d / "manifest.json").write_text(json.dumps({
        "name": name, "version": version, "created": "2026-11-29T00:00:00+00:00",
        "os": {"family": "debian", "release": "12", "arch": "amd64"},
        "image": {"file": "image.qcow2", "sha256": "ab" * 32, "size": 10},
        "tests": {"ok": True},
    }))
    return d


def test_add_list_resolve(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    assert store.add(fake_build(tmp_path, "deb", "20261129.000001-aaaa")) == "deb:20261129.000001-aaaa"
    store.add(fake_build(tmp_path, "deb", "20261129.000002-bbbb"))
    assert [e["version"] for e in store.list()] == ["20261129.000001-aaaa", "20261129.000002-bbbb"]
    latest = store.resolve("deb")
    assert latest.read_bytes().endswith(b"000002-bbbb")
    assert store.resolve("deb:20261129.000001-aaaa").read_bytes().endswith(b"000001-aaaa")
    assert not list((tmp_path / "store" / "deb").glob(".*"))  # no temp dirs left
    assert (latest.parent / "checklists/ubuntu2204-debian.cklb").read_text() == "{}"


def test_unknown_refs_are_user_errors(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    with pytest.raises(UserError, match="no such image"):
        store.resolve("nope")
    store.add(fake_build(tmp_path, "deb", "1"))
    with pytest.raises(UserError, match="no version '2'"):
        store.resolve("deb:2")
