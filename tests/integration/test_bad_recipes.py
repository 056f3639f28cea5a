"""The corpus of bad recipes (tests/bad_recipes/): each is refused by `recipes validate` with exit
2, its file, line and key named, the `# expect:` text in the message, no traceback, in under 5 s
(of CPU).
Grow it with every class of mistake found."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[1] / "bad_recipes"
CASES = sorted(p.stem for p in CORPUS.glob("*.yaml") if p.stem != "base")


def expectation(name: str) -> str:
    first = (CORPUS / f"{name}.yaml").read_bytes().split(b"\n", 1)[0].decode()
    assert first.startswith("# expect: "), f"{name}.yaml: no '# expect:' first line"
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("name", CASES)
def test_bad_recipe_is_a_clear_error(name: str) -> None:
    # The child's CPU time, not wall-clock: CI runs this beside booting VMs on two cores (an
    # idle machine answers each case in about a second, see README).
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-m", "imagefactory.cli", "--recipes", str(CORPUS), "recipes",
                        "validate", name], capture_output=True, text=True, timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    took = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out, out
    assert re.search(rf"{re.escape(str(CORPUS / name))}\.yaml(:\d+)?: ", out), out  # the file (and line)
    assert expectation(name) in out, out
    assert took < 5, f"{took:.1f} s of CPU"


def test_the_corpus_is_not_empty() -> None:
    assert len(CASES) >= 25
