"""Benchmark: the boot test of a stored image against booting its clones until they are ready.
Run as root on a prepared host, with the image already built and stored:

    .venv/bin/python benchmarks/boot_test.py [--workdir DIR] [--rounds N] [IMAGE]

IMAGE is a store reference (`name` or `name:version`, default ubuntu-22.04-base) in WORKDIR's
store. Each round boots the recipe's clones (same count, firmwares, memory and vCPUs as the test)
until every one is ready (SSH login with the test key and cloud-init finished), destroys them,
then runs the whole boot test (`run_suites`: boot again + every suite). Prints a table and writes
benchmarks/results/boot_test-<recipe>.json. The numbers in README.md come from here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imagefactory import distros  # noqa: E402
from imagefactory.recipes.model import Recipe  # noqa: E402
from imagefactory.store.local import LocalStore  # noqa: E402
from imagefactory.testing import libvirt as lv  # noqa: E402
from imagefactory.testing.harness import clone_firmwares, run_suites  # noqa: E402


def boot_to_ready(image: Path, recipe: Recipe, scratch: Path) -> float:
    t = recipe.tests
    start = time.monotonic()
    with lv.boot(image, clones=t.clones, user=distros.get(recipe.os.family).default_user,
                 accelerator=lv.resolve_accelerator(recipe.effective_accelerator()),
                 memory_mib=t.memory // 1024**2, cpus=t.cpus, boot_timeout=t.boot_timeout,
                 scratch=scratch, console_dir=scratch, firmwares=clone_firmwares(recipe.disk),
                 tcg_cpus=t.tcg_cpus):
        return time.monotonic() - start


def stored_image(workdir: Path, ref: str) -> tuple[Path, Recipe]:
    """A stored image and the recipe it was built from (its manifest's merged recipe)."""
    image = LocalStore(workdir / "store").resolve(ref)
    manifest = json.loads((image.parent / "manifest.json").read_text())
    return image, Recipe.model_validate(manifest["recipe"]["merged"])


def write_result(name: str, data: dict[str, Any]) -> None:
    out = REPO / "benchmarks/results" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("image", nargs="?", default="ubuntu-22.04-base")
    ap.add_argument("--workdir", default="/var/tmp/ifw")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    workdir = Path(args.workdir)
    image, recipe = stored_image(workdir, args.image)
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        scratch = Path(tempfile.mkdtemp(prefix="bench-boot-", dir=workdir / "tmp"))
        scratch.chmod(0o755)  # libvirt's qemu user reaches the overlays
        try:
            boot = boot_to_ready(image, recipe, scratch)
            start = time.monotonic()
            res = run_suites(image, recipe, scratch / "junit.xml", scratch, scratch,
                             stig_results=scratch / "stig-results.json")
            whole = time.monotonic() - start
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        rounds.append({"boot_to_ready_s": round(boot, 1), "boot_test_s": round(whole, 1),
                       "boot_test_boot_s": round(res.boot_seconds, 1), "suites_s": round(res.test_seconds, 1),
                       "tests": res.passed + res.failed + res.errors + res.skipped, "passed": res.passed,
                       "ok": res.ok, "load_avg_after": round(os.getloadavg()[0], 1)})
        print(f"round {i + 1}: {rounds[-1]}", file=sys.stderr)
    med = {k: statistics.median(r[k] for r in rounds) for k in ("boot_to_ready_s", "boot_test_s", "suites_s",
                                                                 "boot_test_boot_s")}
    data = {
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "accelerator": lv.resolve_accelerator(recipe.effective_accelerator())},
        "image": str(image.relative_to(workdir)) if image.is_relative_to(workdir) else str(image),
        "recipe": recipe.name, "clones": recipe.tests.clones,
        "firmwares": list(clone_firmwares(recipe.disk)), "suites": [*recipe.tests.suites,
                                                                   *(["stig"] if recipe.stig else [])],
        "rounds": rounds,
        "boot_test_over_boot_to_ready": round(med["boot_test_s"] / med["boot_to_ready_s"], 2),
        "suites_over_boot": round(med["suites_s"] / med["boot_test_boot_s"], 2),
    }
    write_result(f"boot_test-{recipe.name}.json", data)
    return 0 if all(r["ok"] for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
