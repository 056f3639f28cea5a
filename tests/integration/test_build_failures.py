"""Failure paths of a real build, with `mmdebstrap` faked by a script on PATH: whatever goes
wrong (a failing step with mounts active, an unreachable mirror, Ctrl-C, a concurrent build),
the user gets a clear error and nothing is left behind."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagefactory.chroot import mounts_under
from imagefactory.fsutil import exclusive_lock
from tests.aptsign import publish
from tests.conftest import require_root, write

pytestmark = pytest.mark.integration

FAKE_MMDEBSTRAP = """#!/bin/sh
# Fake mmdebstrap: the target is the second-to-last argument. Makes a tiny root, then
# behaves as $IMAGEFACTORY_FAKE_MODE says.
if [ "$1" = --version ]; then echo "mmdebstrap 0.0-fake"; exit 0; fi
eval target=\\${$(($# - 1))}
mkdir -p "$target/etc" "$target/var/lib/dpkg" "$target/usr/sbin" "$target/tmp"
echo "root:x:0:0::/root:/bin/sh" > "$target/etc/passwd"
echo "root:x:0:" > "$target/etc/group"
echo "started" > "$IMAGEFACTORY_FAKE_STATE"
case "$IMAGEFACTORY_FAKE_MODE" in
  fail) echo "E: fake mmdebstrap failed" >&2; exit 1 ;;
  hang) sleep 60 ;;
esac
exit 0
"""


@pytest.fixture
def mirror(tmp_path: Path, apt_keys: dict[str, Path]) -> Iterator[str]:
    """A loopback HTTP 'mirror' that serves just dists/bookworm/InRelease, signed by a test key."""
    root = tmp_path / "mirror"
    publish(root / "debian", "bookworm", "bookworm", apt_keys["archive-home"])

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(root), **kw)  # type: ignore[arg-type]

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/debian"
    server.shutdown()


@pytest.fixture
def env(tmp_path: Path, fake_bin: Path) -> dict[str, str]:
    require_root()
    mm = fake_bin / "mmdebstrap"
    mm.write_text(FAKE_MMDEBSTRAP)
    mm.chmod(0o755)
    return {**os.environ, "IMAGEFACTORY_FAKE_STATE": str(tmp_path / "state")}


def recipe(recipe_dir: Path, mirror: str, extra: str = "", keyring: Path = Path("/nonexistent")) -> None:
    write(recipe_dir, "r", f"""\
os: {{family: debian, release: "12"}}
source: {{type: mmdebstrap, suite: bookworm, mirror: "{mirror.removesuffix('/debian')}/debian",
          keyring: {keyring}}}
{extra}""")


def build(recipe_dir: Path, workdir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "imagefactory.cli", "--recipes", str(recipe_dir),
         "--workdir", str(workdir), "build", "r"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )


def assert_nothing_left(workdir: Path) -> None:
    assert mounts_under(workdir) == []
    builds = workdir / "builds" / "r"
    leftovers = [p.name for p in builds.iterdir()] if builds.exists() else []
    assert all(name.endswith(".failed.log") for name in leftovers), leftovers
    assert leftovers, "the failed build's log should be kept"
    assert list((workdir / "tmp").iterdir()) == []
    assert not (workdir / "store").exists()


def test_failing_step_with_mounts_active(recipe_dir: Path, tmp_path: Path, mirror: str,
                                         env: dict[str, str], apt_keys: dict[str, Path]) -> None:
    # the packages step runs bash/apt-get in the chroot; the fake root has none, so it fails
    # while proc, sys and dev are mounted in it.
    recipe(recipe_dir, mirror, "packages: {remove: [nano]}\n", apt_keys["archive"])
    p = build(recipe_dir, tmp_path / "w", env)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    assert "error: command failed with exit code" in err
    assert "Traceback" not in err
    log = next((tmp_path / "w/builds/r").glob("*.failed.log")).read_text()
    assert "==> enter-chroot" in log and "step packages failed" in log
    assert_nothing_left(tmp_path / "w")


def test_failing_bootstrap(recipe_dir: Path, tmp_path: Path, mirror: str, env: dict[str, str],
                           apt_keys: dict[str, Path]) -> None:
    recipe(recipe_dir, mirror, keyring=apt_keys["archive"])
    p = build(recipe_dir, tmp_path / "w", {**env, "IMAGEFACTORY_FAKE_MODE": "fail"})
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert "E: fake mmdebstrap failed" in err
    assert_nothing_left(tmp_path / "w")


def test_unreachable_mirror(recipe_dir: Path, tmp_path: Path, env: dict[str, str]) -> None:
    recipe(recipe_dir, "http://127.0.0.1:9/debian")
    p = build(recipe_dir, tmp_path / "w", env)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert "error: mirror unreachable: http://127.0.0.1:9/debian/dists/bookworm/InRelease" in err
    assert "hint: check source.mirror" in err
    assert not (tmp_path / "state").exists()  # failed before bootstrapping
    assert_nothing_left(tmp_path / "w")


def test_ctrl_c_cleans_up(recipe_dir: Path, tmp_path: Path, mirror: str, env: dict[str, str],
                          apt_keys: dict[str, Path]) -> None:
    recipe(recipe_dir, mirror, keyring=apt_keys["archive"])
    p = build(recipe_dir, tmp_path / "w", {**env, "IMAGEFACTORY_FAKE_MODE": "hang"})
    deadline = time.monotonic() + 60
    while not (tmp_path / "state").exists():
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err
    assert_nothing_left(tmp_path / "w")


def test_concurrent_build_of_same_recipe_is_refused(recipe_dir: Path, tmp_path: Path, mirror: str,
                                                     env: dict[str, str]) -> None:
    recipe(recipe_dir, mirror)
    workdir = tmp_path / "w"
    with exclusive_lock(workdir / "locks" / "r.lock", "test holder"):
        p = build(recipe_dir, workdir, env)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert "a build of r is already running (pid" in err
    assert not (workdir / "builds").exists()
