"""Build `rke2-node` as shipped (two clones, every suite) into WORKDIR's store, with the RKE2 and
Zarf releases replaced by the test suite's stand-ins (tests/standins) on a loopback mirror - the
real releases cannot be reached from these machines. Run as root on a prepared host, then
measure its boot test:

    .venv/bin/python benchmarks/build_rke2_standin.py --workdir /var/tmp/ifw
    .venv/bin/python benchmarks/boot_test.py --workdir /var/tmp/ifw rke2-node

What the stand-ins change for the boot test: the `rke2` and `zarf` binaries are small scripts, so
nothing of RKE2 runs in the clones (the node image does not start RKE2 without a seed anyway);
the files, units, configuration and STIG state the suites read are the product's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.standins.mirror import ReleaseMirror, upstream_bases  # noqa: E402
from tests.standins.release import make_rke2_release, make_zarf_release  # noqa: E402

RKE2_VERSION = "v1.31.4+rke2r1"
ZARF_VERSION = "v0.84.0"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/var/tmp/ifw")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    site = Path(tempfile.mkdtemp(prefix="rke2-standin-", dir="/var/tmp"))
    try:
        make_rke2_release(site / "mirror", RKE2_VERSION)
        make_zarf_release(site / "mirror", ZARF_VERSION)
        recipes = site / "recipes"
        shutil.copytree(REPO / "recipes", recipes)
        with ReleaseMirror(site / "mirror") as mirror:
            mirror.channels["stable"] = RKE2_VERSION
            config = site / "imagefactory.yaml"
            config.write_text(yaml.safe_dump({"upstream": upstream_bases(mirror.url)}))
            common = [sys.executable, "-m", "imagefactory.cli", "--recipes", str(recipes), "--config",
                      str(config), "--workdir", str(workdir)]
            for argv in (["lock", "update", "rke2-node"], ["build", "rke2-node", "--skip-tests"]):
                subprocess.run([*common, *argv], check=True, cwd=REPO)
    finally:
        shutil.rmtree(site, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
