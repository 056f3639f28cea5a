"""The in-guest suites (hygiene, recipe, rke2) evaluated on this host from gathered facts.

A crafted healthy pair of clones (what the fact-gathering script would answer for a good boot)
passes every test, reading nothing the suites did not declare in `wanted` (one round trip per
clone); then each check is shown to still fail: one crafted unhealthy fact at a time."""

from __future__ import annotations

import fnmatch
import inspect
import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from imagefactory.recipes import RecipeBook
from imagefactory.testing import facts as F
from imagefactory.testing.harness import DECLARED_SKIP, clone_firmwares, suite_target
from imagefactory.testing.suites import test_hygiene as H
from imagefactory.testing.suites import test_recipe as R
from imagefactory.testing.suites import test_rke2 as K
from tests.conftest import RECIPES

BOOT = 1_800_000_000  # btime of the crafted boot
NEW = BOOT + 30.5  # made this boot
OLD = BOOT - 86_400.0  # made at build time
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest imagefactory-test"
GIB = 1024**3


@dataclass
class Guest:
    """One clone as the guest script answers it: files (content + lstat), commands, the live probe."""

    files: dict[str, tuple[bytes | None, F.FileFact]] = field(default_factory=dict)
    cmds: dict[str, tuple[int, str]] = field(default_factory=dict)
    egress_rc: int = 1
    fetched: list[list[F.Item]] = field(default_factory=list)

    def put(self, path: str, text: str | None = "", *, mode: int = 0o644, user: str = "root",
            group: str = "root", mtime: float = NEW, kind: str = "file") -> None:
        data = text.encode() if text is not None and kind == "file" else None
        self.files[path] = (data, F.FileFact(
            path, True, True, kind, mode, 0, 0, user, group, len(data or b""), mtime, kind == "file",
            kind == "dir", None))

    def link(self, path: str, target: str) -> None:
        data, to = self.files.get(target, (None, F.FileFact(target)))
        self.files[path] = (data, F.FileFact(path, True, to.exists, "link", 0o777, 0, 0, "root", "root",
                                             len(target), NEW, to.is_file, to.is_directory, target))

    def text(self, path: str) -> str:
        data = self.files[path][0]
        assert data is not None
        return data.decode()

    def rm(self, path: str) -> None:
        self.files.pop(path, None)

    def set(self, path: str, **changes: Any) -> None:
        data, f = self.files[path]
        self.files[path] = (data, replace(f, **changes))

    def run(self, command: str, out: str = "", rc: int = 0) -> None:
        self.cmds[command] = (rc, out)

    def fetch(self, items: list[F.Item]) -> dict[F.Item, Any]:
        self.fetched.append(items)
        got: dict[F.Item, Any] = {}
        for kind, key in items:
            if kind == "cmd":
                rc, out = self.cmds.get(key, (127, ""))
                got[(kind, key)] = F.CmdFact(rc, out.encode(), b"" if rc != 127 else b"not found")
            elif kind == "read":
                got[(kind, key)] = self.files[key][0] if key in self.files else None
            elif kind == "file":
                got[(kind, key)] = self.files[key][1] if key in self.files else F.FileFact(key)
            else:
                found = sorted(p for p in self.files if shell_match(p, key))
                got[(kind, key)] = found
                got.update({F.stat(p): self.files[p][1] for p in found})
        return got


def shell_match(path: str, pattern: str) -> bool:
    """What the guest's glob.glob matches: component by component, dot files only by a dot."""
    parts, pats = path.split("/"), pattern.split("/")
    return len(parts) == len(pats) and all(
        fnmatch.fnmatchcase(a, b) and (not a.startswith(".") or b.startswith("."))
        for a, b in zip(parts, pats, strict=True))


