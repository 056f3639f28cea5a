"""ruff and mypy run as tests, so a lint or type error fails CI like any other test."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_ruff() -> None:
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "imagefactory", "tests", "benchmarks"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_modules_stay_small() -> None:
    too_big = {str(p.relative_to(REPO)): n for p in (REPO / "imagefactory").rglob("*.py")
               if (n := len(p.read_text().splitlines())) > 800}
    assert too_big == {}
