"""An RKE2 (+ Zarf) image as baked: installed, configured, hardened, disabled, free of node state."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

Clone = tuple[dict[str, Any], Any]


def _rke2(target: dict[str, Any]) -> dict[str, Any]:
    r: dict[str, Any] = target["recipe"]["rke2"]
    return r


def test_rke2_installed_by_install_sh(clone: Clone, target: dict[str, Any]) -> None:
    _, host = clone
    prefix = target["distro"]["rke2_prefix"]
    for rel in ("bin/rke2", "bin/rke2-killall.sh", "bin/rke2-uninstall.sh",
                "share/rke2/rke2-cis-sysctl.conf"):
        assert host.file(f"{prefix}/{rel}").exists, rel
    assert host.file(f"{prefix}/bin/rke2").mode & 0o111
    units = [f"{prefix}/lib/systemd/system", "/etc/systemd/system", "/usr/local/lib/systemd/system"]
    for unit in ("rke2-server.service", "rke2-agent.service"):
        assert any(host.file(f"{d}/{unit}").exists for d in units), unit


def test_units_installed_but_disabled_and_not_running(clone: Clone) -> None:
    _, host = clone
    for unit in ("rke2-server", "rke2-agent"):
        assert host.run(f"systemctl is-enabled {unit}").stdout.strip() == "disabled", unit
        assert not host.service(unit).is_running


def test_image_tarballs_and_empty_cache(clone: Clone, target: dict[str, Any]) -> None:
    _, host = clone
    d = "/var/lib/rancher/rke2/agent/images"
    names = host.run(f"ls -A {d}").stdout.split()
    images = _rke2(target)["images"]
    expected = ([f"rke2-images.linux-{_rke2(target)['arch']}.tar.zst"] if images == "all" else
                [f"rke2-images-{i}.linux-{_rke2(target)['arch']}.tar.zst" for i in images])
    assert sorted(names) == sorted([*expected, ".cache.json"])  # no .txt pull lists
    assert host.file(f"{d}/.cache.json").size == 0


def test_static_config(clone: Clone, target: dict[str, Any]) -> None:
    _, host = clone
    f = host.file("/etc/rancher/rke2/config.yaml")
    assert (f.mode, f.user) == (0o600, "root")
    cfg = yaml.safe_load(f.content_string)
    assert cfg.get("profile") == _rke2(target)["profile"]
    assert cfg["write-kubeconfig-mode"] == "0640"
    assert "read-only-port=0" in cfg["kubelet-arg"]
    assert "anonymous-auth=false" in cfg["kube-apiserver-arg"]
    assert cfg["secrets-encryption"] is True
    for key, value in _rke2(target)["config"].items():
        if not key.endswith("+"):
            assert cfg[key] == value, key
    for per_node in ("token", "server", "node-name", "node-ip", "tls-san"):
        assert per_node not in cfg
    assert host.file(cfg["audit-policy-file"]).exists
    assert host.run("ls -A /etc/rancher/rke2/config.yaml.d").stdout.split() == []


def test_cis_prerequisites(clone: Clone, target: dict[str, Any]) -> None:
    _, host = clone
    conf = host.file("/etc/sysctl.d/60-rke2-cis.conf").content_string
    for key, value in (("vm.panic_on_oom", "0"), ("vm.overcommit_memory", "1"), ("kernel.panic", "10"),
                       ("kernel.panic_on_oops", "1")):
        assert key in conf
        assert host.sysctl(key) == int(value), key  # applied at boot, from the drop-in
    etcd = host.user("etcd")
    assert etcd.exists and etcd.shell in ("/sbin/nologin", "/usr/sbin/nologin")
    assert host.group("etcd").exists


def test_zarf_beside_its_init_package(clone: Clone, target: dict[str, Any]) -> None:
    zarf = target["recipe"].get("zarf")
    if not zarf:
        pytest.skip("the recipe bakes no Zarf")
    _, host = clone
    d = target["distro"]["zarf_dir"]
    assert host.file(f"{d}/zarf").mode & 0o111
    assert host.run(f"{d}/zarf version").stdout.strip() == zarf["version"]
    arch = _rke2(target)["arch"]
    assert host.file(f"{d}/zarf-init-{arch}-{zarf['version']}.tar.zst").exists


def test_firstboot_helper_baked(clone: Clone) -> None:
    _, host = clone
    f = host.file("/usr/local/libexec/imagefactory/rke2-firstboot")
    assert f.exists and f.mode & 0o111
    assert not host.file("/var/lib/imagefactory/rke2-firstboot.done").exists
