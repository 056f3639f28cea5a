"""Sealing: golden-image hygiene. Each seal step has a matching check, run right after sealing
(on the root) and mirrored by the booted `hygiene` suite (testing/suites/test_hygiene.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..chroot import POLICY_RC_D
from ..fsutil import in_root

HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\t\tlocalhost ip6-localhost ip6-loopback\n"
    "ff02::1\t\tip6-allnodes\n"
    "ff02::2\t\tip6-allrouters\n"
)
HISTORY_FILES = (".bash_history", ".lesshst", ".python_history", ".viminfo", ".wget-hsts")


def at(root: Path, rel: str) -> Path:
    """`rel` inside the image root: its directories resolved as the image sees its own links
    (`fsutil.resolve_in_root`: an absolute link restarts at the root, `..` stops there), so a
    link such as `/var/log -> /var/log` in a downloaded cloud image never reaches the build
    host's files. The last component is not followed: unlinking a link removes the link."""
    return in_root(root, rel)


def _homes(root: Path) -> list[Path]:
    homes = [at(root, "root")]
    if at(root, "home").is_dir() and not at(root, "home").is_symlink():
        homes += [p for p in sorted(at(root, "home").iterdir()) if p.is_dir()]
    return [h for h in homes if not h.is_symlink()]  # a linked home is never walked into


def _empty_dir(path: Path) -> None:
    if not path.is_dir() or path.is_symlink():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _files(path: Path) -> list[Path]:
    if path.is_symlink() or not path.is_dir():  # a linked directory is one entry, never walked
        return [path] if path.exists() or path.is_symlink() else []
    return [p for p in path.rglob("*") if not p.is_dir() or p.is_symlink()]


# --- machine identity ---------------------------------------------------------------------


def seal_machine_id(root: Path, caches: tuple[str, ...]) -> None:
    # Empty (not missing): systemd then generates a new id on first boot and treats the boot
    # as a first boot (ConditionFirstBoot).
    at(root, "etc/machine-id").write_text("")
    at(root, "var/lib/dbus/machine-id").unlink(missing_ok=True)


def check_machine_id(root: Path, caches: tuple[str, ...]) -> list[str]:
    out = []
    mid = at(root, "etc/machine-id")
    if not mid.is_file() or mid.read_text().strip():
        out.append("/etc/machine-id must exist and be empty")
    dbus = at(root, "var/lib/dbus/machine-id")
    if dbus.exists() or dbus.is_symlink():
        out.append("/var/lib/dbus/machine-id must not exist")
    return out


def seal_ssh_host_keys(root: Path, caches: tuple[str, ...]) -> None:
    for key in at(root, "etc/ssh").glob("ssh_host_*"):
        key.unlink()


def check_ssh_host_keys(root: Path, caches: tuple[str, ...]) -> list[str]:
    return [f"SSH host key baked in: /{k.relative_to(root)}" for k in at(root, "etc/ssh").glob("ssh_host_*")]


def seal_cloud_init(root: Path, caches: tuple[str, ...]) -> None:
    _empty_dir(at(root, "var/lib/cloud"))
    _empty_dir(at(root, "run/cloud-init"))
    for log in at(root, "var/log").glob("cloud-init*"):
        log.unlink()


def check_cloud_init(root: Path, caches: tuple[str, ...]) -> list[str]:
    out = [f"cloud-init state left: /{p.relative_to(root)}" for p in _files(at(root, "var/lib/cloud"))]
    out += [f"cloud-init log left: /{p.relative_to(root)}" for p in at(root, "var/log").glob("cloud-init*")]
    return out


# --- host leaks -----------------------------------------------------------------------------


def seal_hostname(root: Path, caches: tuple[str, ...]) -> None:
    # cloud-init sets the real name from meta-data on first boot.
    at(root, "etc/hostname").write_text("localhost\n")


def check_hostname(root: Path, caches: tuple[str, ...]) -> list[str]:
    p = at(root, "etc/hostname")
    name = p.read_text().strip() if p.is_file() else ""
    return [] if name == "localhost" else [f"/etc/hostname is '{name}', expected 'localhost'"]


def seal_resolv_conf(root: Path, caches: tuple[str, ...]) -> None:
    p = at(root, "etc/resolv.conf")
    # A symlink (systemd-resolved, resolvconf) is the distro's design; a file is the host's.
    if p.is_file() and not p.is_symlink():
        p.unlink()


def check_resolv_conf(root: Path, caches: tuple[str, ...]) -> list[str]:
    p = at(root, "etc/resolv.conf")
    if p.is_symlink() or not p.exists():
        return []
    return ["/etc/resolv.conf is a file (the build host's); it must be absent or a symlink"]


def seal_hosts(root: Path, caches: tuple[str, ...]) -> None:
    at(root, "etc/hosts").write_text(HOSTS)


