"""rke2-node end to end with the RKE2/Zarf stand-ins served from a loopback mirror:
lock update -> build (baked, sealed, boot-tested with the rke2 suite) -> publish -> a 2-node
cluster (bootstrap server + agent) on local libvirt that reaches Ready and runs `zarf init`; then
an offline rebuild from a bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagefactory.clusters.libvirt import LibvirtCluster, parse_nodes
from imagefactory.clusters.spec import load_spec
from imagefactory.config import load_config
from imagefactory.recipes import RecipeBook
from imagefactory.stig.catalogue import load_catalogue
from imagefactory.stig.report import load_report
from imagefactory.testing import libvirt as lv
from tests.conftest import RECIPES
from tests.standins.mirror import ReleaseMirror, upstream_bases
from tests.standins.release import (
    cosign_key_pair,
    make_rke2_release,
    make_zarf_package,
    make_zarf_release,
)

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
    # Both signed with the site's cosign key (recipe: zarf.verify.key); a Sigstore bundle as zarf
    # v0.84 writes, and the legacy zarf.yaml.sig older packages carry.
    public, private = cosign_key_pair()
    (recipes / "zarf-cosign.pub").write_bytes(public)
    make_zarf_package(pkg_dir / "zarf-package-demo-amd64-1.0.0.tar.zst", "demo", sign=private)
    # upstream's name for an uncompressed package
    make_zarf_package(pkg_dir / "zarf-package-plain-amd64-1.0.0.tar", "plain", sign=private, legacy=True)
    with ReleaseMirror(root / "mirror") as mirror:
        mirror.channels["stable"] = RKE2_VERSION
        recipe = recipes / "rke2-node.yaml"
        pkg_urls = ", ".join(f"{mirror.url}/packages/zarf-package-{name}" for name in
                             ("demo-amd64-1.0.0.tar.zst", "plain-amd64-1.0.0.tar"))
        # One clone in the build's boot test, on UEFI with Secure Boot (a hybrid disk's single
        # clone); the cluster test boots two more nodes of the image on SeaBIOS (distinct
        # identities, both joined): both firmwares still boot it in CI, one TCG boot fewer.
        text = recipe.read_text().replace(
            "  init_package: true\n",
            f"  init_package: true\n  packages: [{pkg_urls}]\n  verify: {{key: zarf-cosign.pub}}\n")
        recipe.write_text(text.replace("  suites: [rke2]\n", "  suites: [rke2]\n  clones: 1\n"))
        config = root / "imagefactory.yaml"
        config.write_text(yaml.safe_dump({"upstream": upstream_bases(mirror.url)}))
        yield {"root": root, "recipes": recipes, "config": config, "mirror": mirror,
               "work": root / "work"}


@pytest.fixture(scope="module")
def rke2_build(site: dict[str, Any]) -> dict[str, Any]:
    common = ["--json", "--recipes", str(site["recipes"]), "--config", str(site["config"]),
              "--workdir", str(site["work"])]
    r = cli(*common, "lock", "update", "rke2-node")
    assert r.returncode == 0, r.stderr
    lock = json.loads((site["recipes"] / "imagefactory.lock").read_text())
    assert lock["recipes"]["rke2-node"]["rke2"]["version"] == RKE2_VERSION
    r = cli(*common, "build", "rke2-node")
    assert r.returncode == 0, r.stderr[-5000:]
    summary: dict[str, Any] = json.loads(r.stdout)
    return summary


def test_built_and_boot_tested(rke2_build: dict[str, Any]) -> None:
    t = rke2_build["tests"]
    assert t["ok"] and t["suites"] == ["hygiene", "recipe", "rke2", "stig"]
    assert t["failed"] == 0 and t["passed"] >= 30, t
    junit = (Path(rke2_build["path"]) / "junit.xml").read_text()
    assert junit.count("<testcase") == t["passed"] + t["skipped"]  # one clone: the identity
    assert "tests.clones is 1, no second clone to compare" in junit  # comparison is a declared skip
    log = (Path(rke2_build["path"]) / "build.log").read_text()
    assert " (uefi-secure, " in log and " (bios, " not in log  # "booting <domain> (<firmware>, ..."
    assert "secureboot: Secure boot enabled" in log  # the clone's own kernel said so
    steps = [s["name"] for s in rke2_build["steps"]]
    assert steps.index("install-rke2") < steps.index("configure-rke2") < steps.index("install-zarf") \
        < steps.index("seal")
    m = json.loads((Path(rke2_build["path"]) / "manifest.json").read_text())
    assert m["rke2"]["version"] == RKE2_VERSION
    assert m["rke2"]["images"] == ["rke2-images-canal.linux-amd64.tar.zst",
                                   "rke2-images-core.linux-amd64.tar.zst"]
    assert m["inputs"]["zarf"]["version"] == ZARF_VERSION
    assert m["zarf"]["packages"] == ["zarf-package-demo-amd64-1.0.0.tar.zst",
                                     "zarf-package-plain-amd64-1.0.0.tar"]
    assert {n: c["signature_verified"] for n, c in m["zarf"]["checked"].items()} == {
        "zarf-package-demo-amd64-1.0.0.tar.zst": "bundle", "zarf-package-plain-amd64-1.0.0.tar": "legacy",
        f"zarf-init-amd64-{ZARF_VERSION}.tar.zst": None}
    assert m["zarf"]["verify_key"]["path"] == "/etc/imagefactory/zarf-verify.pub"
    # STIG: the OS benchmark (Ubuntu 22.04 on Ubuntu 22.04) and the RKE2 one, with the shipped
    # waivers accepting what a Kubernetes node needs (host firewall vs CNI, NOPASSWD sudo)
    report = load_report(Path(rke2_build["path"]) / "stig-report.json")
    assert report.gate is not None and report.gate.passed
    rke2 = next(b for b in report.benchmarks if b.benchmark == "rke2")
    assert rke2.target == "server" and rke2.counts.open == {1: 0, 2: 0, 3: 0}
    assert {r.stig_id for r in rke2.rows if r.result == "pass"} == {c.id for c in load_catalogue("rke2")}
    os_rows = next(b for b in report.benchmarks if b.benchmark == "ubuntu2204").rows
    waived = {r.stig_id: r.waiver.waiver_id for r in os_rows if r.waiver is not None and r.result == "fail"}
    # the base image's cloud-image set and the node set both cover these: either accepts them
    assert set(waived) == {"UBTU-22-251015", "UBTU-22-251020", "UBTU-22-432011"}, waived
    assert waived["UBTU-22-251015"] in ("W-CLOUD-002", "W-RKE2-002")
    assert waived["UBTU-22-432011"] in ("W-CLOUD-001", "W-RKE2-005")
    assert next(b for b in report.benchmarks if b.benchmark == "ubuntu2204").target == "ubuntu"


def test_two_node_cluster_on_libvirt(rke2_build: dict[str, Any], site: dict[str, Any]) -> None:
    """Publish the image, then `cluster create` a bootstrap server + an agent as local libvirt VMs
    linked through the loopback switch: each join file names the bootstrap address, the cluster
    token and the node; both nodes are Ready through the stand-ins (the agent really joined the
    server's supervisor port over the link); zarf init ran once on the bootstrap server only."""
    root, work = site["root"], site["work"]
    common = ["--json", "--recipes", str(site["recipes"]), "--workdir", str(work)]
    r = cli(*common, "keys", "generate", "-o", str(root / "keys"))
    assert r.returncode == 0, r.stderr
    keys = json.loads(r.stdout)
    cfg = yaml.safe_load(site["config"].read_text())
    cfg["signing"] = {"public_key": keys["public_key"], "private_key": keys["private_key"]}
    config = root / "cluster-config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    common += ["--config", str(config)]
    r = cli(*common, "publish", rke2_build["path"])
    assert r.returncode == 0, r.stderr
    spec_file = root / "cluster.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "ci", "target": "libvirt", "image": "rke2-node",
        "servers": {"count": 1, "cpu": 2, "memory": "1GiB", "disk": "9GiB"},
        "agents": {"count": 1, "cpu": 2, "memory": "1GiB", "disk": "9GiB"},
        "rke2": {"tls_san": ["cp.example"], "node_timeout": 600},
        "zarf": {"init": True, "deploy_packages": True},
        "libvirt": {"accelerator": "tcg", "boot_timeout": 900},
    }))
    spec = load_spec(spec_file)
    cluster = LibvirtCluster(spec, work)
    try:
        r = cli(*common, "cluster", "create", "-f", str(spec_file))
        assert r.returncode == 0, r.stderr[-5000:]
        status = json.loads(r.stdout)
        assert [(n["name"], n["role"], n["phase"], n["ip"]) for n in status["nodes"]] == [
            ("ci-server-0", "bootstrap", "Running", "10.77.0.11"),
            ("ci-agent-0", "agent", "Running", "10.77.0.12")]
        assert all(n["ready"] is True for n in status["nodes"]), status
        token = (work / "clusters/ci/token").read_text().strip()
        assert (work / "clusters/ci/token").stat().st_mode & 0o777 == 0o600
        assert token not in r.stdout + r.stderr  # never printed

        def sh(node: str, cmd: str) -> str:
            return cluster.ssh(node, f"sudo -n sh -c {json.dumps(cmd)}", timeout=300)

        for node, role in (("ci-server-0", "bootstrap"), ("ci-agent-0", "agent")):
            join = yaml.safe_load(sh(node, "cat /etc/rancher/rke2/config.yaml.d/50-join.yaml"))
            assert join["token"] == token and join["node-name"] == node
            assert join["node-ip"] == ("10.77.0.11" if role == "bootstrap" else "10.77.0.12")
            if role == "bootstrap":
                assert "server" not in join and join["tls-san"] == ["cp.example"]
            else:
                assert join["server"] == "https://10.77.0.11:9345"
        # The server lists both nodes Ready; the agent's join is alive from its side too.
        table = sh("ci-server-0", "/var/lib/rancher/rke2/bin/kubectl --kubeconfig "
                   "/etc/rancher/rke2/rke2.yaml get nodes")
        assert parse_nodes(table) == {"ci-server-0": True, "ci-agent-0": True}, table
        agent_ready = sh("ci-agent-0", "/var/lib/rancher/rke2/bin/kubectl --kubeconfig "
                         "/var/lib/rancher/rke2/agent/kubelet.kubeconfig get node ci-agent-0 "
                         "-o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}'")
        assert agent_ready.strip() == "True"
        joined = sh("ci-agent-0", "cat /var/lib/rancher/rke2/standin/joined-server")
        assert joined.strip().endswith("10.77.0.11:9345"), joined
        assert sh("ci-agent-0", "systemctl is-active rke2-agent").strip() == "active"
        assert sh("ci-agent-0", "systemctl is-enabled rke2-server || true").strip() != "enabled"
        # Zarf: init and the baked package deploy ran once, on the bootstrap server only.
        zarf = sh("ci-server-0", "cat /var/lib/zarf-standin/init.log")
        # cloud-init's runcmd has no HOME: the stand-in fails without one, as zarf does
        assert zarf.count("init --confirm --zarf-cache /var/cache/zarf "
                          "--set-variables REGISTRY_PVC_ENABLED=false,REGISTRY_HPA_ENABLE=false") == 1
        assert "registry: pvc=false hpa=false" in zarf  # no autoscaled registry on emptyDir
        assert f"zarf-init-amd64-{ZARF_VERSION}.tar.zst" in zarf
        deployed = sh("ci-server-0", "cat /var/lib/zarf-standin/deploy.log")
        key = "/etc/imagefactory/zarf-verify.pub"
        assert ("zarf-package-demo-amd64-1.0.0.tar.zst --confirm --zarf-cache /var/cache/zarf "
                f"--key {key}") in deployed
        assert f"zarf-package-plain-amd64-1.0.0.tar --confirm --zarf-cache /var/cache/zarf --key {key}" \
            in deployed
        # both verified with the baked key, in the guest (zstd, openssl, python3 of the image)
        assert deployed.count("signature: verified (bundle)") == 1, deployed
        assert deployed.count("signature: verified (legacy)") == 1, deployed
        # A package changed after signing is refused with the baked key, as zarf refuses it.
        # (no "$" in the command: sh() passes it through the login shell in double quotes)
        t = "/root/tamper"
        refused = sh("ci-server-0", f"set -e; rm -rf {t}; mkdir -p {t}/p; cd {t}; "
                     "tar -xf /usr/local/bin/packages/zarf-package-plain-amd64-1.0.0.tar -C p; "
                     "sed -i 's/required: true/required: false/' p/zarf.yaml; "
                     "tar -cf zarf-package-plain-amd64-1.0.0.tar -C p .; "
                     "if HOME=/root KUBECONFIG=/etc/rancher/rke2/rke2.yaml /usr/local/bin/zarf package "
                     f"deploy {t}/zarf-package-plain-amd64-1.0.0.tar --confirm --key {key} 2>&1; "
                     "then echo DEPLOYED; else echo REFUSED; fi")
        assert refused.strip().endswith("REFUSED") and "signature verification failed" in refused, refused
        on_agent = sh("ci-agent-0", "test -e /var/lib/zarf-standin/init.log && echo yes || echo no")
        assert on_agent.strip() == "no"
        # Re-running the first boot (a reboot) is idempotent: no second zarf init or deploy.
        sh("ci-server-0", "/usr/local/libexec/imagefactory/rke2-firstboot bootstrap --zarf-init "
           "--zarf-no-registry-pvc --zarf-deploy")
        assert sh("ci-server-0", "grep -c 'init --confirm' /var/lib/zarf-standin/init.log").strip() == "1"
        # `create` again is a no-op on a complete cluster (resumable): same domains, still Ready.
        conn = lv.libvirt.open(lv.URI)
        try:
            ids = {n: conn.lookupByName(f"imagefactory-{n}").ID() for n in ("ci-server-0", "ci-agent-0")}
            r = cli(*common, "cluster", "create", "-f", str(spec_file))
            assert r.returncode == 0, r.stderr[-3000:]
            assert {n: conn.lookupByName(f"imagefactory-{n}").ID() for n in ids} == ids  # not restarted
        finally:
            conn.close()
        assert all(n["ready"] for n in json.loads(r.stdout)["nodes"])
    finally:
        r = cli(*common, "cluster", "delete", "-f", str(spec_file))
    assert r.returncode == 0, r.stderr
    assert not (work / "clusters/ci").exists()
    conn = lv.libvirt.open(lv.URI)
    try:
        assert not [d.name() for d in conn.listAllDomains() if d.name().startswith("imagefactory-ci-")]
    finally:
        conn.close()
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    # this cluster's switch (its pid file is under the workdir), not any on the host
    assert not [line for line in ps.splitlines() if "imagefactory.l2hub" in line and str(work) in line]
    r = cli(*common, "cluster", "status", "-f", str(spec_file))
    assert r.returncode == 1 and json.loads(r.stdout)["exists"] is False


