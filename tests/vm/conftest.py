"""Fixtures shared by the VM tier."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagefactory.build import build
from imagefactory.recipes import RecipeBook
from imagefactory.store.local import LocalStore
from tests.conftest import RECIPES, require_root


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    require_root()
    # Not under pytest's 0700 tmp: libvirt's qemu user must reach the images.
    d = Path(tempfile.mkdtemp(prefix="imagefactory-vm-tests-", dir="/var/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def built(workdir: Path) -> dict[str, Any]:
    """debian-12-base, built, boot-tested and stored once for the whole session (the Packer test
    builds on it)."""
    loaded = RecipeBook(RECIPES).load("debian-12-base")
    return build(loaded, workdir, store=LocalStore(workdir / "store"))
