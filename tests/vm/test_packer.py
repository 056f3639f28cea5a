"""The Packer builder for real: debian-12-packer from the stored debian-12-base image (a local
cloud image) under packer 1.6.6 / qemu TCG, the shared steps, and the same boot test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from imagefactory.build import build
from imagefactory.recipes import RecipeBook
from imagefactory.store.local import LocalStore
from tests.conftest import RECIPES

pytestmark = [pytest.mark.integration, pytest.mark.vm]


@pytest.fixture(scope="session")
def packer_built(built: dict[str, Any], workdir: Path) -> dict[str, Any]:
    loaded = RecipeBook(RECIPES).load("debian-12-packer")
    return build(loaded, workdir, store=LocalStore(workdir / "store"))


def test_packer_image_is_built_from_the_base_and_boot_tested(packer_built: dict[str, Any],
                                                             built: dict[str, Any]) -> None:
    m = json.loads((Path(packer_built["path"]) / "manifest.json").read_text())
    assert m["source"] == {"type": "local-image", "image": "debian-12-base", "version": built["version"],
                           "sha256": built["image"]["sha256"]}
    steps = [s["name"] for s in m["steps"]]
    assert steps[:3] == ["fetch-source", "packer-template", "packer-build"]
    order = [steps.index(s) for s in ("open-disk", "stig-apply", "seal", "close-disk")]
    assert order == sorted(order), steps
    assert steps[-1] == "boot-test"
    assert m["packer"]["version"] == "1.6.6"
    t = m["tests"]
    assert t["ok"] is True and t["failed"] == 0 and t["suites"] == ["hygiene", "recipe", "stig"], t
    assert m["stig"]["report"]["gate"]["passed"] is True
    names = {p["name"] for p in m["packages"]}
    assert "jq" in names  # installed by the provisioner (the packages step script, through the proxy)
    assert 50 * 1024**2 < m["image"]["size"] < 800 * 1024**2


def test_packer_build_leaves_nothing_behind(packer_built: dict[str, Any], workdir: Path) -> None:
    loops = json.loads(subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True,
                                      check=True).stdout or '{"loopdevices": []}')["loopdevices"]
    assert [d for d in loops if str(workdir) in str(d.get("back-file"))] == []
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "packer build" not in ps
    assert not [line for line in ps.splitlines() if "qemu-system" in line and str(workdir) in line]
    assert list((workdir / "tmp").iterdir()) == []
    assert not list((workdir / "builds/debian-12-packer").glob("*.partial"))


def test_ctrl_c_during_the_packer_build_leaves_nothing(built: dict[str, Any], workdir: Path) -> None:
    """Ctrl-C while packer's qemu runs: exit 130, no qemu, no loop device, no scratch or output."""
    p = subprocess.Popen(
        [sys.executable, "-m", "imagefactory.cli", "--workdir", str(workdir), "--recipes", str(RECIPES),
         "build", "debian-12-packer", "--skip-tests", "--no-store"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not _qemu_under(workdir):
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(1)
    time.sleep(5)  # let it boot a little: the signal lands mid-build
    os.killpg(p.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    _, err = p.communicate(timeout=180)
    assert p.returncode == 130, err[-3000:]
    assert _qemu_under(workdir) == []
    builds = workdir / "builds/debian-12-packer"
    assert not list(builds.glob("*.partial"))
    before = {d.name for d in builds.iterdir() if d.is_dir()}
    assert all(not d.endswith(".partial") for d in before)
    assert list((workdir / "tmp").iterdir()) == []
    loops = json.loads(subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True,
                                      check=True).stdout or '{"loopdevices": []}')["loopdevices"]
    assert [d for d in loops if str(workdir) in str(d.get("back-file"))] == []
    assert not [x for x in Path("/tmp").glob("ifpk-*") if x.stat().st_mtime > time.time() - 600]


def _qemu_under(workdir: Path) -> list[str]:
    # -ww: without it ps cuts lines at 80 columns when not on a terminal, and the disk path with
    # the workdir in it is far beyond that
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines()
            if line.startswith("/usr/bin/qemu-system") and str(workdir) in line]
