"""Benchmark: a cold build (empty workdir) against a warm rebuild of the same recipe in the same
workdir (the package cache of `imagefactory.debcache` filled by the cold one), both without the
boot test. Run as root on a prepared host:

    .venv/bin/python benchmarks/warm_build.py [--recipe NAME] [--workdir DIR]

Prints a table and writes benchmarks/results/warm_build-<recipe>.json. The numbers in README.md
come from here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imagefactory.build import build  # noqa: E402
from imagefactory.config import FactoryConfig  # noqa: E402
from imagefactory.recipes import RecipeBook  # noqa: E402


def one(loaded: Any, workdir: Path, *, root_cache: bool) -> dict[str, Any]:
    start = time.monotonic()
    m = build(loaded, workdir, skip_tests=True, config=FactoryConfig(root_cache=root_cache))
    total = time.monotonic() - start
    steps = {s["name"]: s["seconds"] for s in m["steps"]}
    return {"build_s": round(total, 1), "bootstrap_s": steps["bootstrap"],
            "package_cache": m["source"]["package_cache"], "root_cache": m["source"]["root_cache"],
            "packages": len(m["packages"]), "image_sha256": m["image"]["sha256"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="ubuntu-22.04-base")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="if-warm-", dir="/var/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    loaded = RecipeBook(REPO / "recipes").load(args.recipe)
    try:
        cold = one(loaded, workdir, root_cache=True)
        print("cold done", file=sys.stderr)
        warm = one(loaded, workdir, root_cache=False)
        print("warm (package cache) done", file=sys.stderr)
        incremental = one(loaded, workdir, root_cache=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    data = {
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "recipe": args.recipe,
        "cold": cold,
        "warm": warm,
        "incremental": incremental,
        "bootstrap_ratio": round(warm["bootstrap_s"] / cold["bootstrap_s"], 2),
        "build_ratio": round(warm["build_s"] / cold["build_s"], 2),
        "incremental_bootstrap_ratio": round(incremental["bootstrap_s"] / cold["bootstrap_s"], 2),
        "incremental_build_ratio": round(incremental["build_s"] / cold["build_s"], 2),
    }
    out = REPO / "benchmarks/results" / f"warm_build-{args.recipe}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"{'':12} {'build s':>8} {'bootstrap s':>12} {'pkgs reused':>12} {'MiB downloaded':>15} "
          f"{'root':>6}")
    for name, r in (("cold", cold), ("warm", warm), ("incremental", incremental)):
        pc = r["package_cache"]
        print(f"{name:12} {r['build_s']:8.1f} {r['bootstrap_s']:12.1f} {pc['reused_files']:12d} "
              f"{pc['downloaded_bytes'] / 2**20:15.1f} {'hit' if r['root_cache']['hit'] else '-':>6}")
    print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
