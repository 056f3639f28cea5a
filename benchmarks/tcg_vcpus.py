"""Benchmark: clones booted at once under TCG with the recipe's vCPUs each (the anchor: what the
boot test did before `testing.libvirt.guest_cpus`) against the host's cores shared between them
(one vCPU each for two clones on two cores). Run as root, with the image built and stored:

    .venv/bin/python benchmarks/tcg_vcpus.py [--workdir DIR] [--rounds N] [IMAGE]

IMAGE is a store reference in WORKDIR's store (default ubuntu-22.04-base). Each round boots the
recipe's clones (same count, firmwares and memory as the boot test) until every one is ready (SSH
login with the test key and cloud-init finished), once each way, alternating which goes first.
Only boot-to-ready is timed: the suites do not depend on the vCPU count. Prints a table and writes
benchmarks/results/tcg_vcpus-<recipe>.json; README.md's numbers come from here.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from boot_test import boot_to_ready, stored_image, write_result  # noqa: E402

from imagefactory.recipes.model import Recipe  # noqa: E402
from imagefactory.testing import libvirt as lv  # noqa: E402
from imagefactory.testing.harness import clone_firmwares  # noqa: E402

POLICIES = {"as_asked": "asked", "shared": "shared"}  # benchmark name -> recipe tests.tcg_cpus


def boot_with(policy: str, image: Path, recipe: Recipe, scratch: Path) -> float:
    """boot_test's boot-to-ready with the recipe's `tests.tcg_cpus` set to `policy`."""
    tests = recipe.tests.model_copy(update={"tcg_cpus": policy})
    return boot_to_ready(image, recipe.model_copy(update={"tests": tests}), scratch)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("image", nargs="?", default="ubuntu-22.04-base")
    ap.add_argument("--workdir", default="/var/tmp/ifw")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    workdir = Path(args.workdir)
    image, recipe = stored_image(workdir, args.image)
    accel = lv.resolve_accelerator(recipe.effective_accelerator())
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        order = list(POLICIES) if i % 2 == 0 else list(reversed(POLICIES))
        row: dict[str, Any] = {"order": order}
        for name in order:
            scratch = Path(tempfile.mkdtemp(prefix="bench-vcpus-", dir=workdir / "tmp"))
            scratch.chmod(0o755)  # libvirt's qemu user reaches the overlays
            try:
                row[f"{name}_vcpus"] = lv.guest_cpus(recipe.tests.cpus, accel, recipe.tests.clones,
                                                     POLICIES[name])
                row[f"{name}_ready_s"] = round(boot_with(POLICIES[name], image, recipe, scratch), 1)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        row["load_avg_after"] = round(os.getloadavg()[0], 1)
        rounds.append(row)
        print(f"round {i + 1}: {row}", file=sys.stderr)
    med = {n: statistics.median(r[f"{n}_ready_s"] for r in rounds) for n in POLICIES}
    data = {
        "host": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                 "accelerator": accel},
        "image": str(image.relative_to(workdir)) if image.is_relative_to(workdir) else str(image),
        "recipe": recipe.name, "clones": recipe.tests.clones, "recipe_cpus": recipe.tests.cpus,
        "firmwares": list(clone_firmwares(recipe.disk)),
        "rounds": rounds,
        "median_ready_s": med,
        "shared_over_as_asked": round(med["shared"] / med["as_asked"], 2),
    }
    write_result(f"tcg_vcpus-{recipe.name}.json", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
