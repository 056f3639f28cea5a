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
from ..recipes.model import Disk, Recipe
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


DECLARED_SKIP = "recipe: "  # the suites' prefix for a skip the recipe decided


def parse_junit(path: Path) -> tuple[int, int, int, int, list[str]]:
    """(passed, failed, errors, skipped, failed names). A skipped check is a pass only when the
    recipe decided it (its reason starts with `DECLARED_SKIP`, e.g. no Zarf baked); any other
    skip - an empty parametrisation, a probe that could not run - counts as a failure."""
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
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                failed_names.append(name)
            skip = case.find("skipped")
            if skip is not None and not (skip.get("message") or "").startswith(DECLARED_SKIP):
                skipped -= 1
                failures += 1
                failed_names.append(f"{name} (skipped, not by the recipe: {skip.get('message')})")
    return tests - failures - errors - skipped, failures, errors, skipped, failed_names


def clone_firmwares(disk: Disk, clones: int = 2) -> tuple[lv.GuestFirmware, ...]:
    """What the clones boot on, in turn: every firmware the disk declares, UEFI with Secure Boot
    enforced when the image is meant for it (a hybrid disk: clone 0 BIOS, clone 1 UEFI). With a
    single clone a hybrid disk boots UEFI: the longer chain (shim, GRUB and kernel signatures,
    the ESP), which a BIOS boot cannot vouch for."""
    uefi: lv.GuestFirmware = "uefi-secure" if disk.secure_boot else "uefi"
    if disk.firmware == "hybrid":
        return ("bios", uefi) if clones > 1 else (uefi,)
    return {"bios": ("bios",), "uefi": (uefi,)}[disk.firmware]


def check_test_host(recipe: Recipe) -> None:
    """What this host needs to boot-test `recipe`, checked before a build spends minutes: the
    firmware of every clone (OVMF for UEFI ones). UserError (exit 2) naming the package."""
    for firmware in set(clone_firmwares(recipe.disk)) - {"bios"}:
        lv.ovmf_files(firmware)


def suite_target(recipe: Recipe, user: str, key: str, public_key: str, image_virtual_size: int,
                 clones: list[dict[str, Any]], stig_results: Path) -> dict[str, Any]:
    """What the suites get to know (IMAGEFACTORY_TEST_TARGET): the clones and how to reach them,
    the recipe, the distro's particulars, the build host (nothing of it may leak into the image)
    and, with a `stig` section, the selected catalogues and where the results go."""
    from ..distros import get as distro
    from ..stig.selection import selections

    d = distro(recipe.os.family)
    target: dict[str, Any] = {
        "user": user, "key": key, "public_key": public_key, "image_virtual_size": image_virtual_size,
        "clones": clones,
        "recipe": recipe.model_dump(mode="json"),
        "distro": {"rke2_prefix": (recipe.rke2.install_prefix if recipe.rke2 else None) or d.rke2_prefix,
                   "zarf_dir": d.zarf_dir, "unwanted_packages": list(d.unwanted_packages)},
        "build_host": build_host_facts(),
    }
    if recipe.stig is not None:
        target["stig"] = {"selections": [sel.to_json() for sel in selections(recipe)],
                          "results": str(stig_results)}
    return target


def run_suites(image: Path, recipe: Recipe, junit: Path, scratch: Path, log_dir: Path,
               stig_results: Path | None = None) -> TestResults:
    """Boot `recipe.tests.clones` clones of `image`, run the suites, write `junit`. A recipe with
    a `stig` section also runs the `stig` suite, which writes its results to `stig_results`."""
    from ..distros import get as distro

    t = recipe.tests
    accel = lv.resolve_accelerator(recipe.effective_accelerator())
    start = time.monotonic()
    with lv.boot(
        image, clones=t.clones, user=distro(recipe.os.family).default_user, accelerator=accel,
        memory_mib=t.memory // 1024**2, cpus=t.cpus, boot_timeout=t.boot_timeout,
        scratch=scratch, console_dir=log_dir, firmwares=clone_firmwares(recipe.disk, t.clones),
        tcg_cpus=t.tcg_cpus,
    ) as booted:
        boot_seconds = time.monotonic() - start
        clones = [{"name": g.name, "port": g.port, "instance_id": g.instance_id, "hostname": g.hostname,
                   "firmware": g.firmware} for g in booted.guests]
        target = suite_target(recipe, booted.user, str(booted.key), booted.public_key,
                              booted.image_virtual_size, clones,
                              stig_results or booted.directory / "stig-results.json")
        suites: list[str] = list(t.suites) + (["stig"] if recipe.stig is not None else [])
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
    for line in result.stdout.splitlines():
        if line.startswith("facts "):  # round trips and slow commands per clone (suites/conftest.py)
            log.info("%s", line)
    if not junit.is_file():
        raise BuildError(f"the test run wrote no results (pytest exit {result.returncode})\n"
                         f"{result.stdout[-2000:]}")
    passed, failed, errors, skipped, names = parse_junit(junit)
    os.chmod(junit, 0o644)
    return TestResults(passed, failed, errors, skipped, boot_seconds, test_seconds, tuple(suites),
                       accel, tuple(names))
