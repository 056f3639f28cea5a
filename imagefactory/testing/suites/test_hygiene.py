"""Golden-image hygiene on the booted clones: one test per sealing step (steps/seal.py), plus
first-boot behaviour (identities generated at first boot and different per clone, cloud-init
finished without errors, no failed unit).

The facts each test reads are gathered up front (`wanted`, see conftest); only the egress
probe runs live."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from imagefactory.testing import facts as F

Clone = tuple[dict[str, Any], F.FactStore]

# What `cloud-init status` reads (cloudinit/cmd/status.py get_status_details), read here directly:
# the command's Python start-up cost a TCG guest 22-50 s of the boot test. The boot is ready once
# result.json exists (libvirt.READY_WAIT), so there is nothing left to --wait for.
CLOUD_INIT_STATUS = "/run/cloud-init/status.json"
CLOUD_INIT_RESULT = "/run/cloud-init/result.json"
CLOUD_INIT_DISABLED = ("/etc/cloud/cloud-init.disabled", "/run/cloud-init/disabled")
SYSTEM_STATE = F.SETTLE[0]  # run first in a batch: the rest is read once the boot has settled
FAILED_UNITS = "systemctl list-units --failed --no-legend --plain"
HOST_KEYS = "/etc/ssh/ssh_host_*_key.pub"
PACKAGE_CACHES = "find /var/lib/apt/lists /var/cache/apt /var/cache/zypp -type f 2>/dev/null"
# modification time (seconds since the epoch) and path of everything the age tests judge
NONEMPTY_LOGS = "find /var/log -type f -size +0 -printf '%T@\\t%p\\n'"
VAR_TMP = "find /var/tmp -mindepth 1 -printf '%T@\\t%p\\n'"
HISTORY_FILES = (".bash_history", ".lesshst", ".python_history", ".viminfo")
DOT_FILES = ("/root/.*", "/home/*/.*")
RKE2_STATE = ["/etc/rancher/node", "/etc/rancher/rke2/rke2.yaml", "/var/lib/rancher/rke2/server",
              "/var/lib/rancher/rke2/agent/etc", "/var/lib/rancher/rke2/agent/containerd"]
RANDOM_SEED = "/var/lib/systemd/random-seed"


def wanted(target: dict[str, Any], clone: dict[str, Any]) -> Iterator[F.Item]:
    """What this suite reads from a clone."""
    yield from map(F.cmd, (SYSTEM_STATE, FAILED_UNITS, PACKAGE_CACHES, NONEMPTY_LOGS,
                           VAR_TMP))
    yield from map(F.glob, ("/var/lib/cloud/instances/*", "/home/*", *DOT_FILES))
    yield F.read("/proc/sys/kernel/hostname")  # what `hostname` prints
    yield from map(F.read, (CLOUD_INIT_STATUS, CLOUD_INIT_RESULT, "/proc/stat", "/etc/machine-id",
                            "/var/lib/dbus/machine-id", "/etc/ssh/ssh_host_ed25519_key.pub", "/etc/hostname",
                            "/etc/resolv.conf", "/etc/hosts", f"/home/{target['user']}/.ssh/authorized_keys",
                            "/root/.ssh/authorized_keys", "/etc/passwd"))
    yield from map(F.stat, (*CLOUD_INIT_DISABLED, "/etc/machine-id", "/var/lib/dbus/machine-id",
                            "/etc/resolv.conf", RANDOM_SEED,
                            "/etc/sudoers.d/imagefactory-build", "/root/.ssh/authorized_keys",
                            "/usr/sbin/policy-rc.d", *RKE2_STATE))
    yield F.glob(HOST_KEYS)
    yield from map(F.is_active, ("ssh", "rke2-server", "rke2-agent"))


def _names(g: F.FactStore, pattern: str) -> list[str]:
    """Base names of the paths matching `pattern` (what `ls` of the directory lists)."""
    return [p.rsplit("/", 1)[-1] for p in g.glob(pattern)]


def _made_this_boot(g: F.FactStore, path: str) -> bool:
    # A few seconds of slack for the clock settling right after boot.
    return g.file(path).mtime >= g.boot_time() - 5


def _older_than_boot(g: F.FactStore, listing: str) -> list[str]:
    """Paths from a `%T@\\t%p` listing not newer than the boot (what `! -newermt @btime-5` finds)."""
    limit = g.boot_time() - 5
    out = []
    for line in g.cmd(listing).stdout.splitlines():
        mtime, _, path = line.partition("\t")
        if path and float(mtime) <= limit:
            out.append(path)
    return out


def cloud_init_status(g: F.FactStore) -> tuple[str, list[Any]]:
    """`cloud-init status`'s verdict and errors, as cloud-init derives them from its files:
    disabled by a marker; running while status.json exists without result.json; done once any
    stage has started or finished; errors gathered over the stages (any one makes it "error")."""
    if any(g.file(p).exists for p in CLOUD_INIT_DISABLED):
        return "disabled", []
    raw = g.read(CLOUD_INIT_STATUS)
    stages = json.loads(raw).get("v1", {}) if raw is not None else {}
    errors = [e for stage in stages.values() if isinstance(stage, dict) for e in stage.get("errors") or []]
    if raw is not None and g.read(CLOUD_INIT_RESULT) is None:
        return "running", errors
    latest = max((max(s.get("start") or 0, s.get("finished") or 0)
                  for s in stages.values() if isinstance(s, dict)), default=0)
    if not latest:
        return "not run", errors
    return ("error" if errors else "done"), errors


def test_cloud_init_finished_without_errors(clone: Clone) -> None:
    _, g = clone
    status, errors = cloud_init_status(g)
    assert (status, errors) == ("done", []), (g.read(CLOUD_INIT_STATUS), g.read(CLOUD_INIT_RESULT))
    result = json.loads(g.text(CLOUD_INIT_RESULT))
    assert result["v1"]["errors"] == [], result


def test_no_failed_units(clone: Clone) -> None:
    _, g = clone
    state = g.cmd(SYSTEM_STATE).stdout.strip()
    failed = g.cmd(FAILED_UNITS).stdout.strip()
    assert failed == "", failed
    assert state == "running", state


def test_machine_id_generated_on_first_boot(clone: Clone) -> None:
    _, g = clone
    mid = g.text("/etc/machine-id").strip()
    assert len(mid) == 32 and all(c in "0123456789abcdef" for c in mid), mid
    assert _made_this_boot(g, "/etc/machine-id")


def test_dbus_machine_id_is_not_a_copy(clone: Clone) -> None:
    _, g = clone
    f = g.file("/var/lib/dbus/machine-id")
    if f.exists and not f.is_symlink:
        assert g.text("/var/lib/dbus/machine-id").strip() == g.text("/etc/machine-id").strip()


def test_ssh_host_keys_generated_on_first_boot(clone: Clone) -> None:
    _, g = clone
    keys = g.glob(HOST_KEYS)
    assert keys, "no SSH host keys"
    for key in keys:
        assert _made_this_boot(g, key), f"{key} predates this boot"


def test_clones_have_distinct_identities(clones: list[Clone]) -> None:
    if len(clones) < 2:
        pytest.skip("recipe: tests.clones is 1, no second clone to compare")
    ids = [g.text("/etc/machine-id").strip() for _, g in clones]
    keys = [g.text("/etc/ssh/ssh_host_ed25519_key.pub").split()[1] for _, g in clones]
    assert len(set(ids)) == len(ids), f"machine-ids repeat: {ids}"
    assert len(set(keys)) == len(keys), "SSH host keys repeat across clones"


def test_cloud_init_state_is_this_instance_only(clone: Clone) -> None:
    info, g = clone
    instances = _names(g, "/var/lib/cloud/instances/*")
    assert instances == [info["instance_id"]], instances


def test_hostname_from_cloud_init_not_build_host(clone: Clone, target: dict[str, Any]) -> None:
    info, g = clone
    name = g.text("/proc/sys/kernel/hostname").strip()
    assert name == info["hostname"]
    assert target["build_host"]["hostname"] not in g.text("/etc/hostname").split()


def test_resolv_conf_not_from_build_host(clone: Clone, target: dict[str, Any]) -> None:
    _, g = clone
    text = g.text("/etc/resolv.conf") if g.file("/etc/resolv.conf").exists else ""
    for ns in target["build_host"]["nameservers"]:
        assert f"nameserver {ns}" not in text, f"build host nameserver {ns} leaked"


def test_etc_hosts_is_sane(clone: Clone, target: dict[str, Any]) -> None:
    _, g = clone
    text = g.text("/etc/hosts")
    fields = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert any(f[0] == "127.0.0.1" and "localhost" in f for f in fields), text
    assert target["build_host"]["hostname"] not in text.split()


def test_no_package_caches(clone: Clone) -> None:
    _, g = clone
    leftovers = g.cmd(PACKAGE_CACHES).stdout.split()
    assert leftovers == [], leftovers


def test_logs_are_from_this_boot(clone: Clone) -> None:
    _, g = clone
    old = _older_than_boot(g, NONEMPTY_LOGS)
    assert old == [], f"log content from the build: {old}"


def test_no_shell_history(clone: Clone) -> None:
    _, g = clone
    found = [p for pattern in DOT_FILES for p in g.glob(pattern) if p.rsplit("/", 1)[-1] in HISTORY_FILES]
    assert found == [], found


def test_random_seed_not_baked(clone: Clone) -> None:
    _, g = clone
    f = g.file(RANDOM_SEED)
    assert not f.exists or _made_this_boot(g, RANDOM_SEED)


def test_no_build_keys(clone: Clone, target: dict[str, Any]) -> None:
    _, g = clone
    assert not g.file("/etc/sudoers.d/imagefactory-build").exists
    # The only key anyone may hold is the one this test run injected through cloud-init...
    user = target["user"]
    keys = g.text(f"/home/{user}/.ssh/authorized_keys").splitlines()
    assert [k for k in keys if k.strip()] == [target["public_key"]]
    # ...which cloud-init (disable_root) also gives root, wrapped so that it cannot log in.
    if g.file("/root/.ssh/authorized_keys").exists:
        for line in filter(str.strip, g.text("/root/.ssh/authorized_keys").splitlines()):
            assert line.endswith(target["public_key"]), f"unknown key for root: {line[:60]}"
            assert "Please login as the user" in line, f"usable root key: {line[:60]}"


def test_no_build_users(clone: Clone, target: dict[str, Any]) -> None:
    # Login accounts are the deployment's: only the user this boot's cloud-init created exists
    # (a Packer build VM's default user, its home and sudoers file must not survive sealing).
    _, g = clone
    users = [f.split(":")[0] for f in g.text("/etc/passwd").splitlines()
             if len(f.split(":")) > 2 and f.split(":")[2].isdigit() and 1000 <= int(f.split(":")[2]) < 60000]
    assert users == [target["user"]], users
    homes = _names(g, "/home/*")
    assert homes == [target["user"]], homes


def test_services_may_start(clone: Clone) -> None:
    _, g = clone
    assert not g.file("/usr/sbin/policy-rc.d").exists
    assert g.is_active("ssh")


def test_no_egress(clone: Clone) -> None:
    _, g = clone
    # restrict=on user networking: nothing beyond the forwarded SSH port is reachable. A live
    # probe at something that answers: a listener on this host's loopback, which user-mode
    # networking would hand the guest as 10.0.2.2:<port> without the restriction. The check
    # fails if the guest connects or the listener sees anyone.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the listener is live: reachable from here, so the probe aims at something
        listener.accept()[0].close()
        out = g.host.run(f"timeout 10 bash -c 'exec 3<>/dev/tcp/10.0.2.2/{port}' 2>&1")
        assert out.rc != 0, f"the guest reached the host's 127.0.0.1:{port} through 10.0.2.2"
        with contextlib.suppress(BlockingIOError):
            peer = listener.accept()[1]
            raise AssertionError(f"a connection from {peer} reached the host's listener")


def test_tmp_is_clean(clone: Clone) -> None:
    _, g = clone
    old = _older_than_boot(g, VAR_TMP)
    assert old == [], f"files from the build in /var/tmp: {old}"


def test_no_rke2_node_state(clone: Clone) -> None:
    _, g = clone
    assert [p for p in RKE2_STATE if g.file(p).exists] == []
    for unit in ("rke2-server", "rke2-agent"):
        assert not g.is_active(unit), f"{unit} started on a plain boot"
