from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from imagefactory.firstboot import FIRSTBOOT_PATH, NodeSeed, render_firstboot_script, render_user_data


def test_bootstrap_seed_writes_join_file_and_runs_helper() -> None:
    ud = yaml.safe_load(render_user_data(NodeSeed(
        "bootstrap", "cp-1", "s3cret", tls_san=("k8s.example",), zarf_init=True,
        zarf_storage_class="local-path")))
    join = ud["write_files"][0]
    assert join["path"] == "/etc/rancher/rke2/config.yaml.d/50-join.yaml"
    assert join["permissions"] == "0600"
    assert yaml.safe_load(join["content"]) == {"token": "s3cret", "node-name": "cp-1",
                                               "tls-san": ["k8s.example"]}
    assert ud["runcmd"] == [f"{FIRSTBOOT_PATH} bootstrap --timeout 900 --zarf-init "
                            "--zarf-storage-class local-path"]
    assert ud["hostname"] == "cp-1"


def test_agent_needs_server_and_zarf_is_bootstrap_only() -> None:
    with pytest.raises(ValueError, match="needs the server address"):
        NodeSeed("agent", "w-1", "t")
    with pytest.raises(ValueError, match="bootstrap server only"):
        NodeSeed("server", "cp-2", "t", server="https://10.0.0.1:9345", zarf_init=True)
    ud = yaml.safe_load(render_user_data(NodeSeed("agent", "w-1", "t", server="https://10.0.0.1:9345",
                                                  node_ip="10.0.0.7")))
    join = yaml.safe_load(ud["write_files"][0]["content"])
    assert join["server"] == "https://10.0.0.1:9345" and join["node-ip"] == "10.0.0.7"
    assert "--zarf-init" not in ud["runcmd"][0]


@pytest.mark.integration
@pytest.mark.parametrize("role", ["bootstrap", "agent"])
def test_rke2_user_data_passes_cloud_init_schema(tmp_path: Path, role: str) -> None:
    seed = NodeSeed(role, "n", "t", server=None if role == "bootstrap" else "https://h:9345",  # type: ignore[arg-type]
                    zarf_init=role == "bootstrap", ssh_authorized_keys=("ssh-ed25519 AAAA k",))
    p = tmp_path / "user-data"
    p.write_text(render_user_data(seed))
    r = subprocess.run(["cloud-init", "schema", "--config-file", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_firstboot_script_is_valid_bash(tmp_path: Path) -> None:
    for zarf in ("/usr/local/bin/zarf", None):
        script = tmp_path / "fb.sh"
        script.write_text(render_firstboot_script(prefix="/usr/local", zarf=zarf))
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        text = script.read_text()
        assert ("args=(init --confirm --zarf-cache" in text) == bool(zarf)
        if zarf:  # cloud-init's runcmd has no HOME; zarf needs one (tests/standins/scripts/zarf.in)
            assert text.index("export HOME=${HOME:-/root}") < text.index(f"{zarf} \"${{args[@]}}\"")
            # upstream's package names: .tar.zst, and .tar for an uncompressed one
            assert "for pkg in /usr/local/bin/packages/*.tar.zst /usr/local/bin/packages/*.tar; do" in text

    r = subprocess.run(["bash", str(script), "bootstrap"], capture_output=True, text=True)
    assert r.returncode == 1 and "50-join.yaml is missing" in r.stderr


def test_firstboot_deploys_with_the_baked_key_when_the_recipe_verifies(tmp_path: Path) -> None:
    """zarf.verify: every deploy gets --key (zarf then refuses unsigned and badly signed packages;
    without it, it only warns)."""
    plain = render_firstboot_script(prefix="/usr/local", zarf="/usr/local/bin/zarf")
    keyed = render_firstboot_script(prefix="/usr/local", zarf="/usr/local/bin/zarf",
                                    verify_key="/etc/imagefactory/zarf-verify.pub")
    assert "--key" not in plain
    deploy = [line for line in keyed.splitlines() if "package deploy" in line and "log " not in line]
    assert len(deploy) == 1, deploy
    after = keyed.splitlines()[keyed.splitlines().index(deploy[0]) + 1]
    assert deploy[0].endswith("\\") and after.strip() == "--key /etc/imagefactory/zarf-verify.pub"
    script = tmp_path / "fb.sh"
    script.write_text(keyed)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_firstboot_waits_for_ready_with_the_kubeconfig_each_role_has() -> None:
    script = render_firstboot_script(prefix="/usr/local", zarf=None)
    # agents get no rke2.yaml: they check their own Node with the kubelet's credentials
    assert "agent) unit=rke2-agent kubeconfig=/var/lib/rancher/rke2/agent/kubelet.kubeconfig ;;" in script
    assert "bootstrap|server) unit=rke2-server kubeconfig=/etc/rancher/rke2/rke2.yaml ;;" in script
    wait = next(line for line in script.splitlines() if line.startswith("until "))
    assert '$kubectl --kubeconfig "$kubeconfig" get node "$node"' in wait
