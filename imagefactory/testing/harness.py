"""Run the test suites of a recipe against booted clones of an image; results as JUnit XML."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError
from ..fsutil import atomic_write
from ..recipes.model import Recipe
from ..run import run
from . import libvirt as lv

log = logging.getLogger(__name__)
SUITES = Path(__file__).parent / "suites"


@dataclass(frozen=True)
class TestResults:
    passed: int
    failed: int
    errors: int
    skipped: int
    boot_seconds: float
    test_seconds: float
    suites: tuple[str, ...]
    accelerator: str
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.errors == 0 and self.passed > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "passed": self.passed, "failed": self.failed, "errors": self.errors,
            "skipped": self.skipped, "boot_seconds": round(self.boot_seconds, 1),
            "test_seconds": round(self.test_seconds, 1), "suites": list(self.suites),
            "accelerator": self.accelerator, "failures": list(self.failures),
        }


def build_host_facts() -> dict[str, Any]:
    """What must not leak from the build host into an image."""
    nameservers = []
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                nameservers.append(parts[1])
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "nameservers": nameservers}


def parse_junit(path: Path) -> tuple[int, int, int, int, list[str]]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = failures = errors = skipped = 0
    failed_names: list[str] = []
    for s in suites:
        tests += int(s.get("tests", 0))
        failures += int(s.get("failures", 0))
        errors += int(s.get("errors", 0))
        skipped += int(s.get("skipped", 0))
        for case in s.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed_names.append(f"{case.get('classname')}::{case.get('name')}")
    return tests - failures - errors - skipped, failures, errors, skipped, failed_names


def run_suites(image: Path, recipe: Recipe, junit: Path, scratch: Path, log_dir: Path,
               stig_results: Path | None = None) -> TestResults:
    """Boot `recipe.tests.clones` clones of `image`, run the suites, write `junit`. A recipe with
    a `stig` section also runs the `stig` suite, which writes its results to `stig_results`."""
    from ..distros import get as distro
    from ..stig.selection import selections

    t = recipe.tests
    accel = lv.resolve_accelerator(recipe.effective_accelerator())
    start = time.monotonic()
    with lv.boot(
        image, clones=t.clones, user=distro(recipe.os.family).default_user, accelerator=accel,
        memory_mib=t.memory // 1024**2, cpus=t.cpus, boot_timeout=t.boot_timeout,
        scratch=scratch, console_dir=log_dir,
    ) as booted:
        boot_seconds = time.monotonic() - start
        target = {
            "user": booted.user,
            "key": str(booted.key),
            "public_key": booted.public_key,
            "image_virtual_size": booted.image_virtual_size,
            "clones": [
                {"name": g.name, "port": g.port, "instance_id": g.instance_id,
                 "hostname": g.hostname}
                for g in booted.guests
            ],
            "recipe": recipe.model_dump(mode="json"),
            "distro": {"rke2_prefix": (recipe.rke2.install_prefix if recipe.rke2 else None)
                       or distro(recipe.os.family).rke2_prefix,
                       "zarf_dir": distro(recipe.os.family).zarf_dir},
            "build_host": build_host_facts(),
        }
        suites: list[str] = list(t.suites)
        if recipe.stig is not None:
            suites.append("stig")
            target["stig"] = {"selections": [sel.to_json() for sel in selections(recipe)],
                              "results": str(stig_results or booted.directory / "stig-results.json")}
        target_file = booted.directory / "target.json"
        atomic_write(target_file, json.dumps(target), mode=0o600)
        files = [str(SUITES / f"test_{s}.py") for s in suites]
        tstart = time.monotonic()
        result = run(
            [sys.executable, "-m", "pytest", "-c", str(SUITES / "pytest.ini"),
             "--rootdir", str(SUITES), "-q", "--junitxml", str(junit), *files],
            env={"IMAGEFACTORY_TEST_TARGET": str(target_file), "PYTHONDONTWRITEBYTECODE": "1"},
            cwd=SUITES, check=False, timeout=t.timeout,
        )
        test_seconds = time.monotonic() - tstart
    if not junit.is_file():
        raise BuildError(f"the test run wrote no results (pytest exit {result.returncode})\n"
                         f"{result.stdout[-2000:]}")
    passed, failed, errors, skipped, names = parse_junit(junit)
    os.chmod(junit, 0o644)
    return TestResults(passed, failed, errors, skipped, boot_seconds, test_seconds, tuple(suites),
                       accel, tuple(names))
