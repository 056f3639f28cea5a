"""The Packer builder for real: ubuntu-22.04-packer from the stored ubuntu-22.04-base image (a
local stand-in for Canonical's cloud image, with a hybrid GPT disk) under packer 1.6.6 / qemu TCG,
its package step through the allow-list proxy to the Ubuntu archive, the shared offline steps on
the opened disk, and the boot test (one clone here, UEFI with Secure Boot; the BIOS boot code
compared with the base's). The base is the session's ubuntu-22.04-base (test_ubuntu_base reads
the same build). debian-12-packer is the same builder code (template, seed, proxy, the opened
hybrid disk, the offline steps); it and the other Packer recipes are rendered and checked with
`packer validate` in the integration tier."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagefactory.build import build
from imagefactory.recipes import RecipeBook
from imagefactory.store.local import LocalStore
from tests.conftest import RECIPES

# Runs in one pytest session with test_ubuntu_base (ci/test.sh): its ubuntu-22.04-base build is
# this test's base.
pytestmark = [pytest.mark.integration, pytest.mark.vm]


BASE = "ubuntu-22.04-base"
RECIPE = "ubuntu-22.04-packer"


@pytest.fixture(scope="session")
def base(build_once: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    return build_once(BASE)


@pytest.fixture(scope="session")
def packer_built(base: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """ubuntu-22.04-packer from a copy of the recipes whose boot test boots one clone: a hybrid
    disk's single clone is the UEFI one with Secure Boot enforced; the BIOS path (boot.img in the
    MBR, core.img in the BIOS boot partition) is compared byte for byte with the base's, which
    booted on SeaBIOS. One TCG boot fewer in CI."""
    recipes = workdir / "packer-recipes"
    shutil.copytree(RECIPES, recipes)
    recipe = recipes / f"{RECIPE}.yaml"
    recipe.write_text(recipe.read_text() + "tests: {clones: 1}\n")
    return build(RecipeBook(recipes).load(RECIPE), workdir, store=LocalStore(workdir / "store"))


def _disk_head(image: Path, out: Path, mib: int) -> bytes:
    subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=1M", f"count={mib}", f"if={image}",
                    f"of={out}"], check=True, capture_output=True)
    try:
        return out.read_bytes()
    finally:
        out.unlink()


def test_packer_image_is_built_from_the_base_and_boot_tested(packer_built: dict[str, Any],
                                                             base: dict[str, Any]) -> None:
    m = json.loads((Path(packer_built["path"]) / "manifest.json").read_text())
    cached = m["source"].pop("package_cache")
    assert m["source"] == {"type": "local-image", "image": BASE, "version": base["version"],
                           "sha256": base["image"]["sha256"]}
    # a cold build: apt's packages came through the proxy, which read the real archive's indexes
    # (by-hash, xz) and kept what they named for the next build
    assert cached["reused_files"] == 0 and cached["downloaded_bytes"] > 0 and cached["kept_files"] > 0, cached
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
    log = (Path(packer_built["path"]) / "build.log").read_text()
    # apt, via the proxy, from the Ubuntu archive
    apt = r"Get:\d+ http://(archive|security)\.ubuntu\.com/ubuntu jammy(-updates|-security)? InRelease"
    assert re.search(apt, log), log[-3000:]
    # the hybrid disk came through: the result boots with Secure Boot enforced (shim, GRUB and the
    # kernel the build VM may have upgraded, all signed), and its BIOS boot code is the base's
    junit = (Path(packer_built["path"]) / "junit.xml").read_text()
    assert junit.count('name="test_booted_on_the_declared_firmware[') == 1 and "<failure" not in junit
    assert " (uefi-secure, " in log and "secureboot: Secure boot enabled" in log and " (bios, " not in log
    parts = {p["role"]: p["offset"] for p in base["disk"]["partitions"]}
    end = parts["esp"] // 1024**2
    scratch = Path(packer_built["path"]).parent
    ours = _disk_head(Path(packer_built["path"]) / "image.qcow2", scratch / "packer-head.raw", end)
    theirs = _disk_head(Path(base["path"]) / "image.qcow2", scratch / "base-head.raw", end)
    assert ours[:440] == theirs[:440] and ours[:440].strip(b"\0")  # GRUB's boot.img in the MBR
    bios = slice(parts["bios-boot"], parts["esp"])
    assert ours[bios] == theirs[bios] and ours[bios].strip(b"\0")  # core.img, as the base booted it
    assert 50 * 1024**2 < m["image"]["size"] < 800 * 1024**2


def test_packer_build_leaves_nothing_behind(packer_built: dict[str, Any], workdir: Path) -> None:
    loops = json.loads(subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True,
                                      check=True).stdout or '{"loopdevices": []}')["loopdevices"]
    assert [d for d in loops if str(workdir) in str(d.get("back-file"))] == []
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    # this test's packer only (its template dir is under the session's workdir): anything else
    # on the host may run its own
    assert not [line for line in ps.splitlines() if "packer build" in line and str(workdir) in line]
    assert not [line for line in ps.splitlines() if "qemu-system" in line and str(workdir) in line]
    assert list((workdir / "tmp").iterdir()) == []
    assert not list((workdir / f"builds/{RECIPE}").glob("*.partial"))


def test_ctrl_c_during_the_packer_build_leaves_nothing(base: dict[str, Any], workdir: Path) -> None:
    """Ctrl-C while packer's qemu runs: exit 130, no qemu, no loop device, no scratch or output."""
    # Its own TMPDIR: packer's temp dirs (ifpk-*) and every other temp file of this build land
    # there, apart from what the tests running beside it create in /tmp. Short: packer's plugin
    # sockets live in it (unix socket paths end at 107 bytes).
    tmp = Path(tempfile.mkdtemp(prefix="ifct-", dir="/tmp"))
    p = subprocess.Popen(
        [sys.executable, "-m", "imagefactory.cli", "--workdir", str(workdir), "--recipes", str(RECIPES),
         "build", RECIPE, "--skip-tests", "--no-store"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "TMPDIR": str(tmp)})
    deadline = time.monotonic() + 300
    while not _qemu_under(workdir):
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(1)
    time.sleep(5)  # let it boot a little: the signal lands mid-build
    os.killpg(p.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    _, err = p.communicate(timeout=180)
    assert p.returncode == 130, err[-3000:]
    assert _qemu_under(workdir) == []
    builds = workdir / f"builds/{RECIPE}"
    assert not list(builds.glob("*.partial"))
    before = {d.name for d in builds.iterdir() if d.is_dir()}
    assert all(not d.endswith(".partial") for d in before)
    assert list((workdir / "tmp").iterdir()) == []
    loops = json.loads(subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True,
                                      check=True).stdout or '{"loopdevices": []}')["loopdevices"]
    assert [d for d in loops if str(workdir) in str(d.get("back-file"))] == []
    assert list(tmp.iterdir()) == []
    tmp.rmdir()


def _qemu_under(workdir: Path) -> list[str]:
    # -ww: without it ps cuts lines at 80 columns when not on a terminal, and the disk path with
    # the workdir in it is far beyond that
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines()
            if line.startswith("/usr/bin/qemu-system") and str(workdir) in line]
