"""Shared fixtures. Test tiers: unit (default), `integration` (root + host tools), `vm` (boots)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    d = tmp_path / "recipes"
    d.mkdir()
    return d


def write(d: Path, name: str, text: str) -> Path:
    p = d / f"{name}.yaml"
    p.write_text(text)
    return p


MINIMAL = """\
os: {family: debian, release: "12"}
source: {type: mmdebstrap, suite: bookworm}
"""


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration and vm tests need root (CI runs them as root)")


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory first on PATH for fake host binaries (scripts), osbuild-style."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def apt_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Two throwaway archive signing keys (`archive`, `other`): keyring files and gpg homes."""
    from tests.aptsign import make_keys

    yield from make_keys(tmp_path_factory.mktemp("apt-keys"))