class Live:
    """The live testinfra host, for the one probe that stays live."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest

    def run(self, command: str) -> Any:
        # The egress probe: the guest dials 10.0.2.2:<port>, which user-mode networking without
        # restrict=on hands to the host's 127.0.0.1:<port>. An open guest really connects there.
        m = re.search(r"/dev/tcp/10\.0\.2\.2/(\d+)", command)
        assert m, command
        if self.guest.egress_rc == 0:
            socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=5).close()
        return F.CmdFact(self.guest.egress_rc, b"", b"")


def make_target(recipe_name: str, **recipe_changes: Any) -> dict[str, Any]:
    recipe = RecipeBook(RECIPES).load(recipe_name).recipe
    clones = [{"name": f"c-{i}", "port": 2200 + i, "instance_id": f"iid-{i}", "hostname": f"node-{i}",
               "firmware": fw} for i, fw in enumerate(clone_firmwares(recipe.disk))]
    target = suite_target(recipe, "ubuntu" if recipe.os.family == "ubuntu" else "debian", "/k", PUBLIC_KEY,
                          4 * GIB, clones, Path("/nonexistent/stig-results.json"))
    target["build_host"] = {"hostname": "buildhost", "nameservers": ["192.0.2.53"]}
    target["recipe"].update(recipe_changes)
    return target


def cloud_init_status_json(*, errors: tuple[str, ...] = (), running: str | None = None) -> str:
    """/run/cloud-init/status.json as cloud-init 22-24 writes it (cloudinit/cmd/main.py status_wrapper)."""
    names = ("init-local", "init", "modules-config", "modules-final")
    stages: dict[str, dict[str, Any]] = {
        name: {"errors": [], "finished": BOOT + 20.0 + n, "recoverable_errors": {}, "start": BOOT + 10.0 + n}
        for n, name in enumerate(names)}
    stages["modules-final"]["errors"] = list(errors)
    if running:
        stages[running]["finished"] = None
    return json.dumps({"v1": {"datasource": "DataSourceNoCloud [seed=/dev/vdb]", **stages, "stage": running}})


def healthy(target: dict[str, Any], i: int) -> Guest:
    """What a good boot of clone `i` looks like to the suites."""
    info, recipe, user = target["clones"][i], target["recipe"], target["user"]
    family = recipe["os"]["family"]
    g = Guest()
    g.put(H.CLOUD_INIT_STATUS, cloud_init_status_json())
    g.put("/run/cloud-init/result.json", json.dumps({"v1": {"datasource": "NoCloud", "errors": []}}))
    g.run(H.SYSTEM_STATE, "running\n")
    g.run(H.FAILED_UNITS, "")
    g.put("/proc/stat", f"cpu  1 2 3\nbtime {BOOT}\nprocesses 9\n", mtime=0)
    g.put("/etc/machine-id", f"{i:x}" * 32 + "\n")
    g.link("/var/lib/dbus/machine-id", "/etc/machine-id")
    for kind in ("ed25519", "rsa"):
        g.put(f"/etc/ssh/ssh_host_{kind}_key.pub", f"ssh-{kind} AAAA{kind}{i} root@{info['hostname']}\n")
    g.put(f"/var/lib/cloud/instances/{info['instance_id']}", None, kind="dir")
    g.put("/proc/sys/kernel/hostname", f"{info['hostname']}\n")
    g.put("/etc/hostname", f"{info['hostname']}\n")
    g.put("/run/systemd/resolve/stub-resolv.conf", "nameserver 127.0.0.53\n")
    g.link("/etc/resolv.conf", "/run/systemd/resolve/stub-resolv.conf")
    g.put("/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {info['hostname']}\n")
    g.run(H.PACKAGE_CACHES, "", rc=1)
    g.run(H.NONEMPTY_LOGS, f"{NEW}\t/var/log/syslog\n{BOOT - 4.0}\t/var/log/cloud-init.log\n")
    g.run(H.VAR_TMP, f"{NEW}\t/var/tmp/systemd-private-x\n")
    g.put("/root/.bashrc", "# ~/.bashrc\n")
    g.put(f"/home/{user}/.profile", "# ~/.profile\n")
    g.put(H.RANDOM_SEED, None, mode=0o600)
    g.put(f"/home/{user}/.ssh/authorized_keys", f"{PUBLIC_KEY}\n", mode=0o600, user=user, group=user)
    g.put("/root/.ssh/authorized_keys", 'no-port-forwarding,command="echo \'Please login as the user '
          f'\\"{user}\\" rather than the user \\"root\\".\';echo;sleep 10;exit 142" {PUBLIC_KEY}\n')
    g.put("/etc/passwd", f"root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/:/usr/sbin/nologin\n"
          f"{user}:x:1000:1000::/home/{user}:/bin/bash\n")
    g.put(f"/home/{user}", None, kind="dir", user=user, group=user)
    g.run("systemctl is-active ssh", "active\n")
    for unit in ("rke2-server", "rke2-agent"):
        g.run(f"systemctl is-active {unit}", "inactive\n", rc=3)
    # recipe
    g.put("/proc/cmdline", f"BOOT_IMAGE=/vmlinuz root=UUID=x ro {' '.join(recipe['kernel']['cmdline'])}\n")
    for spec in recipe["files"]:
        owner, group = spec["owner"].split(":")
        g.put(spec["path"], spec["content"] or "rendered\n", mode=int(spec["mode"], 8), user=owner,
              group=group)
    for unit in recipe["services"]["enable"]:
        g.run(f"systemctl is-enabled {unit}", "enabled\n")
    for unit in recipe["services"]["disable"]:
        g.run(f"systemctl is-enabled {unit}", "disabled\n", rc=1)
    for unit in recipe["services"]["mask"]:
        g.run(f"systemctl is-enabled {unit}", "masked\n", rc=1)
    installed = [*recipe["packages"]["install"], "bash"]
    g.run(F.PACKAGES[1], "".join(f"{p}\tinstall ok installed\n" for p in installed)
          + "nano\tdeinstall ok config-files\n")
    g.run(R.DISK_SIZE, f"{5 * GIB}\n")
    g.run(R.ROOT_SIZE, f"{5 * GIB - 300 * 1024**2}\n")
    if info["firmware"] != "bios":
        g.put("/sys/firmware/efi", None, kind="dir")
        g.run(R.SECURE_BOOT_STATE, f"   6   0   0   0   {1 if info['firmware'] == 'uefi-secure' else 0}\n")
        g.run("dmesg", "[    0.000000] Linux version 5.15\n[    0.000000] secureboot: Secure boot enabled\n")
        g.put("/proc/mounts", "/dev/vda1 / ext4 rw 0 0\n/dev/vda15 /boot/efi vfat rw 0 0\n", mtime=0)
        g.put(R.ESP_LOADER, "MZ")
    timers = "enabled" if recipe["packages"]["auto_updates"] else "masked"
    flag = 1 if recipe["packages"]["auto_updates"] else 0
    g.run(R.APT_PERIODIC, f'APT::Periodic "";\nAPT::Periodic::Update-Package-Lists "{flag}";\n'
          f'APT::Periodic::Unattended-Upgrade "{flag}";\n')
    for timer in R.APT_TIMERS:
        g.run(f"systemctl is-enabled {timer}", f"{timers}\n")
    g.run("systemctl is-enabled motd-news.timer", "masked\n", rc=1)
    g.put("/etc/default/motd-news", "ENABLED=0\n")
    if family == "ubuntu":
        g.put(R.NETPLAN, "network:\n  ethernets:\n    eth0:\n      dhcp4: true\n", mode=0o600)
        g.run(R.NETWORKCTL, "* 2: eth0\n    State: routable (configured)\n  Address: 10.0.2.15\n")
        g.run("systemctl is-active systemd-resolved", "active\n")
        # rsyslog.service recompiles its own profile at every start (FORCED_RECOMPILE), which
        # also renews the directory's time
        g.run(R.APPARMOR_CACHE, "".join(f"{t}\t{AA_CACHE}{p}\n" for t, p in (
            (NEW, ""), (OLD, "/.features"), (OLD, "/1password"), (NEW, "/usr.sbin.rsyslogd"))))
    else:
        g.put(R.IFUPDOWN, "auto eth0\niface eth0 inet dhcp\n")
    g.run(R.ADDRESS, "2: eth0: <UP>\n    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\n")
    if recipe.get("rke2"):
        healthy_rke2(g, target)
    return g


def healthy_rke2(g: Guest, target: dict[str, Any]) -> None:
    prefix, rke2 = target["distro"]["rke2_prefix"], target["recipe"]["rke2"]
    for rel in K.BINARIES:
        g.put(f"{prefix}/{rel}", "#!", mode=0o755)
    for unit in K.UNITS:
        g.put(f"{prefix}/lib/systemd/system/{unit}.service", "[Unit]\n")
        g.run(f"systemctl is-enabled {unit}", "disabled\n", rc=1)
    names = [f"rke2-images-{i}.linux-{rke2['arch']}.tar.zst" for i in rke2["images"]]
    g.run(f"ls -A {K.IMAGES}", "\n".join([*names, ".cache.json"]) + "\n")
    g.put(f"{K.IMAGES}/.cache.json", "")
    config = {"profile": rke2["profile"], "write-kubeconfig-mode": "0640",
              "kubelet-arg": ["read-only-port=0"],
              "kube-apiserver-arg": ["anonymous-auth=false"], "secrets-encryption": True,
              "audit-policy-file": "/etc/rancher/rke2/audit-policy.yaml", **rke2["config"]}
    g.put(K.CONFIG, json.dumps(config), mode=0o600)
    g.put("/etc/rancher/rke2/audit-policy.yaml", "kind: Policy\n", mode=0o600)
    g.run(K.CONFIG_D, "")
    g.put(K.CIS_SYSCTL, "".join(f"{k} = {v}\n" for k, v in K.CIS_VALUES))
    for key, value in K.CIS_VALUES:
        g.run(f"sysctl -n {key}", f"{value}\n")
    g.run("getent passwd etcd", "etcd:x:999:999::/var/lib/etcd:/usr/sbin/nologin\n")
    g.run("getent group etcd", "etcd:x:999:\n")
    if target["recipe"].get("zarf"):
        binary, init = K._zarf_files(target)
        g.put(binary, "\x7fELF", mode=0o755)
        g.run(f"{binary} version", f"{target['recipe']['zarf']['version']}\n")
        g.put(init, "zst")
    g.put(K.FIRSTBOOT, "#!/bin/sh\n", mode=0o755)


# --- running the suites' tests on crafted facts -------------------------------------------------


def stores_for(target: dict[str, Any], guests: list[Guest],
               suites: list[ModuleType]) -> dict[str, F.FactStore]:
    out = {}
    for info, g in zip(target["clones"], guests, strict=True):
        store = F.FactStore(info["name"], g.fetch, Live(g))
        store.prefetch(i for m in suites for i in m.wanted(target, info))  # what conftest does
        out[info["name"]] = store
    return out


def outcome(fn: Callable[..., None], target: dict[str, Any], stores: dict[str, F.FactStore]) -> list[str]:
    """The test run as pytest would: once per clone (or once with all of them)."""
    clones = [(c, stores[c["name"]]) for c in target["clones"]]
    params = inspect.signature(fn).parameters
    runs = [{"clones": clones}] if "clones" in params else [{"clone": c} for c in clones]
    results = []
    for kwargs in runs:
        if "target" in params:
            kwargs["target"] = target
        try:
            fn(**kwargs)
            results.append("passed")
        except AssertionError:
            results.append("failed")
        except pytest.skip.Exception:
            results.append("skipped")
    return results


def suite_tests(module: ModuleType) -> list[Callable[..., None]]:
    return [f for name, f in vars(module).items() if name.startswith("test_") and callable(f)]


@pytest.mark.parametrize(("recipe", "suites"), [("ubuntu-22.04-base", [H, R]), ("debian-12-base", [H, R]),
                                               ("rke2-node", [H, R, K])])
def test_every_check_passes_on_a_healthy_boot_from_declared_facts(recipe: str,
                                                                   suites: list[ModuleType]) -> None:
    target = make_target(recipe)
    guests = [healthy(target, i) for i in range(len(target["clones"]))]
    stores = stores_for(target, guests, suites)
    for m in suites:
        for fn in suite_tests(m):
            assert set(outcome(fn, target, stores)) == {"passed"}, fn.__name__
    for store, g in zip(stores.values(), guests, strict=True):
        assert store.on_demand == [], f"read but not declared in wanted: {store.on_demand}"
        assert len(g.fetched) == 1  # one round trip per clone


Mutation = Callable[[list[Guest], dict[str, Any]], None]


def each(fn: Callable[[Guest], None]) -> Mutation:
    def mutate(guests: list[Guest], target: dict[str, Any]) -> None:
        for g in guests:
            fn(g)
    return mutate


def first(fn: Callable[[Guest], None]) -> Mutation:
    return lambda guests, target: fn(guests[0])


def second(fn: Callable[[Guest], None]) -> Mutation:
    return lambda guests, target: fn(guests[1])


def on_target(fn: Callable[[dict[str, Any]], None]) -> Mutation:
    return lambda guests, target: fn(target)


def both(*mutations: Mutation) -> Mutation:
    def mutate(guests: list[Guest], target: dict[str, Any]) -> None:
        for m in mutations:
            m(guests, target)
    return mutate


AA_CACHE = "/var/cache/apparmor/b8ec2925.0"  # shipped by the build (steps/apparmor.py)
ROOT_KEY = "/root/.ssh/authorized_keys"
SAME_KEY = "ssh-ed25519 AAAAsame root@x\n"
UNHEALTHY: list[tuple[str, Callable[..., None], Mutation]] = [
    # hygiene
    ("cloud-init errored", H.test_cloud_init_finished_without_errors,
     each(lambda g: g.put(H.CLOUD_INIT_STATUS, cloud_init_status_json(errors=("runcmd failed",))))),
    ("cloud-init still running", H.test_cloud_init_finished_without_errors,
     each(lambda g: (g.put(H.CLOUD_INIT_STATUS, cloud_init_status_json(running="modules-final")),
                     g.rm(H.CLOUD_INIT_RESULT)))),
    ("cloud-init never ran", H.test_cloud_init_finished_without_errors,
     each(lambda g: (g.rm(H.CLOUD_INIT_STATUS), g.rm(H.CLOUD_INIT_RESULT)))),
    ("cloud-init disabled", H.test_cloud_init_finished_without_errors,
     each(lambda g: g.put("/etc/cloud/cloud-init.disabled", ""))),
    ("cloud-init recorded errors", H.test_cloud_init_finished_without_errors,
     each(lambda g: g.put("/run/cloud-init/result.json", '{"v1": {"errors": ["boom"]}}'))),
    ("a unit failed", H.test_no_failed_units,
     each(lambda g: g.run(H.FAILED_UNITS, "x.service loaded failed failed X\n"))),
    ("system degraded", H.test_no_failed_units, each(lambda g: g.run(H.SYSTEM_STATE, "degraded\n", rc=1))),
    ("machine-id not an id", H.test_machine_id_generated_on_first_boot,
     each(lambda g: g.put("/etc/machine-id", "uninitialized\n"))),
    ("machine-id from the build", H.test_machine_id_generated_on_first_boot,
     each(lambda g: g.set("/etc/machine-id", mtime=OLD))),
    ("dbus machine-id a stale copy", H.test_dbus_machine_id_is_not_a_copy,
     each(lambda g: g.put("/var/lib/dbus/machine-id", "f" * 32 + "\n"))),
    ("no host keys", H.test_ssh_host_keys_generated_on_first_boot,
     each(lambda g: [g.rm(p) for p in list(g.files) if p.startswith("/etc/ssh/ssh_host_")])),
    ("host key from the build", H.test_ssh_host_keys_generated_on_first_boot,
     each(lambda g: g.set("/etc/ssh/ssh_host_rsa_key.pub", mtime=OLD))),
    ("machine-ids repeat", H.test_clones_have_distinct_identities,
     each(lambda g: g.put("/etc/machine-id", "a" * 32 + "\n"))),
    ("host keys repeat", H.test_clones_have_distinct_identities,
     each(lambda g: g.put("/etc/ssh/ssh_host_ed25519_key.pub", SAME_KEY))),
    ("another instance's state", H.test_cloud_init_state_is_this_instance_only,
     each(lambda g: g.put("/var/lib/cloud/instances/iid-build", None, kind="dir"))),
    ("wrong hostname", H.test_hostname_from_cloud_init_not_build_host,
     each(lambda g: g.put("/proc/sys/kernel/hostname", "localhost\n"))),
    ("build host's /etc/hostname", H.test_hostname_from_cloud_init_not_build_host,
     both(each(lambda g: g.put("/etc/hostname", "buildhost\n")))),
    ("build host's nameserver", H.test_resolv_conf_not_from_build_host,
     each(lambda g: g.put("/etc/resolv.conf", "nameserver 192.0.2.53\n"))),
    ("no localhost in /etc/hosts", H.test_etc_hosts_is_sane,
     each(lambda g: g.put("/etc/hosts", "10.0.0.1 x\n"))),
    ("build host in /etc/hosts", H.test_etc_hosts_is_sane,
     each(lambda g: g.put("/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 buildhost\n"))),
    ("apt lists left", H.test_no_package_caches,
     each(lambda g: g.run(H.PACKAGE_CACHES, "/var/lib/apt/lists/x_Release\n"))),
    ("build log left", H.test_logs_are_from_this_boot,
     each(lambda g: g.run(H.NONEMPTY_LOGS, f"{NEW}\t/var/log/syslog\n{BOOT - 5.0}\t/var/log/dpkg.log\n"))),
    ("root's shell history", H.test_no_shell_history, each(lambda g: g.put("/root/.bash_history", "ls\n"))),
    ("a user's python history", H.test_no_shell_history,
     each(lambda g: g.put("/home/ubuntu/.python_history", "1+1\n"))),
    ("random seed baked", H.test_random_seed_not_baked, each(lambda g: g.set(H.RANDOM_SEED, mtime=OLD))),
    ("build sudoers left", H.test_no_build_keys, each(lambda g: g.put("/etc/sudoers.d/imagefactory-build"))),
    ("a build key for the user", H.test_no_build_keys,
     lambda guests, t: [g.put(f"/home/{t['user']}/.ssh/authorized_keys", f"{PUBLIC_KEY}\nssh-rsa AAAAbuild\n")
                        for g in guests]),
    ("another key for root", H.test_no_build_keys,
     each(lambda g: g.put(ROOT_KEY, 'command="echo Please login as the user" ssh-rsa AAAAbuild\n'))),
    ("a usable root key", H.test_no_build_keys, each(lambda g: g.put(ROOT_KEY, f"{PUBLIC_KEY}\n"))),
    ("a build user", H.test_no_build_users,
     each(lambda g: g.put("/etc/passwd", g.text("/etc/passwd") + "packer:x:1001:1001::/:/bin/sh\n"))),
    ("a build user's home", H.test_no_build_users,
     each(lambda g: g.put("/home/packer", None, kind="dir"))),
    ("policy-rc.d left", H.test_services_may_start,
     each(lambda g: g.put("/usr/sbin/policy-rc.d", "exit 101\n"))),
    ("sshd not running", H.test_services_may_start,
     each(lambda g: g.run("systemctl is-active ssh", "failed\n", rc=3))),
    ("egress", H.test_no_egress, each(lambda g: setattr(g, "egress_rc", 0))),
    ("build files in /var/tmp", H.test_tmp_is_clean,
     each(lambda g: g.run(H.VAR_TMP, f"{OLD}\t/var/tmp/build\n"))),
    ("rke2 node state", H.test_no_rke2_node_state,
     each(lambda g: g.put("/etc/rancher/node", None, kind="dir"))),
    ("rke2 started", H.test_no_rke2_node_state,
     each(lambda g: g.run("systemctl is-active rke2-agent", "active\n"))),
    # recipe
    ("kernel argument missing", R.test_kernel_cmdline,
     each(lambda g: g.put("/proc/cmdline", "root=UUID=x ro console=tty0\n"))),
    ("file missing", R.test_files, each(lambda g: g.rm("/etc/motd"))),
    ("file mode", R.test_files, each(lambda g: g.set("/etc/motd", mode=0o666))),
    ("file owner", R.test_files, each(lambda g: g.set("/etc/motd", user="ubuntu"))),
    ("file content", R.test_files,
     both(on_target(lambda t: t["recipe"]["files"][0].update(content="Authorized use only\n")),
          each(lambda g: g.put("/etc/motd", "Welcome\n")))),
    ("service not enabled", R.test_services,
     each(lambda g: g.run("systemctl is-enabled ssh", "disabled\n", rc=1))),
    ("service not disabled", R.test_services,
     both(on_target(lambda t: t["recipe"]["services"]["disable"].append("cron")),
          each(lambda g: g.run("systemctl is-enabled cron", "enabled\n")))),
    ("service not masked", R.test_services,
     both(on_target(lambda t: t["recipe"]["services"]["mask"].append("cron")),
          each(lambda g: g.run("systemctl is-enabled cron", "disabled\n", rc=1)))),
    ("package missing", R.test_packages,
     each(lambda g: g.run(F.PACKAGES[1], "less\tdeinstall ok config-files\n"
                                         "qemu-guest-agent\tinstall ok installed\n"))),
    ("package not removed", R.test_packages,
     both(on_target(lambda t: t["recipe"]["packages"]["remove"].append("bash")))),
    ("disk not larger", R.test_root_filesystem_grew_to_disk,
     each(lambda g: g.run(R.DISK_SIZE, f"{4 * GIB}\n"))),
    ("root not grown", R.test_root_filesystem_grew_to_disk,
     each(lambda g: g.run(R.ROOT_SIZE, f"{3 * GIB}\n"))),
    ("BIOS clone booted UEFI", R.test_booted_on_the_declared_firmware,
     first(lambda g: g.put("/sys/firmware/efi", None, kind="dir"))),
    ("Secure Boot off", R.test_booted_on_the_declared_firmware,
     second(lambda g: g.run(R.SECURE_BOOT_STATE, "   6   0   0   0   0\n"))),
    ("kernel disagrees", R.test_booted_on_the_declared_firmware, second(lambda g: g.run("dmesg", "Linux\n"))),
    ("ESP not mounted", R.test_booted_on_the_declared_firmware,
     second(lambda g: g.put("/proc/mounts", "/dev/vda1 / ext4 rw 0 0\n"))),
    ("no loader on the ESP", R.test_booted_on_the_declared_firmware, second(lambda g: g.rm(R.ESP_LOADER))),
    ("apt periodic on", R.test_apt_periodic_jobs_as_the_recipe_says,
     each(lambda g: g.run(R.APT_PERIODIC, 'APT::Periodic::Update-Package-Lists "1";\n'
                                          'APT::Periodic::Unattended-Upgrade "0";\n'))),
    ("apt timer on", R.test_apt_periodic_jobs_as_the_recipe_says,
     each(lambda g: g.run("systemctl is-enabled apt-daily.timer", "enabled\n"))),
    ("snapd", R.test_nothing_phones_home,
     each(lambda g: g.run(F.PACKAGES[1], g.cmds[F.PACKAGES[1]][1] + "snapd\tinstall ok installed\n"))),
    ("motd news timer", R.test_nothing_phones_home,
     each(lambda g: g.run("systemctl is-enabled motd-news.timer", "enabled\n"))),
    ("motd news on", R.test_nothing_phones_home,
     each(lambda g: g.put("/etc/default/motd-news", "ENABLED=1\n"))),
    ("AppArmor recompiled a profile at boot", R.test_apparmor_policy_loaded_from_the_shipped_cache,
     each(lambda g: g.run(R.APPARMOR_CACHE, g.cmds[R.APPARMOR_CACHE][1] + f"{NEW}\t{AA_CACHE}/1password\n"))),
    ("AppArmor compiled for other kernel features", R.test_apparmor_policy_loaded_from_the_shipped_cache,
     second(lambda g: g.run(R.APPARMOR_CACHE, g.cmds[R.APPARMOR_CACHE][1] + "".join(
         f"{NEW}\t/var/cache/apparmor/0a1b2c3d.0{p}\n" for p in ("", "/.features", "/rsyslogd"))))),
    ("netplan without eth0", R.test_network_rendered_by_cloud_init,
     each(lambda g: g.put(R.NETPLAN, "network: {}\n"))),
    ("eth0 not configured", R.test_network_rendered_by_cloud_init,
     each(lambda g: g.run(R.NETWORKCTL, "State: off (unmanaged)\n"))),
    ("resolved down", R.test_network_rendered_by_cloud_init,
     each(lambda g: g.run("systemctl is-active systemd-resolved", "inactive\n", rc=3))),
    ("no address", R.test_network_rendered_by_cloud_init,
     each(lambda g: g.run(R.ADDRESS, "2: eth0: <DOWN>\n"))),
]
UNHEALTHY_DEBIAN: list[tuple[str, Callable[..., None], Mutation]] = [
    ("ifupdown config without eth0", R.test_network_rendered_by_cloud_init,
     each(lambda g: g.put(R.IFUPDOWN, "auto lo\n"))),
]
PREFIX = "/usr/local"
UNHEALTHY_RKE2: list[tuple[str, Callable[..., None], Mutation]] = [
    ("rke2 binary missing", K.test_rke2_installed_by_install_sh,
     each(lambda g: g.rm(f"{PREFIX}/bin/rke2-killall.sh"))),
    ("rke2 not executable", K.test_rke2_installed_by_install_sh,
     each(lambda g: g.set(f"{PREFIX}/bin/rke2", mode=0o644))),
    ("unit file missing", K.test_rke2_installed_by_install_sh,
     each(lambda g: g.rm(f"{PREFIX}/lib/systemd/system/rke2-agent.service"))),
    ("rke2 enabled", K.test_units_installed_but_disabled_and_not_running,
     each(lambda g: g.run("systemctl is-enabled rke2-server", "enabled\n"))),
    ("rke2 running", K.test_units_installed_but_disabled_and_not_running,
     each(lambda g: g.run("systemctl is-active rke2-server", "active\n"))),
    ("a pull list", K.test_image_tarballs_and_empty_cache,
     each(lambda g: g.run(f"ls -A {K.IMAGES}", g.cmds[f"ls -A {K.IMAGES}"][1] + "rke2-images.txt\n"))),
    ("image cache filled", K.test_image_tarballs_and_empty_cache,
     each(lambda g: g.put(f"{K.IMAGES}/.cache.json", "{}"))),
    ("config readable", K.test_static_config, each(lambda g: g.set(K.CONFIG, mode=0o644))),
    ("config without the profile", K.test_static_config,
     each(lambda g: g.put(K.CONFIG, g.text(K.CONFIG).replace('"cis"', '"none"'), mode=0o600))),
    ("config with a token", K.test_static_config,
     each(lambda g: g.put(K.CONFIG, g.text(K.CONFIG).replace("{", '{"token": "t", ', 1), mode=0o600))),
    ("audit policy missing", K.test_static_config,
     each(lambda g: g.rm("/etc/rancher/rke2/audit-policy.yaml"))),
    ("config.yaml.d not empty", K.test_static_config, each(lambda g: g.run(K.CONFIG_D, "90-x.yaml\n"))),
    ("CIS sysctl file missing a key", K.test_cis_prerequisites,
     each(lambda g: g.put(K.CIS_SYSCTL, "vm.panic_on_oom = 0\n"))),
    ("CIS sysctl not applied", K.test_cis_prerequisites,
     each(lambda g: g.run("sysctl -n kernel.panic", "0\n"))),
    ("etcd user can log in", K.test_cis_prerequisites,
     each(lambda g: g.run("getent passwd etcd", "etcd:x:999:999::/var/lib/etcd:/bin/bash\n"))),
    ("etcd group missing", K.test_cis_prerequisites, each(lambda g: g.run("getent group etcd", "", rc=2))),
    ("zarf not executable", K.test_zarf_beside_its_init_package,
     lambda guests, t: [g.set(K._zarf_files(t)[0], mode=0o644) for g in guests]),
    ("zarf version", K.test_zarf_beside_its_init_package,
     lambda guests, t: [g.run(f"{K._zarf_files(t)[0]} version", "v0.1.0\n") for g in guests]),
    ("zarf init package missing", K.test_zarf_beside_its_init_package,
     lambda guests, t: [g.rm(K._zarf_files(t)[1]) for g in guests]),
    ("first-boot helper missing", K.test_firstboot_helper_baked, each(lambda g: g.rm(K.FIRSTBOOT))),
    ("first boot already done", K.test_firstboot_helper_baked, each(lambda g: g.put(K.FIRSTBOOT_DONE))),
]


def _cases() -> list[Any]:
    sets = (("ubuntu-22.04-base", [H, R], UNHEALTHY), ("debian-12-base", [H, R], UNHEALTHY_DEBIAN),
            ("rke2-node", [H, R, K], UNHEALTHY_RKE2))
    return [pytest.param(recipe, suites, fn, mutate, id=f"{fn.__name__}: {why}")
            for recipe, suites, cases in sets for why, fn, mutate in cases]


@pytest.mark.parametrize(("recipe", "suites", "fn", "mutate"), _cases())
def test_each_check_fails_on_unhealthy_facts(recipe: str, suites: list[ModuleType], fn: Callable[..., None],
                                              mutate: Mutation) -> None:
    target = make_target(recipe)
    guests = [healthy(target, i) for i in range(len(target["clones"]))]
    assert set(outcome(fn, target, stores_for(target, guests, suites))) == {"passed"}
    mutate(guests, target)
    assert "failed" in outcome(fn, target, stores_for(target, guests, suites))


def test_every_suite_test_has_an_unhealthy_case() -> None:
    covered = {fn.__name__ for _, fn, _ in [*UNHEALTHY, *UNHEALTHY_DEBIAN, *UNHEALTHY_RKE2]}
    assert {f.__name__ for m in (H, R, K) for f in suite_tests(m)} <= covered


def test_one_clone_skips_only_the_identity_comparison_as_declared() -> None:
    """A recipe with `tests.clones: 1` (the rke2-node boot test in CI): the comparison across clones
    is skipped with a reason the harness counts as the recipe's own; every other check runs."""
    target = make_target("ubuntu-22.04-base")
    target["clones"] = target["clones"][:1]
    guests = [healthy(target, 0)]
    stores = stores_for(target, guests, [H, R])
    outcomes = {fn.__name__: outcome(fn, target, stores) for m in (H, R) for fn in suite_tests(m)}
    assert outcomes.pop("test_clones_have_distinct_identities") == ["skipped"]
    assert {o for got in outcomes.values() for o in got} == {"passed"}
    with pytest.raises(pytest.skip.Exception, match=f"^{DECLARED_SKIP}"):
        only = target["clones"][0]
        H.test_clones_have_distinct_identities(clones=[(only, stores[only["name"]])])
