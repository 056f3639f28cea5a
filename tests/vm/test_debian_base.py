"""The VM tier: build debian-12-base for real (mmdebstrap from the Debian mirror), boot two clones
under libvirt (TCG here), run the suites; then prove the suites can fail on a dirty image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import libvirt
import pytest

from imagefactory.build import build
from imagefactory.chroot import mounts_under
from imagefactory.fsutil import digests
from imagefactory.recipes import RecipeBook
from imagefactory.store.local import LocalStore
from tests.conftest import RECIPES

pytestmark = [pytest.mark.integration, pytest.mark.vm]


@pytest.fixture(scope="session")
def built(workdir: Path) -> dict[str, Any]:
    """debian-12-base, built, boot-tested and stored once for the whole session."""
    loaded = RecipeBook(RECIPES).load("debian-12-base")
    return build(loaded, workdir, store=LocalStore(workdir / "store"))


def test_build_is_tested_and_stored(built: dict[str, Any], workdir: Path) -> None:
    t = built["tests"]
    assert t["ok"] is True and t["failed"] == 0 and t["errors"] == 0
    assert t["passed"] >= 40, t  # 2 clones x (hygiene + recipe suites)
    assert t["suites"] == ["hygiene", "recipe"]
    out = Path(built["path"])
    assert sorted(p.name for p in out.iterdir()) == ["build.log", "image.qcow2", "junit.xml",
                                                    "manifest.json"]
    junit = (out / "junit.xml").read_text()
    assert "test_clones_have_distinct_identities" in junit and "<failure" not in junit
    stored = LocalStore(workdir / "store")
    assert built["stored"] == f"debian-12-base:{built['version']}"
    assert stored.resolve("debian-12-base").samefile(out / "image.qcow2")


def test_manifest(built: dict[str, Any]) -> None:
    out = Path(built["path"])
    m = json.loads((out / "manifest.json").read_text())
    sha256, sha512 = digests(out / "image.qcow2")
    # The boot test ran on overlays: the image is bit-for-bit what was checksummed before it.
    assert (m["image"]["sha256"], m["image"]["sha512"]) == (sha256, sha512)
    assert m["image"]["virtual_size"] == 4 * 1024**3
    assert 50 * 1024**2 < m["image"]["size"] < 600 * 1024**2  # compressed, free space not stored
    assert m["recipe"]["digest"] == RecipeBook(RECIPES).load("debian-12-base").digest
    names = {p["name"] for p in m["packages"]}
    assert {"openssh-server", "cloud-init", "qemu-guest-agent", "linux-image-cloud-amd64"} <= names
    assert m["kernel"].endswith("-cloud-amd64")
    assert m["source"]["suite"] == "bookworm" and len(m["source"]["release_sha256"]) == 64
    assert [s["name"] for s in m["steps"]][:2] == ["check-mirror", "bootstrap"]
    assert m["steps"][-1]["name"] == "boot-test"


def test_build_log_shows_commands_and_console(built: dict[str, Any]) -> None:
    log = (Path(built["path"]) / "build.log").read_text()
    assert "+ mmdebstrap --mode=root" in log
    assert "serial console of clone console-0" in log
    assert "Debian GNU/Linux 12" in log  # the guest's own console output


def test_nothing_left_behind(built: dict[str, Any], workdir: Path) -> None:
    conn = libvirt.open("qemu:///system")
    try:
        assert [d.name() for d in conn.listAllDomains() if d.name().startswith("imagefactory-")] == []
    finally:
        conn.close()
    assert mounts_under(workdir) == []
    assert list((workdir / "tmp").iterdir()) == []
    assert not list((workdir / "builds/debian-12-base").glob("*.partial"))


def test_dirty_image_fails_the_hygiene_suite(built: dict[str, Any], workdir: Path) -> None:
    """A test must be able to fail: bake a machine-id into a copy of the image and test it."""
    dirty = workdir / "dirty.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(Path(built["path"]) / "image.qcow2"),
                    str(dirty)], check=True)
    mid = workdir / "machine-id"
    mid.write_text("0123456789abcdef0123456789abcdef\n")
    cmds = workdir / "debugfs.cmds"
    # An old mtime, as a machine-id baked at build time would have (debugfs would stamp "now",
    # seconds before the guest boots: within the check's clock slack).
    cmds.write_text(f"rm /etc/machine-id\nwrite {mid} /etc/machine-id\nsif /etc/machine-id mode 0100444\n"
                    "sif /etc/machine-id mtime 20200101000000\n")
    subprocess.run(["debugfs", "-w", "-f", str(cmds), f"{dirty}?offset=1048576"], check=True,
                   capture_output=True)
    dirty.chmod(0o644)
    r = subprocess.run(
        [sys.executable, "-m", "imagefactory.cli", "--json", "--workdir", str(workdir),
         "--recipes", str(RECIPES), "test", str(dirty), "--recipe", "debian-12-base"],
        capture_output=True, text=True, timeout=1800, env={**os.environ},
    )
    assert r.returncode == 1, r.stderr[-3000:]
    result = json.loads(r.stdout)
    failures = "\n".join(result["failures"])
    assert "test_clones_have_distinct_identities" in failures
    assert "test_machine_id_generated_on_first_boot" in failures
    assert result["passed"] > 20  # everything else still holds
    dirty.unlink()
