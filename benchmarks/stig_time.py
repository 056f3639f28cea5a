"""Benchmark: what STIG hardening adds to a build and to its boot test.

Builds `debian-12-base` (stig: ubuntu2204, family-generic controls) and the same recipe with
`stig: null`, alternating per round, and compares the build and its steps (bootstrap with the
extra packages, stig-packages, stig-apply, stig-check); then boot-tests both images and compares
the test time, the stig suite's own time (checks on the booted VM) and the report/gate time.
Run as root on a prepared host:

    .venv/bin/python benchmarks/stig_time.py [--rounds N] [--no-boot]

Writes benchmarks/results/stig_time.json; the README's numbers come from here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imagefactory.build import build  # noqa: E402
from imagefactory.recipes import RecipeBook  # noqa: E402
from imagefactory.steps import stig  # noqa: E402
from imagefactory.testing import libvirt as lv  # noqa: E402
from imagefactory.testing.harness import run_suites  # noqa: E402

PLAIN = """extends: debian-12-base
description: debian-12-base without STIG hardening (benchmark baseline)
stig: null
"""
STIG_STEPS = ("stig-packages", "stig-apply", "stig-check")


def step_times(manifest: dict[str, Any]) -> dict[str, float]:
    return {s["name"]: s["seconds"] for s in manifest["steps"]}


def suite_seconds(junit: Path, module: str) -> float:
    root = ET.parse(junit).getroot()
    return round(sum(float(c.get("time", 0)) for c in root.iter("testcase")
                     if (c.get("classname") or "").endswith(module)), 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-boot", action="store_true", help="only the build side")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="if-stig-bench-", dir="/var/tmp"))
    workdir.chmod(0o755)
    recipes = workdir / "recipes"
    shutil.copytree(REPO / "recipes", recipes)
    (recipes / "debian-12-plain.yaml").write_text(PLAIN)
    book = RecipeBook(recipes)
    hardened, plain = book.load("debian-12-base"), book.load("debian-12-plain")
    builds: dict[str, list[dict[str, Any]]] = {"hardened": [], "plain": []}
    data: dict[str, Any] = {"host": {"cpus": os.cpu_count(), "accelerator":
                                     lv.resolve_accelerator(hardened.recipe.effective_accelerator())},
                            "rounds": args.rounds}
    try:
        for i in range(args.rounds):
            order = ("hardened", "plain") if i % 2 == 0 else ("plain", "hardened")
            for which in order:
                loaded = hardened if which == "hardened" else plain
                start = time.monotonic()
                m = build(loaded, workdir, skip_tests=True)
                builds[which].append({"total": time.monotonic() - start, "steps": step_times(m),
                                      "image": Path(m["path"]) / m["image"]["file"],
                                      "size": m["image"]["size"], "packages": len(m["packages"])})
                print(f"round {i + 1}: {which} built", file=sys.stderr)
        med = {k: statistics.median(b["total"] for b in v) for k, v in builds.items()}
        last = {k: v[-1] for k, v in builds.items()}
        data["build"] = {
            "hardened_s": [round(b["total"], 1) for b in builds["hardened"]],
            "plain_s": [round(b["total"], 1) for b in builds["plain"]],
            "added_median_s": round(med["hardened"] - med["plain"], 1),
            "stig_steps_s": {s: statistics.median(b["steps"][s] for b in builds["hardened"])
                             for s in STIG_STEPS},
            "bootstrap_s": {k: statistics.median(b["steps"]["bootstrap"] for b in v)
                            for k, v in builds.items()},
            "image_bytes": {k: v["size"] for k, v in last.items()},
            "packages": {k: v["packages"] for k, v in last.items()},
            "stig_packages": stig.packages(hardened.recipe)[1],
        }
        if not args.no_boot:
            boot: dict[str, Any] = {}
            for which, loaded in (("hardened", hardened), ("plain", plain)):
                out = workdir / f"test-{which}"
                out.mkdir()
                start = time.monotonic()
                res = run_suites(last[which]["image"], loaded.recipe, out / "junit.xml", workdir, workdir,
                                 stig_results=out / stig.BOOTED_RESULTS)
                boot[which] = {"total_s": round(time.monotonic() - start, 1), "ok": res.ok,
                               "passed": res.passed, "boot_s": round(res.boot_seconds, 1),
                               "tests_s": round(res.test_seconds, 1)}
                if which == "hardened":
                    boot[which]["stig_suite_s"] = suite_seconds(out / "junit.xml", "test_stig")
                    start = time.monotonic()
                    manifest = {"image": {"sha256": ""}, "build_id": "bench"}
                    _report, gate = stig.report(loaded.recipe, recipes, manifest, stig.load_scans(out), out)
                    boot[which]["report_and_gate_s"] = round(time.monotonic() - start, 2)
                    boot[which]["gate_passed"] = gate.passed
            data["boot_test"] = boot
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out_file = REPO / "benchmarks/results/stig_time.json"
    out_file.parent.mkdir(exist_ok=True)
    out_file.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(json.dumps(data, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
