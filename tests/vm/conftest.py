"""Fixtures shared by the VM tier."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
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
def build_once(workdir: Path) -> Callable[[str], dict[str, Any]]:
    """A shipped recipe built, boot-tested and stored once per session, whichever test asks first
    (the Packer test builds on ubuntu-22.04-base); a failed build fails every test that needs it,
    without building again."""
    done: dict[str, dict[str, Any] | BaseException] = {}

    def get(name: str) -> dict[str, Any]:
        if name not in done:
            try:
                done[name] = build(RecipeBook(RECIPES).load(name), workdir,
                                   store=LocalStore(workdir / "store"))
            except Exception as e:
                done[name] = e
        got = done[name]
        if isinstance(got, BaseException):
            raise AssertionError(f"the session's build of {name} failed: {got}") from got
        return got

    return get


@pytest.fixture(scope="session")
def built(build_once: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """debian-12-base (Debian keeps its base build and boot in CI)."""
    return build_once("debian-12-base")
