"""rke2-node-debian end to end with the RKE2/Zarf stand-ins served from a loopback mirror:
lock update -> build (baked, sealed, boot-tested with the rke2 suite) -> a second boot as a
bootstrap server reaches Ready and runs `zarf init`; then an offline rebuild from a bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagefactory.config import load_config
from imagefactory.firstboot import NodeSeed, render_user_data
from imagefactory.recipes import RecipeBook
from imagefactory.stig.catalogue import load_catalogue
from imagefactory.stig.report import load_report
from imagefactory.testing import libvirt as lv
from tests.conftest import RECIPES
from tests.standins.mirror import ReleaseMirror, upstream_bases
from tests.standins.release import make_rke2_release, make_zarf_release

pytestmark = [pytest.mark.integration, pytest.mark.vm]

RKE2_VERSION = "v1.31.4+rke2r1"
ZARF_VERSION = "v0.84.0"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagefactory.cli", *args], capture_output=True,
                          text=True, timeout=3600)


@pytest.fixture(scope="module")
def site(workdir: Path) -> Iterator[dict[str, Any]]:
    """Stand-in releases on a loopback mirror, a copy of the recipes, a config pointing at it."""
    root = workdir / "rke2-site"
    make_rke2_release(root / "mirror", RKE2_VERSION)
    make_zarf_release(root / "mirror", ZARF_VERSION)
    recipes = root / "recipes"
    shutil.copytree(RECIPES, recipes)
    # An extra Zarf package to bake, served by the same mirror.
    pkg_dir = root / "mirror/packages"
    pkg_dir.mkdir(parents=True)
    (pkg_dir / "zarf-package-demo-amd64-1.0.0.tar.zst").write_bytes(b"stand-in zarf package\n")
    with ReleaseMirror(root / "mirror") as mirror:
        mirror.channels["stable"] = RKE2_VERSION
        recipe = recipes / "rke2-node-debian.yaml"
        pkg_url = f"{mirror.url}/packages/zarf-package-demo-amd64-1.0.0.tar.zst"
        recipe.write_text(recipe.read_text().replace(
            "  init_package: true\n", f"  init_package: true\n  packages: [{pkg_url}]\n"))
        config = root / "imagefactory.yaml"
        config.write_text(yaml.safe_dump({"upstream": upstream_bases(mirror.url)}))
        yield {"root": root, "recipes": recipes, "config": config, "mirror": mirror,
               "work": root / "work"}


@pytest.fixture(scope="module")
def rke2_build(site: dict[str, Any]) -> dict[str, Any]:
    common = ["--json", "--recipes", str(site["recipes"]), "--config", str(site["config"]),
              "--workdir", str(site["work"])]
    r = cli(*common, "lock", "update", "rke2-node-debian")
    assert r.returncode == 0, r.stderr
    lock = json.loads((site["recipes"] / "imagefactory.lock").read_text())
    assert lock["recipes"]["rke2-node-debian"]["rke2"]["version"] == RKE2_VERSION
    r = cli(*common, "build", "rke2-node-debian")
    assert r.returncode == 0, r.stderr[-5000:]
    summary: dict[str, Any] = json.loads(r.stdout)
    return summary


def test_built_and_boot_tested(rke2_build: dict[str, Any]) -> None:
    t = rke2_build["tests"]
    assert t["ok"] and t["suites"] == ["hygiene", "recipe", "rke2", "stig"]
    assert t["failed"] == 0 and t["passed"] >= 50
    steps = [s["name"] for s in rke2_build["steps"]]
    assert steps.index("install-rke2") < steps.index("configure-rke2") < steps.index("install-zarf") \
        < steps.index("seal")
    m = json.loads((Path(rke2_build["path"]) / "manifest.json").read_text())
    assert m["rke2"]["version"] == RKE2_VERSION
    assert m["rke2"]["images"] == ["rke2-images-canal.linux-amd64.tar.zst",
                                   "rke2-images-core.linux-amd64.tar.zst"]
    assert m["inputs"]["zarf"]["version"] == ZARF_VERSION
    assert m["zarf"]["packages"] == ["zarf-package-demo-amd64-1.0.0.tar.zst"]
    # STIG: the OS benchmark (family-generic for Debian) and the RKE2 one, with the shipped RKE2
    # node waivers accepting what a Kubernetes node needs (host firewall vs CNI, NOPASSWD sudo)
    report = load_report(Path(rke2_build["path"]) / "stig-report.json")
    assert report.gate is not None and report.gate.passed
    rke2 = next(b for b in report.benchmarks if b.benchmark == "rke2")
    assert rke2.target == "server" and rke2.counts.open == {1: 0, 2: 0, 3: 0}
    assert {r.stig_id for r in rke2.rows if r.result == "pass"} == {c.id for c in load_catalogue("rke2")}
    os_rows = next(b for b in report.benchmarks if b.benchmark == "ubuntu2204").rows
    waived = {r.stig_id: r.waiver.waiver_id for r in os_rows if r.waiver is not None and r.result == "fail"}
    assert waived == {"UBTU-22-251015": "W-RKE2-002", "UBTU-22-251020": "W-RKE2-002",
                      "UBTU-22-432011": "W-RKE2-005"}, waived


def test_bootstrap_server_reaches_ready_and_inits_zarf(rke2_build: dict[str, Any],
                                                        site: dict[str, Any]) -> None:
    image = Path(rke2_build["path"]) / "image.qcow2"

    def seed(guest: lv.Guest, pub: str) -> str:
        return render_user_data(NodeSeed("bootstrap", "cp-0", "stand-in-token", tls_san=("cp.example",),
                                         zarf_init=True, zarf_deploy=True, ssh_authorized_keys=(pub,),
                                         timeout=300))

    with lv.boot(image, clones=1, user="debian", scratch=site["work"], user_data=seed,
                 boot_timeout=900) as run:
        g = run.guests[0]
        def sh(cmd: str) -> str:
            client = lv.connect(g, "debian", run.key)
            try:
                _, out, err = client.exec_command(f"sudo sh -c {json.dumps(cmd)}", timeout=600)
                text = out.read().decode()
                assert out.channel.recv_exit_status() == 0, f"{cmd}: {text}{err.read().decode()}"
                return text
            finally:
                client.close()

        status = sh("cloud-init status --wait --long || true")
        assert "status: done" in status, status
        deadline = time.monotonic() + 300
        while "done" not in sh("test -e /var/lib/imagefactory/rke2-firstboot.done && echo done || true"):
            assert time.monotonic() < deadline, sh("cat /var/lib/imagefactory/rke2-firstboot.log || true")
            time.sleep(5)
        assert sh("systemctl is-enabled rke2-server").strip() == "enabled"
        assert sh("systemctl is-active rke2-server").strip() == "active"
        ready = sh("/var/lib/rancher/rke2/bin/kubectl --kubeconfig /etc/rancher/rke2/rke2.yaml get node "
                   "cp-0 -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}'")
        assert ready.strip() == "True"
        seen = sh("cat /var/lib/rancher/rke2/standin/config.txt")
        assert "stand-in-token" in seen and "cp-0" in seen and "profile: cis" in seen
        zarf = sh("cat /var/lib/zarf-standin/init.log")
        assert "init --confirm --set-variables REGISTRY_PVC_ENABLED=false" in zarf
        assert "/etc/rancher/rke2/rke2.yaml" in zarf
        assert f"zarf-init-amd64-{ZARF_VERSION}.tar.zst" in zarf
        deployed = sh("cat /var/lib/zarf-standin/deploy.log")
        assert "/usr/local/bin/packages/zarf-package-demo-amd64-1.0.0.tar.zst" in deployed
        # Idempotent: a second run neither fails nor runs zarf init or deploy again.
        sh("/usr/local/libexec/imagefactory/rke2-firstboot bootstrap --zarf-init --zarf-no-registry-pvc "
           "--zarf-deploy")
        assert sh("grep -c 'init --confirm' /var/lib/zarf-standin/init.log").strip() == "1"
        assert sh("grep -c 'package deploy' /var/lib/zarf-standin/deploy.log").strip() == "1"


def test_offline_rebuild_from_bundle(rke2_build: dict[str, Any], site: dict[str, Any]) -> None:
    """Export on the connected side, import on a fresh workdir with the mirror gone, build."""
    common = ["--recipes", str(site["recipes"]), "--config", str(site["config"])]
    bundle = site["root"] / "bundle.tar"
    r = cli(*common, "--workdir", str(site["work"]), "artifacts", "export", "rke2-node-debian",
            "-o", str(bundle))
    assert r.returncode == 0, r.stderr
    site["mirror"].stop()
    offline = site["root"] / "offline"
    r = cli(*common, "--workdir", str(offline), "build", "rke2-node-debian", "--skip-tests")
    assert r.returncode == 1
    assert "is not available" in r.stderr and "artifacts import bundle.tar" in r.stderr
    r = cli(*common, "--workdir", str(offline), "artifacts", "import", str(bundle))
    assert r.returncode == 0, r.stderr
    r = cli(*common, "--json", "--workdir", str(offline), "build", "rke2-node-debian", "--skip-tests",
            "--no-store")
    assert r.returncode == 0, r.stderr[-3000:]
    online = json.loads((Path(rke2_build["path"]) / "manifest.json").read_text())
    again = json.loads((Path(json.loads(r.stdout)["path"]) / "manifest.json").read_text())
    assert again["inputs"] == online["inputs"]
    assert again["recipe"]["digest"] == online["recipe"]["digest"]
    assert load_config(str(site["config"])).upstream.rke2_release.startswith("http://127.0.0.1")
    assert RecipeBook(site["recipes"]).load("rke2-node-debian").recipe.rke2 is not None