def check_hosts(root: Path, caches: tuple[str, ...]) -> list[str]:
    p = at(root, "etc/hosts")
    text = p.read_text() if p.is_file() else ""
    lines = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    ok = any(f[0] == "127.0.0.1" and "localhost" in f[1:] for f in lines) and any(
        f[0] == "::1" and "localhost" in f[1:] for f in lines
    )
    names = {n for f in lines for n in f[1:]}
    extra = names - {"localhost", "ip6-localhost", "ip6-loopback", "ip6-allnodes", "ip6-allrouters"}
    out = [] if ok else ["/etc/hosts lacks 127.0.0.1/::1 localhost entries"]
    return out + [f"/etc/hosts names a host: {n}" for n in sorted(extra)]


# --- caches, logs, history, keys ---------------------------------------------------------------


def seal_package_caches(root: Path, caches: tuple[str, ...]) -> None:
    for rel in caches:
        p = at(root, rel)
        if p.is_dir():
            _empty_dir(p)
        elif p.exists():
            p.unlink()


def check_package_caches(root: Path, caches: tuple[str, ...]) -> list[str]:
    return [f"package cache left: /{f.relative_to(root)}" for rel in caches for f in _files(at(root, rel))]


def seal_logs(root: Path, caches: tuple[str, ...]) -> None:
    for f in _files(at(root, "var/log")):
        if f.is_symlink():
            continue
        if f.suffix in (".gz", ".xz", ".old") or f.name[-2:] in (".1", ".2", ".3"):
            f.unlink()  # rotated: no value in a new image
        else:
            os.truncate(f, 0)  # keep the file: some daemons need it to exist with its owner


def check_logs(root: Path, caches: tuple[str, ...]) -> list[str]:
    return [
        f"log not empty: /{f.relative_to(root)}"
        for f in _files(at(root, "var/log"))
        if not f.is_symlink() and f.stat().st_size > 0
    ]


def seal_shell_history(root: Path, caches: tuple[str, ...]) -> None:
    for home in _homes(root):
        for name in HISTORY_FILES:
            (home / name).unlink(missing_ok=True)


def check_shell_history(root: Path, caches: tuple[str, ...]) -> list[str]:
    return [
        f"shell history left: /{(home / n).relative_to(root)}"
        for home in _homes(root)
        for n in HISTORY_FILES
        if (home / n).exists()
    ]


def seal_random_seed(root: Path, caches: tuple[str, ...]) -> None:
    at(root, "var/lib/systemd/random-seed").unlink(missing_ok=True)
    at(root, "var/lib/urandom/random-seed").unlink(missing_ok=True)


def check_random_seed(root: Path, caches: tuple[str, ...]) -> list[str]:
    return [
        f"random seed baked in: /{rel}"
        for rel in ("var/lib/systemd/random-seed", "var/lib/urandom/random-seed")
        if at(root, rel).exists()
    ]


def _key_files(root: Path) -> list[Path]:
    found = []
    for home in _homes(root):
        ssh = home / ".ssh"
        if ssh.is_dir():
            found += [p for p in ssh.iterdir() if p.name == "authorized_keys" or p.name.startswith("id_")]
    return found


def seal_build_keys(root: Path, caches: tuple[str, ...]) -> None:
    for p in _key_files(root):
        p.unlink()
    at(root, "etc/sudoers.d/imagefactory-build").unlink(missing_ok=True)


def check_build_keys(root: Path, caches: tuple[str, ...]) -> list[str]:
    out = [f"build key left: /{p.relative_to(root)}" for p in _key_files(root)]
    if at(root, "etc/sudoers.d/imagefactory-build").exists():
        out.append("build sudoers rule left: /etc/sudoers.d/imagefactory-build")
    return out


def seal_policy_rc_d(root: Path, caches: tuple[str, ...]) -> None:
    at(root, POLICY_RC_D).unlink(missing_ok=True)


def check_policy_rc_d(root: Path, caches: tuple[str, ...]) -> list[str]:
    return [f"/{POLICY_RC_D} left: services would never start"] if at(root, POLICY_RC_D).exists() else []


def seal_tmp(root: Path, caches: tuple[str, ...]) -> None:
    _empty_dir(at(root, "tmp"))
    _empty_dir(at(root, "var/tmp"))


def check_tmp(root: Path, caches: tuple[str, ...]) -> list[str]:
    found = [p for d in ("tmp", "var/tmp") for p in _files(at(root, d))]
    return [f"temporary file left: /{p.relative_to(root)}" for p in found]


# RKE2 node state (reference: "what a golden image must not contain"): a clone carrying any of
# it is rejected by the server (node password), or forms its own cluster (server datastore).
RKE2_NODE_STATE = (
    "etc/rancher/node",
    "etc/rancher/rke2/rke2.yaml",
    "var/lib/rancher/rke2/server",
    "var/lib/rancher/rke2/agent/etc",
    "var/lib/rancher/rke2/agent/containerd",
    "var/lib/rancher/rke2/agent/pod-manifests",
    "var/lib/rancher/rke2/bin",
)
RKE2_AGENT = "var/lib/rancher/rke2/agent"
RKE2_CACHE = "var/lib/rancher/rke2/agent/images/.cache.json"


