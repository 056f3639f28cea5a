"""Golden-image hygiene on the booted clones: one test per sealing step (steps/seal.py), plus
first-boot behaviour (identities generated at first boot and different per clone, cloud-init
finished without errors, no failed unit)."""

from __future__ import annotations

import json
from typing import Any

Clone = tuple[dict[str, Any], Any]


def _btime(host: Any) -> int:
    for line in host.file("/proc/stat").content_string.splitlines():
        if line.startswith("btime "):
            return int(line.split()[1])
    raise AssertionError("no btime in /proc/stat")


def _made_this_boot(host: Any, path: str) -> bool:
    # A few seconds of slack for the clock settling right after boot.
    return bool(host.file(path).mtime.timestamp() >= _btime(host) - 5)


def test_cloud_init_finished_without_errors(clone: Clone) -> None:
    _, host = clone
    out = host.run("cloud-init status --wait --long")
    assert "status: done" in out.stdout, out.stdout + out.stderr
    result = json.loads(host.file("/run/cloud-init/result.json").content_string)
    assert result["v1"]["errors"] == [], result


def test_no_failed_units(clone: Clone) -> None:
    _, host = clone
    state = host.run("systemctl is-system-running --wait").stdout.strip()
    failed = host.run("systemctl list-units --failed --no-legend --plain").stdout.strip()
    assert failed == "", failed
    assert state == "running", state


def test_machine_id_generated_on_first_boot(clone: Clone) -> None:
    _, host = clone
    mid = host.file("/etc/machine-id").content_string.strip()
    assert len(mid) == 32 and all(c in "0123456789abcdef" for c in mid), mid
    assert _made_this_boot(host, "/etc/machine-id")


def test_dbus_machine_id_is_not_a_copy(clone: Clone) -> None:
    _, host = clone
    f = host.file("/var/lib/dbus/machine-id")
    if f.exists and not f.is_symlink:
        assert f.content_string.strip() == host.file("/etc/machine-id").content_string.strip()


def test_ssh_host_keys_generated_on_first_boot(clone: Clone) -> None:
    _, host = clone
    keys = host.run("ls /etc/ssh/ssh_host_*_key.pub").stdout.split()
    assert keys, "no SSH host keys"
    for key in keys:
        assert _made_this_boot(host, key), f"{key} predates this boot"


def test_clones_have_distinct_identities(clones: list[Clone]) -> None:
    assert len(clones) >= 2
    ids = [h.file("/etc/machine-id").content_string.strip() for _, h in clones]
    keys = [h.file("/etc/ssh/ssh_host_ed25519_key.pub").content_string.split()[1] for _, h in clones]
    assert len(set(ids)) == len(ids), f"machine-ids repeat: {ids}"
    assert len(set(keys)) == len(keys), "SSH host keys repeat across clones"


def test_cloud_init_state_is_this_instance_only(clone: Clone) -> None:
    info, host = clone
    instances = host.run("ls /var/lib/cloud/instances").stdout.split()
    assert instances == [info["instance_id"]], instances


def test_hostname_from_cloud_init_not_build_host(clone: Clone, target: dict[str, Any]) -> None:
    info, host = clone
    name = host.run("hostname").stdout.strip()
    assert name == info["hostname"]
    assert target["build_host"]["hostname"] not in host.file("/etc/hostname").content_string.split()


def test_resolv_conf_not_from_build_host(clone: Clone, target: dict[str, Any]) -> None:
    _, host = clone
    f = host.file("/etc/resolv.conf")
    text = f.content_string if f.exists else ""
    for ns in target["build_host"]["nameservers"]:
        assert f"nameserver {ns}" not in text, f"build host nameserver {ns} leaked"


def test_etc_hosts_is_sane(clone: Clone, target: dict[str, Any]) -> None:
    _, host = clone
    text = host.file("/etc/hosts").content_string
    fields = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert any(f[0] == "127.0.0.1" and "localhost" in f for f in fields), text
    assert target["build_host"]["hostname"] not in text.split()


