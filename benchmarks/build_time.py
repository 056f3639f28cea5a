"""Benchmark: imagefactory's rootfs build vs a bare mmdebstrap of the same package set (same
suite, pockets and keyring), and the boot test vs a plain boot-to-SSH of the same image on each
firmware the recipe declares. Run as root on a prepared host:

    .venv/bin/python benchmarks/build_time.py [--recipe NAME] [--rounds N] [--workdir DIR]

Prints a table and writes benchmarks/results/build_time.json (debian-12-base) or
build_time-<recipe>.json. The numbers in README.md come from here.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imagefactory import archive, distros  # noqa: E402
from imagefactory.build import build  # noqa: E402
from imagefactory.recipes import RecipeBook  # noqa: E402
from imagefactory.recipes.model import MmdebstrapSource  # noqa: E402
from imagefactory.steps import stig  # noqa: E402
from imagefactory.testing import libvirt as lv  # noqa: E402
from imagefactory.testing.harness import clone_firmwares, run_suites  # noqa: E402


def bare_mmdebstrap(workdir: Path, recipe_name: str) -> float:
    r = RecipeBook(REPO / "recipes").load(recipe_name).recipe
    src = r.source
    assert isinstance(src, MmdebstrapSource)
    # The same package set the build installs, the STIG controls' packages (auditd, aide, ...) included.
    distro = distros.get(r.os.family)
    pkgs = sorted({*distro.packages(r), *r.packages.install, *stig.packages(r)[1]})
    target = workdir / "bare-root"
    keyring = distro.keyring(r)
    components = " ".join(src.components)
    pockets = [f"deb {base} {suite} {components}" for base, suite in archive.pocket_suites(r).values()]
    argv = ["mmdebstrap", "--mode=root", f"--variant={src.variant}",
            f"--components={','.join(src.components)}", f"--include={','.join(pkgs)}",
            *([f"--keyring={keyring}"] if keyring else []), src.suite, str(target), src.mirror, *pockets]
    start = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    took = time.monotonic() - start
    shutil.rmtree(target)
    return took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--recipe", default="debian-12-base")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="if-bench-", dir="/var/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    loaded = RecipeBook(REPO / "recipes").load(args.recipe)
    bare, ours, steps = [], [], []
    manifest: dict[str, Any] = {}
    try:
        for i in range(args.rounds):
            # Alternate the order so mirror-side caching favours neither.
            order = ("bare", "ours") if i % 2 == 0 else ("ours", "bare")
            for which in order:
                if which == "bare":
                    bare.append(bare_mmdebstrap(workdir, args.recipe))
                else:
                    start = time.monotonic()
                    manifest = build(loaded, workdir, skip_tests=True)
                    ours.append(time.monotonic() - start)
                    steps.append(manifest["steps"])
                print(f"round {i + 1}: {which} done", file=sys.stderr)
        image = Path(manifest["path"]) / manifest["image"]["file"]
        # Boot-to-ready (SSH login + cloud-init done) of one clone per firmware, alone, vs the full
        # boot test (the clones at once + the suites).
        boot_to_ssh: dict[str, float] = {}
        for firmware in clone_firmwares(loaded.recipe.disk):
            start = time.monotonic()
            with lv.boot(image, clones=1, user=distros.get(loaded.recipe.os.family).default_user,
                         accelerator=loaded.recipe.effective_accelerator(),
                         scratch=workdir, memory_mib=loaded.recipe.tests.memory // 1024**2,
                         cpus=loaded.recipe.tests.cpus, firmwares=(firmware,)):
                boot_to_ssh[firmware] = round(time.monotonic() - start, 1)
        start = time.monotonic()
        results = run_suites(image, loaded.recipe, workdir / "junit.xml", workdir, workdir)
        boot_test = time.monotonic() - start
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    data = {
        "host": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                 "accelerator": lv.resolve_accelerator(loaded.recipe.effective_accelerator())},
        "recipe": args.recipe,
        "rounds": args.rounds,
        "bare_mmdebstrap_s": [round(x, 1) for x in bare],
        "imagefactory_build_s": [round(x, 1) for x in ours],
        "ratio_median": round(statistics.median(ours) / statistics.median(bare), 2),
        "build_steps_last": steps[-1],
        "boot_to_ready_one_clone_s": boot_to_ssh,
        "boot_test_s": round(boot_test, 1),
        "boot_test_clones": loaded.recipe.tests.clones,
        "boot_test_passed": results.passed,
        "boot_test_ok": results.ok,
    }
    name = "build_time.json" if args.recipe == "debian-12-base" else f"build_time-{args.recipe}.json"
    out = REPO / "benchmarks/results" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