def _rke2_state(root: Path) -> list[Path]:
    found = [at(root, rel) for rel in RKE2_NODE_STATE if at(root, rel).exists()]
    agent = at(root, RKE2_AGENT)
    if agent.is_dir():
        found += [p for p in agent.iterdir() if p.suffix in (".crt", ".key", ".kubeconfig")]
    joins = at(root, "etc/rancher/rke2/config.yaml.d")
    if joins.is_dir():
        found += list(joins.iterdir())
    return found


def seal_rke2_node_state(root: Path, caches: tuple[str, ...]) -> None:
    for p in _rke2_state(root):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    cache = at(root, RKE2_CACHE)
    if cache.exists():
        cache.write_bytes(b"")


def check_rke2_node_state(root: Path, caches: tuple[str, ...]) -> list[str]:
    out = [f"RKE2 node state baked in: /{p.relative_to(root)}" for p in _rke2_state(root)]
    cache = at(root, RKE2_CACHE)
    if cache.exists() and cache.stat().st_size:
        out.append(f"/{RKE2_CACHE} is not empty (written by a run)")
    return out


# Login users a build VM created (cloud-init's default user in the Packer builder, with the
# build's SSH key and a NOPASSWD sudoers file): the deployment's cloud-init creates its own.
LOGIN_UIDS = range(1000, 60000)
CLOUD_INIT_SUDOERS = "etc/sudoers.d/90-cloud-init-users"


def _login_users(root: Path) -> list[tuple[str, str]]:
    """(name, home) of regular login accounts in the image's passwd."""
    out = []
    passwd = at(root, "etc/passwd")
    for line in (passwd.read_text().splitlines() if passwd.is_file() else []):
        f = line.split(":")
        if len(f) >= 6 and f[2].isdigit() and int(f[2]) in LOGIN_UIDS:
            out.append((f[0], f[5]))
    return out


def _authorized_keys(root: Path) -> list[Path]:
    return [h / ".ssh" / n for h in _homes(root) for n in ("authorized_keys", "authorized_keys2")
            if (h / ".ssh" / n).exists()]


def seal_build_users(root: Path, caches: tuple[str, ...]) -> None:
    users = dict(_login_users(root))
    if users:
        for name in ("passwd", "shadow"):
            f = at(root, "etc") / name
            if f.is_file():
                keep = [ln for ln in f.read_text().splitlines(keepends=True) if ln.split(":")[0] not in users]
                f.write_text("".join(keep))
        for name in ("group", "gshadow"):
            f = at(root, "etc") / name
            if not f.is_file():
                continue
            lines = []
            for ln in f.read_text().splitlines():
                parts = ln.split(":")
                if parts[0] in users:  # the user's private group
                    continue
                if len(parts) >= 4:
                    parts[-1] = ",".join(m for m in parts[-1].split(",") if m and m not in users)
                lines.append(":".join(parts))
            f.write_text("".join(ln + "\n" for ln in lines))
        for home in users.values():
            h = at(root, home)
            if home.startswith("/home/") and h.is_dir() and not h.is_symlink():
                shutil.rmtree(h)
    at(root, CLOUD_INIT_SUDOERS).unlink(missing_ok=True)
    for key in _authorized_keys(root):
        key.unlink()


def check_build_users(root: Path, caches: tuple[str, ...]) -> list[str]:
    out = [f"login user left from the build: {name}" for name, _ in _login_users(root)]
    if at(root, CLOUD_INIT_SUDOERS).exists():
        out.append(f"/{CLOUD_INIT_SUDOERS} left from the build")
    out += [f"SSH authorized keys baked in: /{p.relative_to(root)}" for p in _authorized_keys(root)]
    return out


@dataclass(frozen=True)
class SealStep:
    name: str
    apply: Callable[[Path, tuple[str, ...]], None]
    check: Callable[[Path, tuple[str, ...]], list[str]]


SEAL_STEPS: tuple[SealStep, ...] = (
    SealStep("machine-id", seal_machine_id, check_machine_id),
    SealStep("ssh-host-keys", seal_ssh_host_keys, check_ssh_host_keys),
    SealStep("cloud-init", seal_cloud_init, check_cloud_init),
    SealStep("hostname", seal_hostname, check_hostname),
    SealStep("resolv-conf", seal_resolv_conf, check_resolv_conf),
    SealStep("hosts", seal_hosts, check_hosts),
    SealStep("package-caches", seal_package_caches, check_package_caches),
    SealStep("logs", seal_logs, check_logs),
    SealStep("shell-history", seal_shell_history, check_shell_history),
    SealStep("random-seed", seal_random_seed, check_random_seed),
    SealStep("build-keys", seal_build_keys, check_build_keys),
    SealStep("policy-rc-d", seal_policy_rc_d, check_policy_rc_d),
    SealStep("tmp", seal_tmp, check_tmp),
    SealStep("rke2-node-state", seal_rke2_node_state, check_rke2_node_state),
    SealStep("build-users", seal_build_users, check_build_users),
)


def seal(root: Path, caches: tuple[str, ...]) -> None:
    for step in SEAL_STEPS:
        step.apply(root, caches)


def check(root: Path, caches: tuple[str, ...]) -> list[str]:
    """Every hygiene problem left in `root` (empty when sealed)."""
    return [problem for step in SEAL_STEPS for problem in step.check(root, caches)]
