"""The chroot's mounts never show up on the build host's own mount points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory.chroot import Chroot, mounts_under
from imagefactory.errors import BuildError
from tests.conftest import require_root

pytestmark = pytest.mark.integration

# Run in a mount namespace whose mounts are shared, as on any systemd host: a bind of a shared
# /dev is a peer of the host's, so what the chroot mounts below it would propagate back.
PROBE = """
import json, sys
from pathlib import Path
from imagefactory.chroot import Chroot

def devpts_on_host():
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == "/dev/pts")

root = Path(sys.argv[1])
before = devpts_on_host()
with Chroot(root):
    during = devpts_on_host()
    inside = sum(1 for line in open("/proc/self/mountinfo") if line.split()[4] == str(root / "dev/pts"))
print(json.dumps({"before": before, "during": during, "inside": inside, "after": devpts_on_host()}))
"""


def test_devpts_of_the_chroot_does_not_reach_the_hosts_dev_pts(tmp_path: Path) -> None:
    require_root()
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    r = subprocess.run(["unshare", "--mount", "--propagation", "shared", sys.executable, "-c", PROBE,
                        str(root)], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.splitlines()[-1])
    assert seen["inside"] == 1  # the chroot got its own devpts...
    assert seen["during"] == seen["before"] == seen["after"], seen  # ...and the host saw nothing of it


def test_a_linked_proc_in_the_image_is_refused(tmp_path: Path) -> None:
    require_root()
    root = tmp_path / "root"
    root.mkdir()
    (root / "proc").symlink_to("/")  # followed by mount(8), this would cover the host's /
    with pytest.raises(BuildError, match=r"/proc in the image root is a symbolic link"), Chroot(root):
        pass
    assert mounts_under(root) == []