def test_no_package_caches(clone: Clone) -> None:
    _, host = clone
    leftovers = host.run(
        "find /var/lib/apt/lists /var/cache/apt /var/cache/zypp -type f 2>/dev/null"
    ).stdout.split()
    assert leftovers == [], leftovers


def test_logs_are_from_this_boot(clone: Clone) -> None:
    _, host = clone
    btime = _btime(host)
    old = host.run(
        f"find /var/log -type f -size +0 ! -newermt @{btime - 5} -printf '%p\\n'"
    ).stdout.split()
    assert old == [], f"log content from the build: {old}"


def test_no_shell_history(clone: Clone) -> None:
    _, host = clone
    found = host.run(
        "ls -a /root /home/* 2>/dev/null | grep -E '^\\.(bash_history|lesshst|python_history|viminfo)$'"
    ).stdout.split()
    assert found == [], found


def test_random_seed_not_baked(clone: Clone) -> None:
    _, host = clone
    f = host.file("/var/lib/systemd/random-seed")
    assert not f.exists or _made_this_boot(host, "/var/lib/systemd/random-seed")


def test_no_build_keys(clone: Clone, target: dict[str, Any]) -> None:
    _, host = clone
    assert not host.file("/etc/sudoers.d/imagefactory-build").exists
    # The only key anyone may hold is the one this test run injected through cloud-init...
    user = target["user"]
    keys = host.file(f"/home/{user}/.ssh/authorized_keys").content_string.splitlines()
    assert [k for k in keys if k.strip()] == [target["public_key"]]
    # ...which cloud-init (disable_root) also gives root, wrapped so that it cannot log in.
    root_keys = host.file("/root/.ssh/authorized_keys")
    if root_keys.exists:
        for line in filter(str.strip, root_keys.content_string.splitlines()):
            assert line.endswith(target["public_key"]), f"unknown key for root: {line[:60]}"
            assert "Please login as the user" in line, f"usable root key: {line[:60]}"


def test_no_build_users(clone: Clone, target: dict[str, Any]) -> None:
    # Login accounts are the deployment's: only the user this boot's cloud-init created exists
    # (a Packer build VM's default user, its home and sudoers file must not survive sealing).
    _, host = clone
    users = [f.split(":")[0] for f in host.file("/etc/passwd").content_string.splitlines()
             if len(f.split(":")) > 2 and f.split(":")[2].isdigit() and 1000 <= int(f.split(":")[2]) < 60000]
    assert users == [target["user"]], users
    homes = host.run("ls -1 /home").stdout.split()
    assert homes == [target["user"]], homes


def test_services_may_start(clone: Clone) -> None:
    _, host = clone
    assert not host.file("/usr/sbin/policy-rc.d").exists
    assert host.service("ssh").is_running


def test_no_egress(clone: Clone) -> None:
    _, host = clone
    # restrict=on user networking: nothing beyond the forwarded SSH port is reachable.
    out = host.run("timeout 5 bash -c 'exec 3<>/dev/tcp/10.0.2.2/80' 2>&1")
    assert out.rc != 0


def test_tmp_is_clean(clone: Clone) -> None:
    _, host = clone
    btime = _btime(host)
    old = host.run(f"find /var/tmp -mindepth 1 ! -newermt @{btime - 5} -printf '%p\\n'").stdout.split()
    assert old == [], f"files from the build in /var/tmp: {old}"


def test_no_rke2_node_state(clone: Clone) -> None:
    _, host = clone
    state = ["/etc/rancher/node", "/etc/rancher/rke2/rke2.yaml", "/var/lib/rancher/rke2/server",
             "/var/lib/rancher/rke2/agent/etc", "/var/lib/rancher/rke2/agent/containerd"]
    assert [p for p in state if host.file(p).exists] == []
    for unit in ("rke2-server", "rke2-agent"):
        assert not host.service(unit).is_running, f"{unit} started on a plain boot"