def test_offline_rebuild_from_bundle(rke2_build: dict[str, Any], site: dict[str, Any]) -> None:
    """Export on the connected side, import on a fresh workdir with the mirror gone, build."""
    common = ["--recipes", str(site["recipes"]), "--config", str(site["config"])]
    bundle = site["root"] / "bundle.tar"
    r = cli(*common, "--workdir", str(site["work"]), "artifacts", "export", "rke2-node",
            "-o", str(bundle))
    assert r.returncode == 0, r.stderr
    site["mirror"].stop()
    offline = site["root"] / "offline"
    r = cli(*common, "--workdir", str(offline), "build", "rke2-node", "--skip-tests")
    assert r.returncode == 1
    assert "is not available" in r.stderr and "artifacts import bundle.tar" in r.stderr
    r = cli(*common, "--workdir", str(offline), "artifacts", "import", str(bundle))
    assert r.returncode == 0, r.stderr
    r = cli(*common, "--json", "--workdir", str(offline), "build", "rke2-node", "--skip-tests",
            "--no-store")
    assert r.returncode == 0, r.stderr[-3000:]
    online = json.loads((Path(rke2_build["path"]) / "manifest.json").read_text())
    again = json.loads((Path(json.loads(r.stdout)["path"]) / "manifest.json").read_text())
    assert again["inputs"] == online["inputs"]
    assert again["recipe"]["digest"] == online["recipe"]["digest"]
    assert load_config(str(site["config"])).upstream.rke2_release.startswith("http://127.0.0.1")
    assert RecipeBook(site["recipes"]).load("rke2-node").recipe.rke2 is not None
