"""ci/test.sh runs the VM tier as two chains of explicitly listed test files: a VM test file in
neither chain would silently never run in CI."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_vm_test_file_is_in_a_ci_chain() -> None:
    script = (REPO / "ci/test.sh").read_text()
    listed = re.findall(r"tests/vm/(test_\w+\.py)", script)
    present = sorted(p.name for p in (REPO / "tests/vm").glob("test_*.py"))
    assert present and sorted(set(listed)) == present, (listed, present)
    # the one file both chains share is split by release, each release in exactly one chain
    assert re.search(r'test_ubuntu_base\.py -k "not 22\.04"', script)
    assert re.search(r'test_ubuntu_base\.py -k "not 24\.04"', script)
