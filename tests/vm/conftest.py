"""Fixtures shared by the VM tier."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    require_root()
    # Not under pytest's 0700 tmp: libvirt's qemu user must reach the images.
    d = Path(tempfile.mkdtemp(prefix="imagefactory-vm-tests-", dir="/var/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
