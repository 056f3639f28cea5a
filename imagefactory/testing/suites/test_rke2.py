"""An RKE2 (+ Zarf) image as baked: installed, configured, hardened, disabled, free of node state.

The facts each test reads are gathered up front (`wanted`, see conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from imagefactory.steps.rke2 import AUDIT_POLICY
from imagefactory.testing import facts as F

Clone = tuple[dict[str, Any], F.FactStore]

BINARIES = ("bin/rke2", "bin/rke2-killall.sh", "bin/rke2-uninstall.sh", "share/rke2/rke2-cis-sysctl.conf")
UNIT_DIRS = ("{prefix}/lib/systemd/system", "/etc/systemd/system", "/usr/local/lib/systemd/system")
UNITS = ("rke2-server", "rke2-agent")
IMAGES = "/var/lib/rancher/rke2/agent/images"
CONFIG = "/etc/rancher/rke2/config.yaml"
CONFIG_D = "ls -A /etc/rancher/rke2/config.yaml.d"
CIS_SYSCTL = "/etc/sysctl.d/60-rke2-cis.conf"
CIS_VALUES = (("vm.panic_on_oom", "0"), ("vm.overcommit_memory", "1"), ("kernel.panic", "10"),
              ("kernel.panic_on_oops", "1"))
FIRSTBOOT = "/usr/local/libexec/imagefactory/rke2-firstboot"
FIRSTBOOT_DONE = "/var/lib/imagefactory/rke2-firstboot.done"


def _rke2(target: dict[str, Any]) -> dict[str, Any]:
    r: dict[str, Any] = target["recipe"]["rke2"]
    return r


def _unit_files(prefix: str, unit: str) -> list[str]:
    return [f"{d.format(prefix=prefix)}/{unit}.service" for d in UNIT_DIRS]


def _zarf_files(target: dict[str, Any]) -> tuple[str, str]:
    d, zarf = target["distro"]["zarf_dir"], target["recipe"]["zarf"]
    return f"{d}/zarf", f"{d}/zarf-init-{_rke2(target)['arch']}-{zarf['version']}.tar.zst"


def wanted(target: dict[str, Any], clone: dict[str, Any]) -> Iterator[F.Item]:
    """What this suite reads from a clone."""
    prefix = target["distro"]["rke2_prefix"]
    yield from (F.stat(f"{prefix}/{rel}") for rel in BINARIES)
    for unit in UNITS:
        yield from map(F.stat, _unit_files(prefix, unit))
        yield from (F.is_enabled(unit), F.is_active(unit))
    yield from (F.cmd(f"ls -A {IMAGES}"), F.stat(f"{IMAGES}/.cache.json"), F.stat(CONFIG), F.read(CONFIG),
                F.cmd(CONFIG_D), F.read(CIS_SYSCTL), F.cmd("getent passwd etcd"), F.cmd("getent group etcd"))
    # the config names the audit policy; the baked default unless the recipe moved it
    yield F.stat(_rke2(target).get("config", {}).get("audit-policy-file", AUDIT_POLICY))
    yield from (F.sysctl(key) for key, _ in CIS_VALUES)
    if target["recipe"].get("zarf"):
        zarf, init = _zarf_files(target)
        yield from (F.stat(zarf), F.cmd(f"{zarf} version"), F.stat(init))
    yield from (F.stat(FIRSTBOOT), F.stat(FIRSTBOOT_DONE))


def test_rke2_installed_by_install_sh(clone: Clone, target: dict[str, Any]) -> None:
    _, g = clone
    prefix = target["distro"]["rke2_prefix"]
    for rel in BINARIES:
        assert g.file(f"{prefix}/{rel}").exists, rel
    assert g.file(f"{prefix}/bin/rke2").mode & 0o111
    for unit in UNITS:
        assert any(g.file(p).exists for p in _unit_files(prefix, unit)), f"{unit}.service"


def test_units_installed_but_disabled_and_not_running(clone: Clone) -> None:
    _, g = clone
    for unit in UNITS:
        assert g.is_enabled(unit) == "disabled", unit
        assert not g.is_active(unit)


def test_image_tarballs_and_empty_cache(clone: Clone, target: dict[str, Any]) -> None:
    _, g = clone
    names = g.cmd(f"ls -A {IMAGES}").stdout.split()
    images = _rke2(target)["images"]
    expected = ([f"rke2-images.linux-{_rke2(target)['arch']}.tar.zst"] if images == "all" else
                [f"rke2-images-{i}.linux-{_rke2(target)['arch']}.tar.zst" for i in images])
    assert sorted(names) == sorted([*expected, ".cache.json"])  # no .txt pull lists
    assert g.file(f"{IMAGES}/.cache.json").size == 0


def test_static_config(clone: Clone, target: dict[str, Any]) -> None:
    _, g = clone
    f = g.file(CONFIG)
    assert (f.mode, f.user) == (0o600, "root")
    cfg = yaml.safe_load(g.text(CONFIG))
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
    assert g.file(cfg["audit-policy-file"]).exists
    assert g.cmd(CONFIG_D).stdout.split() == []


def test_cis_prerequisites(clone: Clone, target: dict[str, Any]) -> None:
    _, g = clone
    conf = g.text(CIS_SYSCTL)
    for key, value in CIS_VALUES:
        assert key in conf
        assert g.sysctl(key) == value, key  # applied at boot, from the drop-in
    etcd = g.cmd("getent passwd etcd")
    assert etcd.rc == 0 and etcd.stdout.strip().split(":")[-1] in ("/sbin/nologin", "/usr/sbin/nologin")
    assert g.cmd("getent group etcd").rc == 0


def test_zarf_beside_its_init_package(clone: Clone, target: dict[str, Any]) -> None:
    zarf = target["recipe"].get("zarf")
    if not zarf:
        pytest.skip("recipe: bakes no Zarf")
    _, g = clone
    binary, init = _zarf_files(target)
    assert g.file(binary).mode & 0o111
    assert g.cmd(f"{binary} version").stdout.strip() == zarf["version"]
    assert g.file(init).exists


def test_firstboot_helper_baked(clone: Clone) -> None:
    _, g = clone
    f = g.file(FIRSTBOOT)
    assert f.exists and f.mode & 0o111
    assert not g.file(FIRSTBOOT_DONE).exists
