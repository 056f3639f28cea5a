"""The RKE2/Zarf stand-ins behave like the contract in shared/reference/rke2-zarf-airgap.md."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagefactory.steps.rke2 import STIG_CONFIG
from tests.standins import k8s_flags
from tests.standins.mirror import ReleaseMirror, disk_path, upstream_bases
from tests.standins.release import (
    CIS_SYSCTLS,
    Rke2Release,
    ZarfRelease,
    cosign_key_pair,
    make_rke2_release,
    make_zarf_package,
    make_zarf_release,
    rke2_script,
    tamper_zarf_yaml,
    version_dirname,
)

VERSION = "v1.31.4+rke2r1"
SUFFIX = "linux-amd64"

# zstd (ci/debian-packages.txt) builds the stand-in archives; without it these tests fail loudly.


@pytest.fixture(scope="module")
def release_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("releases")


@pytest.fixture(scope="module")
def rke2(release_root: Path) -> Rke2Release:
    return make_rke2_release(release_root)


@pytest.fixture(scope="module")
def zarf(release_root: Path) -> ZarfRelease:
    return make_zarf_release(release_root)


def base_env(**extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}
    env.update(extra)
    return env


def run(
    cmd: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def zst_members(path: Path) -> dict[str, bytes]:
    raw = subprocess.run(["zstd", "-dcq", str(path)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {
            m.name: (tar.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


# --- release layout ------------------------------------------------------------------------------------


def test_rke2_release_layout(rke2: Rke2Release, release_root: Path) -> None:
    d = release_root / "rancher/rke2/releases/download/v1.31.4%2Brke2r1"
    assert rke2.directory == d
    assert rke2.install_sh == release_root / "rancher/rke2/v1.31.4%2Brke2r1/install.sh"
    assert os.access(rke2.install_sh, os.X_OK)
    expected = {
        f"rke2.{SUFFIX}.tar.gz",
        f"rke2.{SUFFIX}",
        f"rke2-images.{SUFFIX}.tar.zst",
        f"rke2-images.{SUFFIX}.txt",
        "sha256sum-amd64.txt",
    }
    for name in ("core", "canal", "calico", "cilium", "multus"):
        expected |= {f"rke2-images-{name}.{SUFFIX}.tar.zst", f"rke2-images-{name}.{SUFFIX}.txt"}
    assert {p.name for p in d.iterdir()} == expected
    assert set(rke2.sha256) == expected
    assert rke2.images == ("core", "canal", "calico", "cilium", "multus")
    assert os.access(d / f"rke2.{SUFFIX}", os.X_OK)


def test_sums_file_matches_every_asset(rke2: Rke2Release, zarf: ZarfRelease) -> None:
    for directory, sums_name, sha in (
        (rke2.directory, "sha256sum-amd64.txt", rke2.sha256),
        (zarf.directory, "checksums.txt", zarf.sha256),
    ):
        listed = {}
        for line in (directory / sums_name).read_text().splitlines():
            m = re.fullmatch(r"([0-9a-f]{64})  (\S+)", line)
            assert m, line
            listed[m.group(2)] = m.group(1)
        assert set(listed) == {p.name for p in directory.iterdir()} - {sums_name}
        for name, digest in listed.items():
            assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == digest == sha[name]
        assert hashlib.sha256((directory / sums_name).read_bytes()).hexdigest() == sha[sums_name]
        check = run(["sha256sum", "-c", "--quiet", sums_name], base_env(), cwd=directory)
        assert check.returncode == 0, check.stdout + check.stderr


def test_release_is_deterministic(rke2: Rke2Release, tmp_path: Path) -> None:
    again = make_rke2_release(tmp_path)
    assert again.sha256 == rke2.sha256


def test_bundle_contents(rke2: Rke2Release) -> None:
    with tarfile.open(rke2.directory / f"rke2.{SUFFIX}.tar.gz", "r:gz") as tar:
        files = {m.name: m for m in tar.getmembers() if m.isfile()}
        assert set(files) == {
            "bin/rke2",
            "bin/rke2-killall.sh",
            "bin/rke2-uninstall.sh",
            "lib/systemd/system/rke2-server.service",
            "lib/systemd/system/rke2-server.env",
            "lib/systemd/system/rke2-agent.service",
            "lib/systemd/system/rke2-agent.env",
            "share/rke2/LICENSE.txt",
            "share/rke2/rke2-cis-sysctl.conf",
        }
        assert files["bin/rke2"].mode == 0o755
        read = {n: tar.extractfile(m).read().decode() for n, m in files.items()}  # type: ignore[union-attr]
    assert read["bin/rke2"] == (rke2.directory / f"rke2.{SUFFIX}").read_text()
    sysctl = dict(line.split("=") for line in read["share/rke2/rke2-cis-sysctl.conf"].split())
    assert sysctl == CIS_SYSCTLS
    for role, other in (("server", "agent"), ("agent", "server")):
        unit = read[f"lib/systemd/system/rke2-{role}.service"]
        for line in (
            "Type=notify",
            "TimeoutStartSec=0",
            f"ExecStart=/usr/local/bin/rke2 {role}",
            f"EnvironmentFile=-/usr/local/lib/systemd/system/rke2-{role}.env",
            "KillMode=process",
            "Delegate=yes",
            "Restart=always",
            "WantedBy=multi-user.target",
            "ExecStartPre=/bin/sh -xc '! /usr/bin/systemctl is-enabled --quiet nm-cloud-setup.service'",
        ):
            assert line in unit.splitlines(), (role, line)
        cond = [x for x in unit.splitlines() if x.startswith("ExecCondition=")]
        assert len(cond) == 1 and f"is-active --quiet rke2-{other}.service" in cond[0]


def test_image_archives_and_lists(rke2: Rke2Release) -> None:
    d = rke2.directory
    pattern = re.compile(r"docker\.io/rancher/[a-z0-9-]+:[A-Za-z0-9._-]+")
    full = (d / f"rke2-images.{SUFFIX}.txt").read_text().split()
    assert "docker.io/rancher/rke2-runtime:v1.31.4-rke2r1" in full
    assert any(i.startswith("docker.io/rancher/hardened-calico:") for i in full)  # full = core + canal
    for name in ("", *(f"-{n}" for n in rke2.images)):
        images = (d / f"rke2-images{name}.{SUFFIX}.txt").read_text().split()
        assert images and all(pattern.fullmatch(i) for i in images), images
        members = zst_members(d / f"rke2-images{name}.{SUFFIX}.tar.zst")
        assert json.loads(members["manifest.json"])[0]["RepoTags"] == images
        assert (d / f"rke2-images{name}.{SUFFIX}.tar.zst").stat().st_size < 64 * 1024


def test_zarf_release(zarf: ZarfRelease, release_root: Path) -> None:
    d = release_root / "zarf-dev/zarf/releases/download/v0.84.0"
    assert zarf.directory == d
    assert zarf.binary_name == "zarf_v0.84.0_Linux_amd64"
    assert zarf.init_name == "zarf-init-amd64-v0.84.0.tar.zst"
    assert {p.name for p in d.iterdir()} == {zarf.binary_name, zarf.init_name, "checksums.txt"}
    assert os.access(d / zarf.binary_name, os.X_OK)
    zarf_yaml = zst_members(d / zarf.init_name)["zarf.yaml"].decode()
    assert "kind: ZarfInitConfig" in zarf_yaml and "version: v0.84.0" in zarf_yaml
    out = run([str(d / zarf.binary_name), "version"], base_env())
    assert (out.returncode, out.stdout) == (0, "v0.84.0\n")


# --- install.sh ----------------------------------------------------------------------------------------


def install_env(root: Path, artifacts: Path, **extra: str) -> dict[str, str]:
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    return base_env(
        INSTALL_RKE2_ARTIFACT_PATH=str(artifacts),
        INSTALL_RKE2_SKIP_RELOAD="1",
        INSTALL_RKE2_TAR_PREFIX=str(root / "usr/local"),
        INSTALL_RKE2_AGENT_IMAGES_DIR=str(root / "var/lib/rancher/rke2/agent/images"),
        INSTALL_RKE2_ARCH="amd64",
        RKE2_STANDIN_ROOT=str(root),
        **extra,
    )


def test_install_sh_offline_layout(rke2: Rke2Release, tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = run(["sh", str(rke2.install_sh)], install_env(root, rke2.directory))
    assert out.returncode == 0, out.stderr
    prefix = root / "usr/local"
    assert os.access(prefix / "bin/rke2", os.X_OK)
    assert (prefix / "bin/rke2-killall.sh").exists()
    assert (prefix / "share/rke2/rke2-cis-sysctl.conf").exists()
    # non-default prefix: units sed-edited and moved, .env files stay
    assert not list((prefix / "lib/systemd/system").glob("*.service"))
    assert (prefix / "lib/systemd/system/rke2-server.env").exists()
    server_unit = (root / "etc/systemd/system/rke2-server.service").read_text()
    assert f"ExecStart={prefix}/bin/rke2 server" in server_unit
    assert f"EnvironmentFile=-{prefix}/lib/systemd/system/rke2-server.env" in server_unit
    assert f"RKE2_TAR_PREFIX={prefix}" in (prefix / "bin/rke2-uninstall.sh").read_text()
    # images: the verified full tarball plus every rke2-images-* file, .txt pull lists included (pitfall)
    images = root / "var/lib/rancher/rke2/agent/images"
    names = {p.name for p in images.iterdir()}
    assert f"rke2-images.{SUFFIX}.tar.zst" in names
    assert f"rke2-images.{SUFFIX}.txt" not in names  # the glob needs "rke2-images-"
    for name in rke2.images:
        assert f"rke2-images-{name}.{SUFFIX}.tar.zst" in names
        assert f"rke2-images-{name}.{SUFFIX}.txt" in names
    full = images / f"rke2-images.{SUFFIX}.tar.zst"
    assert hashlib.sha256(full.read_bytes()).hexdigest() == rke2.sha256[full.name]
    assert (rke2.directory / full.name).exists()  # staged through a temp dir: the artifact stays
    assert "systemctl daemon-reload" not in out.stdout


def test_install_sh_reload_unless_skipped(rke2: Rke2Release, tmp_path: Path) -> None:
    env = install_env(tmp_path / "root", rke2.directory)
    del env["INSTALL_RKE2_SKIP_RELOAD"]
    out = run(["sh", str(rke2.install_sh)], env)
    assert out.returncode == 0, out.stderr
    assert "systemctl daemon-reload" in out.stdout


def test_install_sh_tampered_bundle(rke2: Rke2Release, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    shutil.copytree(rke2.directory, artifacts)
    bundle = artifacts / f"rke2.{SUFFIX}.tar.gz"
    with gzip.open(bundle, "ab") as f:
        f.write(b"tampered")
    root = tmp_path / "root"
    out = run(["sh", str(rke2.install_sh)], install_env(root, artifacts))
    assert out.returncode != 0
    assert "download sha256 does not match" in out.stderr
    assert not (root / "usr/local/bin/rke2").exists()


def test_install_sh_split_sets_skipped_without_full_tarball(rke2: Rke2Release, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for name in ("sha256sum-amd64.txt", f"rke2.{SUFFIX}.tar.gz", f"rke2-images-core.{SUFFIX}.tar.zst"):
        shutil.copy(rke2.directory / name, artifacts / name)
    root = tmp_path / "root"
    out = run(["sh", str(rke2.install_sh)], install_env(root, artifacts))
    assert out.returncode == 0, out.stderr
    assert (root / "usr/local/bin/rke2").exists()
    assert not (root / "var/lib/rancher/rke2/agent/images").exists()


def test_install_sh_split_sets_are_not_verified(rke2: Rke2Release, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    shutil.copytree(rke2.directory, artifacts)
    (artifacts / f"rke2-images-core.{SUFFIX}.tar.zst").write_bytes(b"garbage")
    root = tmp_path / "root"
    out = run(["sh", str(rke2.install_sh)], install_env(root, artifacts))
    assert out.returncode == 0, out.stderr
    copied = root / f"var/lib/rancher/rke2/agent/images/rke2-images-core.{SUFFIX}.tar.zst"
    assert copied.read_bytes() == b"garbage"


def test_install_sh_full_tarball_is_verified(rke2: Rke2Release, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    shutil.copytree(rke2.directory, artifacts)
    (artifacts / f"rke2-images.{SUFFIX}.tar.zst").write_bytes(b"garbage")
    out = run(["sh", str(rke2.install_sh)], install_env(tmp_path / "root", artifacts))
    assert out.returncode != 0
    assert "download sha256 does not match" in out.stderr


def test_install_sh_refuses_to_download(rke2: Rke2Release, tmp_path: Path) -> None:
    env = install_env(tmp_path / "root", rke2.directory)
    del env["INSTALL_RKE2_ARTIFACT_PATH"]
    out = run(["sh", str(rke2.install_sh)], env)
    assert out.returncode != 0
    assert "would download from the internet" in out.stderr
    out = run(["sh", str(rke2.install_sh)], install_env(tmp_path / "root", rke2.directory, ARCH="aarch64"))
    assert out.returncode == 0  # INSTALL_RKE2_ARCH wins over ARCH
    env = install_env(tmp_path / "root", rke2.directory)
    del env["INSTALL_RKE2_ARCH"]
    env["ARCH"] = "aarch64"  # upstream honours ARCH: arm64 sums file is missing here
    out = run(["sh", str(rke2.install_sh)], env)
    assert out.returncode != 0
    assert "sha256sum-arm64.txt" in out.stderr


@pytest.mark.integration
def test_install_sh_default_prefix_in_private_mount_namespace(rke2: Rke2Release, tmp_path: Path) -> None:
    """Production case (chroot-like): explicit INSTALL_RKE2_TAR_PREFIX=/usr/local, real absolute paths."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("needs root and unshare")
    usr_local = tmp_path / "usr-local"
    usr_local.mkdir()
    images = tmp_path / "images"
    script = (
        f"mount --bind {usr_local} /usr/local && "
        f"INSTALL_RKE2_TAR_PREFIX=/usr/local INSTALL_RKE2_AGENT_IMAGES_DIR={images} "
        f"INSTALL_RKE2_ARTIFACT_PATH={rke2.directory} INSTALL_RKE2_SKIP_RELOAD=1 "
        f"sh {rke2.install_sh}"
    )
    out = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], base_env())
    assert out.returncode == 0, out.stderr
    unit = (usr_local / "lib/systemd/system/rke2-server.service").read_text()
    assert "ExecStart=/usr/local/bin/rke2 server" in unit  # default prefix: no sed, no move
    assert os.access(usr_local / "bin/rke2", os.X_OK)
    assert (images / f"rke2-images.{SUFFIX}.tar.zst").exists()


# --- rke2 / kubectl stand-ins --------------------------------------------------------------------------


def node_root(
    rke2: Rke2Release, tmp_path: Path, config: str, images: bool = True, name: str = "node"
) -> Path:
    root = tmp_path / name
    with tarfile.open(rke2.directory / f"rke2.{SUFFIX}.tar.gz") as tar:
        tar.extractall(root / "usr/local", filter="data")
    (root / "etc/rancher/rke2").mkdir(parents=True)
    (root / "etc/rancher/rke2/config.yaml").write_text(config)
    if images:
        (root / "var/lib/rancher/rke2/agent/images").mkdir(parents=True)
        shutil.copy(
            rke2.directory / f"rke2-images-core.{SUFFIX}.tar.zst", root / "var/lib/rancher/rke2/agent/images"
        )
    return root


def rke2_env(root: Path, **extra: str) -> dict[str, str]:
    return base_env(RKE2_STANDIN_ROOT=str(root), RKE2_STANDIN_NO_SLEEP="1", **extra)


def kubectl(
    root: Path, *args: str, kubeconfig: str = "/etc/rancher/rke2/rke2.yaml", **env: str
) -> subprocess.CompletedProcess[str]:
    exe = root / "var/lib/rancher/rke2/bin/kubectl"
    return run([str(exe), "--kubeconfig", kubeconfig, *args], base_env(RKE2_STANDIN_ROOT=str(root), **env))


KUBELET_KUBECONFIG = "/var/lib/rancher/rke2/agent/kubelet.kubeconfig"
READY_JSONPATH = 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'
IP_JSONPATH = 'jsonpath={.status.addresses[?(@.type=="InternalIP")].address}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session, and everything in its process group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


Spawn = Callable[[list[str], dict[str, str], Path], subprocess.Popen[bytes]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start long-running stand-ins in their own process groups; all of them are stopped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as f:
            proc = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True
            )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_group(proc)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 10, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{log.read_text()}" if log else ""))
        time.sleep(0.1)


def running_pid(root: Path) -> str:
    """The PID in standin/ready, once a long-running stand-in is up ("" before)."""
    ready = root / "var/lib/rancher/rke2/standin/ready"
    parts = ready.read_text().split() if ready.exists() else []
    return parts[1] if len(parts) == 2 and parts[1].isdigit() else ""


def start_server(
    spawn: Spawn, rke2: Rke2Release, tmp_path: Path, config: str, name: str = "server", **env: str
) -> tuple[Path, subprocess.Popen[bytes], str]:
    """A stand-in rke2 server serving its supervisor on 127.0.0.1 (free port): (root, process, URL)."""
    root = node_root(rke2, tmp_path, config, name=name)
    port = free_port()
    log = tmp_path / f"{name}.log"
    proc = spawn(
        [str(root / "usr/local/bin/rke2"), "server"],
        base_env(
            RKE2_STANDIN_ROOT=str(root),
            RKE2_STANDIN_BIND="127.0.0.1",
            RKE2_STANDIN_SUPERVISOR_PORT=str(port),
            **env,
        ),
        log,
    )
    wait_for(f"{name} to be up", lambda: proc.poll() is None and running_pid(root) == str(proc.pid), log=log)
    return root, proc, f"https://127.0.0.1:{port}"


def node_token(root: Path) -> str:
    return (root / "var/lib/rancher/rke2/server/node-token").read_text().strip()


def table(out: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """`kubectl get nodes` output as {name: [status, roles, age, version, ...]}."""
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:5] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"], out.stdout
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def test_rke2_version(rke2: Rke2Release) -> None:
    out = run([str(rke2.directory / f"rke2.{SUFFIX}"), "--version"], base_env())
    assert out.returncode == 0
    assert out.stdout.splitlines()[0] == f"rke2 version {VERSION} (stand-in)"


def test_rke2_server_first_start(rke2: Rke2Release, tmp_path: Path) -> None:
    root = node_root(rke2, tmp_path, "token: s3cret\nnode-name: Node-1\n")
    d = root / "etc/rancher/rke2/config.yaml.d"
    d.mkdir()
    (d / "50-join.yaml").write_text('tls-san:\n  - 10.0.0.1\nnode-name: "node-a"  # wins\n')
    out = run([str(root / "usr/local/bin/rke2"), "server", "--debug"], rke2_env(root))
    assert out.returncode == 0, out.stderr
    standin = root / "var/lib/rancher/rke2/standin"
    assert (standin / "ready").exists()
    assert (standin / "argv.txt").read_text() == "server\n--debug\n"
    assert "tls-san:" in (standin / "config.txt").read_text()
    assert (standin / "node-name").read_text() == "node-a\n"
    kubeconfig = root / "etc/rancher/rke2/rke2.yaml"
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    assert "server: https://127.0.0.1:6443" in kubeconfig.read_text()
    token = (root / "var/lib/rancher/rke2/server/node-token").read_text().strip()
    assert re.fullmatch(r"K10[0-9a-f]{64}::server:s3cret", token)
    assert (root / "etc/rancher/node/password").exists()
    assert (standin / "images-imported.txt").read_text() == f"rke2-images-core.{SUFFIX}.tar.zst\n"

    ready = kubectl(root, "get", "node", "node-a", "-o", READY_JSONPATH)
    assert (ready.returncode, ready.stdout) == (0, "True")
    other = kubectl(root, "get", "node", "node-b", "-o", READY_JSONPATH)
    assert (other.returncode, other.stdout) == (1, "")
    assert 'Error from server (NotFound): nodes "node-b" not found' in other.stderr
    table = kubectl(root, "get", "nodes")
    assert table.returncode == 0 and "node-a" in table.stdout and "Ready" in table.stdout
    assert kubectl(root, "version", "--client").stdout.startswith(f"Client Version: {VERSION}")


def test_kubectl_refused_when_rke2_not_running(rke2: Rke2Release, tmp_path: Path) -> None:
    root = node_root(rke2, tmp_path, "node-name: n1\n")
    assert run([str(root / "usr/local/bin/rke2"), "server"], rke2_env(root)).returncode == 0
    ready = root / "var/lib/rancher/rke2/standin/ready"
    ready.write_text("another-boot -\n")  # as after a reboot
    out = kubectl(root, "get", "node", "n1", "-o", READY_JSONPATH)
    assert (out.returncode, out.stdout) == (1, "")
    assert "The connection to the server 127.0.0.1:6443 was refused" in out.stderr
    out = run(
        [str(root / "var/lib/rancher/rke2/bin/kubectl"), "--kubeconfig", "/nope", "get", "nodes"],
        base_env(RKE2_STANDIN_ROOT=str(root)),
    )
    assert out.returncode == 1 and "stat /nope" in out.stderr


def test_rke2_server_stays_up_and_notifies(rke2: Rke2Release, tmp_path: Path) -> None:
    root = node_root(rke2, tmp_path, "node-name: n1\n")
    sock_path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(10)
    port = free_port()
    env = base_env(
        RKE2_STANDIN_ROOT=str(root),
        NOTIFY_SOCKET=str(sock_path),
        RKE2_STANDIN_BIND="127.0.0.1",
        RKE2_STANDIN_SUPERVISOR_PORT=str(port),
    )
    proc = subprocess.Popen(
        [str(root / "usr/local/bin/rke2"), "server"],
        env=env,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        msg, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        assert msg == b"READY=1"
        sender_pid = int.from_bytes(anc[0][2][:4], "little")
        assert sender_pid == proc.pid  # sent on behalf of the main PID, as NotifyAccess=main needs
        time.sleep(0.2)
        assert proc.poll() is None  # still running (python is exec'd: same PID)
        assert running_pid(root) == str(proc.pid)
        out = kubectl(root, "get", "node", "n1", "-o", READY_JSONPATH)
        assert (out.returncode, out.stdout) == (0, "True")
        # READY=1 comes after the supervisor listens
        assert tls_get(f"https://127.0.0.1:{port}", "/ping")[1] == b"pong"
    finally:
        stop_group(proc)
        sock.close()
    out = kubectl(root, "get", "node", "n1", "-o", READY_JSONPATH)
    assert out.returncode == 1 and "refused" in out.stderr


def write_proc_sys(root: Path, values: dict[str, str]) -> None:
    for key, value in values.items():
        p = root / "proc/sys" / key.replace(".", "/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{value}\n")


def test_rke2_cis_profile_prerequisites(rke2: Rke2Release, tmp_path: Path, spawn: Spawn) -> None:
    root = node_root(rke2, tmp_path, "profile: cis\nnode-name: n1\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    write_proc_sys(root, {**CIS_SYSCTLS, "vm.overcommit_memory": "0"})
    exe = str(root / "usr/local/bin/rke2")
    out = run([exe, "server"], rke2_env(root))
    assert out.returncode == 1
    assert "level=fatal" in out.stderr
    assert "missing required: user: unknown user etcd" in out.stderr
    assert "invalid kernel parameter value vm.overcommit_memory=0 - expected 1" in out.stderr
    assert not (root / "var/lib/rancher/rke2/standin/ready").exists()
    # agents need the sysctls, not the etcd user
    _, _, url = start_server(spawn, rke2, tmp_path, "token: t\nnode-name: cp\n")
    (root / "etc/rancher/rke2/config.yaml").write_text(f"profile: cis\nserver: {url}\ntoken: t\n")
    write_proc_sys(root, CIS_SYSCTLS)
    out = run([exe, "agent"], rke2_env(root))
    assert out.returncode == 0, out.stderr
    (root / "etc/rancher/rke2/config.yaml").write_text("profile: cis\nnode-name: n1\n")
    (root / "etc/passwd").write_text("etcd:x:999:999:etcd user:/nonexistent:/sbin/nologin\n")
    (root / "etc/group").write_text("etcd:x:999:\n")
    out = run([exe, "server"], rke2_env(root))
    assert out.returncode == 0, out.stderr


def test_rke2_agent_requires_server_and_token(rke2: Rke2Release, tmp_path: Path, spawn: Spawn) -> None:
    root = node_root(rke2, tmp_path, "token: abc\nnode-name: w1\n")
    exe = str(root / "usr/local/bin/rke2")
    out = run([exe, "agent"], rke2_env(root))
    assert out.returncode == 1 and "--server is required" in out.stderr
    _, _, url = start_server(spawn, rke2, tmp_path, "token: abc\nnode-name: cp\n")
    (root / "etc/rancher/rke2/config.yaml").write_text(f"server: {url}\nnode-name: w1\n")
    out = run([exe, "agent"], rke2_env(root))
    assert out.returncode == 1 and "--token is required" in out.stderr
    out = run([exe, "agent", "--token", "abc"], rke2_env(root))
    assert out.returncode == 0, out.stderr
    assert not (root / "etc/rancher/rke2/rke2.yaml").exists()  # agents get no admin kubeconfig
    assert not (root / "var/lib/rancher/rke2/server").exists()


def test_rke2_needs_core_images_offline(rke2: Rke2Release, tmp_path: Path) -> None:
    root = node_root(rke2, tmp_path, "node-name: n1\n", images=False)
    out = run([str(root / "usr/local/bin/rke2"), "server"], rke2_env(root))
    assert out.returncode == 1 and "rke2-runtime:v1.31.4-rke2r1" in out.stderr


# --- component args (kube-apiserver-arg, kubelet-arg, ...) against the v1.31 flag tables --------------

STIG_CATALOGUE = Path(__file__).resolve().parents[2] / "stig/rke2.yaml"


def product_args() -> dict[str, list[str]]:
    """Every `*-arg` item the product bakes: steps/rke2.py STIG_CONFIG and the stig/rke2.yaml fixes
    (items that must be present, with their accepted alternatives)."""
    args: dict[str, list[str]] = {k: list(v) for k, v in STIG_CONFIG.items() if k in k8s_flags.CONFIG_KEYS}

    def walk(node: object) -> Iterator[dict[str, object]]:
        if isinstance(node, dict):
            if node.get("type") == "yaml_list_contains":
                yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for fix in walk(yaml.safe_load(STIG_CATALOGUE.read_text())):
        key = str(fix["key"])
        if key in k8s_flags.CONFIG_KEYS and fix.get("present", True) is not False:
            items = [str(fix["item"]), *(str(a) for a in fix.get("accept") or [])]  # type: ignore[attr-defined]
            args.setdefault(key, []).extend(items)
    return args


def flag_name(item: str) -> str:
    """The flag an item becomes (k3s GetArgs): one leading `--` dropped, up to the first `=`."""
    return item.removeprefix("--").partition("=")[0].rstrip("+-")


def test_product_component_flags_exist_in_kubernetes_1_31() -> None:
    args = product_args()
    assert set(k8s_flags.CONFIG_KEYS) - {"kube-proxy-arg"} <= set(args)
    unknown = [(key, item) for key, items in args.items() for item in items
               if not k8s_flags.known("1.31", k8s_flags.CONFIG_KEYS[key], flag_name(item))]
    assert unknown == [], "flags no v1.31 component accepts (the node would not start)"
    # the check can fail: a typo is not in the table, and neither is another component's flag
    assert not k8s_flags.known("1.31", "kube-apiserver", "anonymus-auth")
    assert not k8s_flags.known("1.31", "kubelet", "audit-log-maxage")
    assert k8s_flags.known("1.31", "kube-proxy", "log-dir")  # `_` and `-` are the same to pflag


def test_k8s_flag_table_shape() -> None:
    assert k8s_flags.minor_of(VERSION) == "1.31"
    counts = {c: len(n) for c, n in k8s_flags.FLAGS["1.31"].items()}
    assert set(counts) == set(k8s_flags.CONFIG_KEYS.values())
    assert min(counts.values()) > 50
    for names in k8s_flags.FLAGS["1.31"].values():
        assert all(re.fullmatch(r"[a-z0-9][a-z0-9_-]*", n) for n in names)
        assert {"v", "vmodule", "log-flush-frequency", "feature-gates", "help", "version"} <= names
    assert json.loads(k8s_flags.table_json())["1.31"]["kubelet"] == sorted(k8s_flags.FLAGS["1.31"]["kubelet"])


def component_args(root: Path) -> dict[str, list[str]]:
    recorded: dict[str, list[str]] = json.loads(
        (root / "var/lib/rancher/rke2/standin/component-args.json").read_text())
    return recorded


def assert_never_ready(out: subprocess.CompletedProcess[str], root: Path, message: str) -> None:
    assert out.returncode == 1, out.stderr
    assert f"\nError: {message}\n" in out.stderr
    assert "level=fatal" in out.stderr and "not ready" in out.stderr
    assert not (root / "var/lib/rancher/rke2/standin/ready").exists()


def dropin_dir(root: Path) -> Path:
    """The node's config.yaml.d, where rke2 reads drop-ins after config.yaml."""
    dropins = root / "etc/rancher/rke2/config.yaml.d"
    dropins.mkdir(parents=True, exist_ok=True)
    return dropins


def test_rke2_valid_component_args_start(rke2: Rke2Release, tmp_path: Path) -> None:
    args = product_args()
    args["kubelet-arg"] += ["--v=2", "log_flush_frequency=5s"]
    config = yaml.safe_dump({"node-name": "n1", **args, "etcd-arg": ["not-checked=1"]})
    root = node_root(rke2, tmp_path, config)
    # a flow list: a quoted item keeps its commas, an unquoted comma separates items (YAML)
    dropins = dropin_dir(root)
    (dropins / "60-flow.yaml").write_text(
        'kube-apiserver-arg+: ["tls-cipher-suites=TLS_AES_128_GCM_SHA256,TLS_AES_256_GCM_SHA384", '
        "'audit-log-maxage=30', audit-log-maxbackup=10]\n")
    out = run([str(root / "usr/local/bin/rke2"), "server"], rke2_env(root))
    assert out.returncode == 0, out.stderr
    assert (root / "var/lib/rancher/rke2/standin/ready").exists()
    recorded = component_args(root)
    api = recorded["kube-apiserver-arg"]
    assert "--tls-cipher-suites=TLS_AES_128_GCM_SHA256,TLS_AES_256_GCM_SHA384" in api
    assert {"--audit-log-maxage=30", "--audit-log-maxbackup=10"} <= set(api)
    assert "--anonymous-auth=false" in recorded["kube-apiserver-arg"]
    assert "--protect-kernel-defaults=true" in recorded["kubelet-arg"]
    assert "--v=2" in recorded["kubelet-arg"]  # leading `--` dropped and put back once
    assert recorded["kubelet-arg"] == sorted(recorded["kubelet-arg"])  # GetArgs sorts by name
    assert recorded["etcd-arg"] == ["--not-checked=1"]  # recorded, not checked


def test_rke2_apiserver_arg_typo_never_ready(rke2: Rke2Release, tmp_path: Path) -> None:
    args = product_args()
    args["kube-apiserver-arg"] = [
        a.replace("anonymous-auth", "anonymus-auth") for a in args["kube-apiserver-arg"]]
    root = node_root(rke2, tmp_path, yaml.safe_dump({"node-name": "n1", **args}))
    out = run([str(root / "usr/local/bin/rke2"), "server"], rke2_env(root))
    assert_never_ready(out, root, "unknown flag: --anonymus-auth")
    assert "Usage:\n  kube-apiserver [flags]" in out.stderr
    assert "Waiting for API server to become available" in out.stderr
    pod_log = root / "var/log/pods/kube-system_kube-apiserver-n1_standin/kube-apiserver/0.log"
    assert "Error: unknown flag: --anonymus-auth" in pod_log.read_text()


def test_rke2_kubelet_arg_dropin_replaces_and_is_checked(rke2: Rke2Release, tmp_path: Path) -> None:
    root = node_root(rke2, tmp_path, "node-name: n1\nkubelet-arg:\n  - read-only-prot=0\n")
    dropins = dropin_dir(root)
    exe = str(root / "usr/local/bin/rke2")
    # a later file replaces the list: the typo in config.yaml is gone
    (dropins / "50-kubelet.yaml").write_text("kubelet-arg: [read-only-port=0]\n")
    out = run([exe, "server"], rke2_env(root))
    assert out.returncode == 0, out.stderr
    assert component_args(root)["kubelet-arg"] == ["--read-only-port=0"]
    # an unknown kubelet flag in a drop-in (ignored: the README-style .txt; read: .yml)
    (dropins / "10-notes.txt").write_text("kubelet-arg: [also-not-a-flag=1]\n")
    (dropins / "60-more.yml").write_text("kubelet-arg:\n- protect-kernel-defaults=true\n- max-pod=110\n")
    out = run([exe, "server"], rke2_env(root))
    assert_never_ready(out, root, "unknown flag: --max-pod")
    assert "Usage:\n  kubelet [flags]" in out.stderr and "Kubelet exited: exit status 1" in out.stderr
    assert "also-not-a-flag" not in out.stderr
    kubelet_log = root / "var/lib/rancher/rke2/agent/logs/kubelet.log"
    assert "Error: unknown flag: --max-pod" in kubelet_log.read_text()


def test_rke2_appended_kubelet_arg_is_checked(rke2: Rke2Release, tmp_path: Path) -> None:
    root = node_root(rke2, tmp_path, "node-name: n1\nkubelet-arg:\n  - read-only-port=0\n")
    dropins = dropin_dir(root)
    (dropins / "50-append.yaml").write_text("kubelet-arg+:\n  - protect-kernel-default=true\n  - zz-bad=1\n")
    out = run([str(root / "usr/local/bin/rke2"), "server"], rke2_env(root))
    # pflag reports the first unknown flag of the sorted list; the stand-in names both
    assert_never_ready(out, root, "unknown flag: --protect-kernel-default")
    assert "--zz-bad=1" in out.stderr
    assert component_args(root)["kubelet-arg"] == [
        "--protect-kernel-default=true", "--read-only-port=0", "--zz-bad=1"]


def test_rke2_component_args_on_command_line_and_agents(
    rke2: Rke2Release, tmp_path: Path, spawn: Spawn
) -> None:
    root = node_root(rke2, tmp_path, "node-name: n1\n")
    exe = str(root / "usr/local/bin/rke2")
    out = run([exe, "server", "--kube-scheduler-arg", "tls-min-versoin=VersionTLS12"], rke2_env(root))
    assert_never_ready(out, root, "unknown flag: --tls-min-versoin")
    # agents do not read the server-only keys (k3s strips them), but do check kubelet-arg
    _, _, url = start_server(spawn, rke2, tmp_path, "token: t\nnode-name: cp\n")
    (root / "etc/rancher/rke2/config.yaml").write_text(
        f"server: {url}\ntoken: t\nnode-name: w1\nkube-apiserver-arg: [not-checked-here=1]\n")
    out = run([exe, "agent"], rke2_env(root))
    assert out.returncode == 0, out.stderr
    out = run([exe, "agent", "--kubelet-arg=bogus-flag=1"], rke2_env(root))
    assert_never_ready(out, root, "unknown flag: --bogus-flag")


def test_rke2_unknown_kubernetes_minor_is_fatal(rke2: Rke2Release, tmp_path: Path) -> None:
    root = node_root(rke2, tmp_path, "node-name: n1\nkubelet-arg: [read-only-port=0]\n")
    exe = root / "usr/local/bin/rke2"
    exe.write_text(rke2_script("v1.99.0+rke2r1"))
    out = run([str(exe), "server"], rke2_env(root, RKE2_STANDIN_ALLOW_PULL="1"))
    assert out.returncode == 1
    assert "no flag table for Kubernetes 1.99" in out.stderr
    assert not (root / "var/lib/rancher/rke2/standin/ready").exists()
    (root / "etc/rancher/rke2/config.yaml").write_text("node-name: n1\n")  # nothing to check
    assert run([str(exe), "server"], rke2_env(root, RKE2_STANDIN_ALLOW_PULL="1")).returncode == 0


# --- multi-node: supervisor, join, heartbeats ---------------------------------------------------------

SERVER_CONFIG = "token: s3cret\nnode-name: cp-0\nnode-ip: 127.0.0.1\n"


def agent_root(
    rke2: Rke2Release,
    tmp_path: Path,
    url: str,
    token: str,
    name: str = "w-1",
    ip: str = "127.0.0.2",
    root_name: str | None = None,
) -> Path:
    config = f"server: {url}\ntoken: {token}\nnode-name: {name}\nnode-ip: {ip}\n"
    return node_root(rke2, tmp_path, config, name=root_name or name)


def join_once(root: Path, role: str = "agent", **env: str) -> subprocess.CompletedProcess[str]:
    """Run a joiner until it has joined (or failed): RKE2_STANDIN_NO_SLEEP makes it exit then."""
    return run([str(root / "usr/local/bin/rke2"), role], rke2_env(root, **env))


def test_agent_joins_bootstrap_server(rke2: Rke2Release, tmp_path: Path, spawn: Spawn) -> None:
    server, _, url = start_server(spawn, rke2, tmp_path, SERVER_CONFIG)
    token = node_token(server)
    ca = (server / "var/lib/rancher/rke2/server/tls/server-ca.crt").read_bytes()
    assert token == f"K10{hashlib.sha256(ca).hexdigest()}::server:s3cret"
    status, body, _ = tls_get(url, "/cacerts")
    assert (status, body) == (200, ca)
    # the supervisor's certificate is the CA's, for the addresses k3s puts in it: any TLS client
    # that trusts the cluster CA accepts it (Python checks the IP SAN itself here)
    status, _, cert = tls_get(url, "/ping", ca=ca)
    assert status == 200
    sans = [v for _, v in cert["subjectAltName"]]
    assert sans[:4] == ["127.0.0.1", "0:0:0:0:0:0:0:1", "localhost", "cp-0"]
    assert "kubernetes.default.svc.cluster.local" in sans and "10.43.0.1" in sans
    ca_text = subprocess.run(["openssl", "x509", "-noout", "-text"], input=ca, capture_output=True).stdout
    assert b"CA:TRUE" in ca_text and b"prime256v1" in ca_text and b"CN = rke2-server-ca@" in ca_text

    agent = agent_root(rke2, tmp_path, url, token)
    out = join_once(agent)
    assert out.returncode == 0, out.stderr
    assert f"Joined the cluster at {url} as agent w-1 (127.0.0.2)" in out.stderr
    standin = agent / "var/lib/rancher/rke2/standin"
    assert (standin / "ready").exists()
    assert (standin / "joined-server").read_text() == f"{url}\n"
    assert not (agent / "etc/rancher/rke2/rke2.yaml").exists()
    assert "server: https://127.0.0.1:6444" in (agent / KUBELET_KUBECONFIG.lstrip("/")).read_text()
    # a bare secret joins too, without CA validation (warned, like the real one)
    bare = agent_root(rke2, tmp_path, url, "s3cret", name="w-2", ip="127.0.0.3")
    out = join_once(bare)
    assert out.returncode == 0, out.stderr
    assert "the token does not include a CA hash" in out.stderr

    nodes = table(kubectl(server, "get", "nodes"))
    assert list(nodes) == ["cp-0", "w-1", "w-2"]
    assert nodes["cp-0"][:2] == ["Ready", "control-plane,etcd,master"]
    assert nodes["w-1"][:2] == nodes["w-2"][:2] == ["Ready", "<none>"]
    assert nodes["w-1"][3] == VERSION
    wide = table(kubectl(server, "get", "nodes", "-o", "wide"))
    assert wide["w-1"][4:6] == ["127.0.0.2", "<none>"] and wide["cp-0"][4] == "127.0.0.1"
    out = kubectl(server, "get", "node", "w-1", "-o", READY_JSONPATH)
    assert (out.returncode, out.stdout) == (0, "True")
    assert kubectl(server, "get", "node", "w-2", "-o", IP_JSONPATH).stdout == "127.0.0.3"
    names = kubectl(server, "get", "nodes", "-o", "jsonpath={.items[*].metadata.name}")
    assert names.stdout == "cp-0 w-1 w-2"
    assert kubectl(server, "get", "nodes", "-o", "name").stdout == "node/cp-0\nnode/w-1\nnode/w-2\n"
    doc = json.loads(kubectl(server, "get", "nodes", "-o", "json").stdout)
    assert doc["kind"] == "List" and [i["metadata"]["name"] for i in doc["items"]] == ["cp-0", "w-1", "w-2"]
    item = json.loads(kubectl(server, "get", "node", "w-1", "-o", "json").stdout)
    assert item["status"]["conditions"] == [{"reason": "KubeletReady", "status": "True", "type": "Ready"}]
    assert {"address": "127.0.0.2", "type": "InternalIP"} in item["status"]["addresses"]
    out = kubectl(server, "wait", "--for=condition=Ready", "nodes", "--all", "--timeout=5s")
    assert (out.returncode, out.stdout.split("\n")[:3]) == (0, [f"node/{n} condition met" for n in nodes])

    # the agent sees its own Node through its kubelet kubeconfig (node authorizer), and nothing else
    out = kubectl(agent, "get", "node", "w-1", "-o", READY_JSONPATH, kubeconfig=KUBELET_KUBECONFIG)
    assert (out.returncode, out.stdout) == (0, "True")
    assert list(table(kubectl(agent, "get", "nodes", kubeconfig=KUBELET_KUBECONFIG))) == ["w-1"]
    out = kubectl(agent, "get", "node", "cp-0", kubeconfig=KUBELET_KUBECONFIG)
    assert out.returncode == 1 and 'Error from server (Forbidden): nodes "cp-0" is forbidden' in out.stderr
    out = kubectl(agent, "get", "nodes")  # agents have no admin kubeconfig
    assert out.returncode == 1 and "stat /etc/rancher/rke2/rke2.yaml" in out.stderr


def test_join_rejected_token_is_fatal(rke2: Rke2Release, tmp_path: Path, spawn: Spawn) -> None:
    server, _, url = start_server(spawn, rke2, tmp_path, SERVER_CONFIG)
    full_wrong = node_token(server).replace("::server:s3cret", "::server:wrong")
    for i, token in enumerate((full_wrong, "wrong")):
        agent = agent_root(rke2, tmp_path, url, token, root_name=f"w-{i}")
        out = join_once(agent)
        assert out.returncode == 1, out.stderr
        fatal = f'level=fatal msg="failed to validate token: {url}/v1-standin/join: 401 Unauthorized"'
        assert fatal in out.stderr
        assert not (agent / "var/lib/rancher/rke2/standin/ready").exists()
    server_log = (tmp_path / "server.log").read_text()
    assert "Failed to authenticate request from 127.0.0.1: invalid token" in server_log
    assert list(table(kubectl(server, "get", "nodes"))) == ["cp-0"]
    out = kubectl(server, "get", "node", "w-1", "-o", READY_JSONPATH)
    assert out.returncode == 1 and 'nodes "w-1" not found' in out.stderr


def test_join_wrong_ca_hash_is_fatal(rke2: Rke2Release, tmp_path: Path, spawn: Spawn) -> None:
    server, _, url = start_server(spawn, rke2, tmp_path, SERVER_CONFIG)
    real_hash = node_token(server)[3:67]
    agent = agent_root(rke2, tmp_path, url, "K10" + "0" * 64 + "::server:s3cret")
    out = join_once(agent)
    assert out.returncode == 1
    assert (
        'level=fatal msg="failed to validate token: token CA hash does not match the Cluster CA certificate '
        f'hash: {"0" * 64} != {real_hash}"' in out.stderr
    )
    assert "Joined" not in out.stderr
    assert list(table(kubectl(server, "get", "nodes"))) == ["cp-0"]
    (agent / "etc/rancher/rke2/config.yaml").write_text(f"server: {url}\ntoken: K10abc::server:s3cret\n")
    out = join_once(agent)
    assert out.returncode == 1 and "invalid token CA hash length" in out.stderr


def test_join_reused_node_name_is_rejected(rke2: Rke2Release, tmp_path: Path, spawn: Spawn) -> None:
    server, _, url = start_server(spawn, rke2, tmp_path, SERVER_CONFIG)
    first = agent_root(rke2, tmp_path, url, "s3cret")
    assert join_once(first).returncode == 0
    assert join_once(first).returncode == 0  # the same node again (restart): same node password
    for name in ("w-1", "cp-0"):  # another machine under a taken name: another /etc/rancher/node/password
        clone = agent_root(rke2, tmp_path, url, "s3cret", name=name, root_name=f"clone-{name}")
        out = join_once(clone)
        assert out.returncode == 1
        assert 'level=fatal msg="Node password rejected, duplicate hostname' in out.stderr
    assert list(table(kubectl(server, "get", "nodes"))) == ["cp-0", "w-1"]


def test_agent_retries_until_server_answers(rke2: Rke2Release, tmp_path: Path, spawn: Spawn) -> None:
    port = free_port()  # nothing listens there yet
    url = f"https://127.0.0.1:{port}"
    agent = agent_root(rke2, tmp_path, url, "s3cret")
    log = tmp_path / "agent.log"
    proc = spawn([str(agent / "usr/local/bin/rke2"), "agent"], rke2_env(agent), log)
    retry = (
        f'level=error msg="Failed to validate connection to cluster at {url}: failed to get CA certs: '
        f'Get \\"{url}/cacerts\\": dial tcp 127.0.0.1:{port}: connect: connection refused"'
    )
    wait_for("two join attempts", lambda: log.read_text().count(retry) >= 2, timeout=8, log=log)
    assert proc.poll() is None  # still trying: no limit of its own
    assert not (agent / "var/lib/rancher/rke2/standin/ready").exists()
    # the server comes up late, on that port: the agent joins on its next attempt
    root = node_root(rke2, tmp_path, SERVER_CONFIG, name="server")
    spawn(
        [str(root / "usr/local/bin/rke2"), "server"],
        base_env(
            RKE2_STANDIN_ROOT=str(root), RKE2_STANDIN_BIND="127.0.0.1", RKE2_STANDIN_SUPERVISOR_PORT=str(port)
        ),
        tmp_path / "server.log",
    )
    assert proc.wait(timeout=10) == 0, log.read_text()  # RKE2_STANDIN_NO_SLEEP: exits once joined
    assert (agent / "var/lib/rancher/rke2/standin/ready").exists()
    assert table(kubectl(root, "get", "nodes"))["w-1"][0] == "Ready"


def test_heartbeats_keep_nodes_ready(rke2: Rke2Release, tmp_path: Path, spawn: Spawn) -> None:
    server, server_proc, url = start_server(spawn, rke2, tmp_path, SERVER_CONFIG)
    agent = agent_root(rke2, tmp_path, url, node_token(server))
    log = tmp_path / "agent.log"
    agent_proc = spawn(
        [str(agent / "usr/local/bin/rke2"), "agent"],
        base_env(RKE2_STANDIN_ROOT=str(agent), RKE2_STANDIN_HEARTBEAT_INTERVAL="1"),
        log,
    )
    wait_for("the agent to join", lambda: running_pid(agent) == str(agent_proc.pid), log=log)
    record = server / "var/lib/rancher/rke2/standin/nodes/w-1.json"

    def server_view(**env: str) -> str:
        out = kubectl(server, "get", "node", "w-1", "-o", READY_JSONPATH, **env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert server_view() == "True"
    # heartbeats stop (agent frozen) and the last one is 41 s old: NotReady, condition Unknown
    os.killpg(agent_proc.pid, signal.SIGSTOP)
    try:
        rec = json.loads(record.read_text())
        record.write_text(json.dumps({**rec, "last_seen": int(time.time()) - 41}))
        assert server_view() == "Unknown"
        nodes = table(kubectl(server, "get", "nodes"))
        assert nodes["w-1"][0] == "NotReady" and nodes["cp-0"][0] == "Ready"
        assert server_view(RKE2_STANDIN_NOT_READY_AFTER="60") == "True"
        out = kubectl(server, "wait", "--for=condition=Ready", "node/w-1", "--timeout=1s")
        assert out.returncode == 1 and "timed out waiting for the condition on nodes/w-1" in out.stderr
    finally:
        os.killpg(agent_proc.pid, signal.SIGCONT)
    wait_for("a heartbeat to make w-1 Ready again", lambda: server_view() == "True", timeout=5)
    assert json.loads(record.read_text())["first_seen"] == rec["first_seen"]

    # the server goes away: the agent keeps running and retrying, its own Node goes NotReady
    def agent_view(**env: str) -> subprocess.CompletedProcess[str]:
        args = ("get", "node", "w-1", "-o", READY_JSONPATH)
        return kubectl(agent, *args, kubeconfig=KUBELET_KUBECONFIG, **env)

    assert agent_view().stdout == "True"
    stop_group(server_proc)
    wait_for(
        "w-1 to turn NotReady on the agent",
        lambda: agent_view(RKE2_STANDIN_NOT_READY_AFTER="2").stdout == "Unknown",
        timeout=6,
        log=log,
    )
    assert agent_proc.poll() is None
    assert f'Failed to send heartbeat to {url}: Post \\"{url}/v1-standin/heartbeat\\"' in log.read_text()
    # the rke2 agent is gone: nothing answers on the agent's local API port
    stop_group(agent_proc)
    out = agent_view()
    assert out.returncode == 1 and "The connection to the server 127.0.0.1:6444 was refused" in out.stderr


def test_server_joins_server(rke2: Rke2Release, tmp_path: Path, spawn: Spawn) -> None:
    first, _, url = start_server(spawn, rke2, tmp_path, SERVER_CONFIG)
    config = f"server: {url}\ntoken: s3cret\nnode-name: cp-1\nnode-ip: 127.0.0.4\n"
    second, _, second_url = start_server(spawn, rke2, tmp_path, config, name="server-2")
    nodes = table(kubectl(first, "get", "nodes"))
    assert nodes["cp-1"][:2] == ["Ready", "control-plane,etcd,master"]
    # it took over the cluster CA and token, and serves the supervisor itself
    assert node_token(second) == node_token(first)
    assert (second / "var/lib/rancher/rke2/standin/joined-server").read_text() == f"{url}\n"
    ca = (first / "var/lib/rancher/rke2/server/tls/server-ca.crt").read_bytes()
    assert tls_get(second_url, "/cacerts")[1] == ca
    assert tls_get(second_url, "/ping", ca=ca)[0] == 200  # its own certificate, of the shared CA
    agent = agent_root(rke2, tmp_path, second_url, node_token(first))
    assert join_once(agent).returncode == 0
    # it lists the server it joined and what joined it; the bootstrap server lists what joined it
    assert list(table(kubectl(second, "get", "nodes"))) == ["cp-0", "cp-1", "w-1"]
    assert kubectl(second, "get", "node", "cp-0", "-o", IP_JSONPATH).stdout == "127.0.0.1"
    # a joining server with the wrong token fails like an agent
    bad = node_root(rke2, tmp_path, f"server: {url}\ntoken: nope\nnode-name: cp-2\n", name="server-3")
    out = join_once(bad, role="server")
    assert out.returncode == 1 and "401 Unauthorized" in out.stderr
    assert not (bad / "var/lib/rancher/rke2/server/node-token").exists()


class Forwarder:
    """A TCP forwarder on a loopback address: what a VIP or load balancer in front of a server is."""

    def __init__(self, listen: str, target: tuple[str, int]) -> None:
        self.sock = socket.create_server((listen, 0))
        self.port = int(self.sock.getsockname()[1])
        self.target = target
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def test_join_through_an_address_the_certificate_does_not_name(rke2: Rke2Release, tmp_path: Path,
                                                                spawn: Spawn) -> None:
    """A VIP in front of the servers that is not in their tls-san: the CA hash matches, but the
    server's certificate is not valid for the address the agent dialled - Go refuses it, the agent
    retries forever and never joins. With the VIP in tls-san it joins through the VIP."""
    plain, _, url = start_server(spawn, rke2, tmp_path, SERVER_CONFIG)
    named, _, named_url = start_server(spawn, rke2, tmp_path, SERVER_CONFIG + "tls-san: [127.0.0.20]\n",
                                       name="server-2")
    vips = [Forwarder("127.0.0.20", ("127.0.0.1", int(u.rsplit(":", 1)[1]))) for u in (url, named_url)]
    try:
        vip_url = f"https://127.0.0.20:{vips[0].port}"
        agent = agent_root(rke2, tmp_path, vip_url, node_token(plain))
        log = tmp_path / "agent.log"
        proc = spawn([str(agent / "usr/local/bin/rke2"), "agent"], rke2_env(agent), log)
        refused = (f'level=error msg="Failed to validate connection to cluster at {vip_url}: Post '
                   f'\\"{vip_url}/v1-standin/join\\": tls: failed to verify certificate: x509: '
                   'certificate is valid for 127.0.0.1, ::1, 10.43.0.1, not 127.0.0.20"')
        wait_for("two refused joins", lambda: log.read_text().count(refused) >= 2, timeout=10, log=log)
        assert proc.poll() is None and not (agent / "var/lib/rancher/rke2/standin/ready").exists()
        assert list(table(kubectl(plain, "get", "nodes"))) == ["cp-0"]  # the token never went out
        stop_group(proc)

        through = f"https://127.0.0.20:{vips[1].port}"
        other = agent_root(rke2, tmp_path, through, node_token(named), root_name="w-2")
        out = join_once(other)
        assert out.returncode == 0, out.stderr
        assert f"Joined the cluster at {through} as agent w-1" in out.stderr
        assert list(table(kubectl(named, "get", "nodes"))) == ["cp-0", "w-1"]
    finally:
        for v in vips:
            v.close()


def test_join_to_a_server_of_another_ca_is_refused(rke2: Rke2Release, tmp_path: Path, spawn: Spawn) -> None:
    """A short token trusts the CA /cacerts hands out; a server whose certificate is not of that
    CA (here: /cacerts answered by one server, the join by another) is refused as Go refuses it."""
    first, _, url = start_server(spawn, rke2, tmp_path, SERVER_CONFIG)
    ca = (first / "var/lib/rancher/rke2/server/tls/server-ca.crt").read_bytes()
    impostor, _, impostor_url = start_server(spawn, rke2, tmp_path, SERVER_CONFIG, name="server-2")
    assert (impostor / "var/lib/rancher/rke2/server/tls/server-ca.crt").read_bytes() != ca
    # the impostor serves its own certificate under the first server's CA file
    (impostor / "var/lib/rancher/rke2/server/tls/server-ca.crt").write_bytes(ca)
    agent = agent_root(rke2, tmp_path, impostor_url, "s3cret")
    log = tmp_path / "agent.log"
    proc = spawn([str(agent / "usr/local/bin/rke2"), "agent"], rke2_env(agent), log)
    refused = (f'Post \\"{impostor_url}/v1-standin/join\\": tls: failed to verify certificate: x509: '
               'certificate signed by unknown authority"')
    wait_for("a refused join", lambda: refused in log.read_text(), timeout=10, log=log)
    assert proc.poll() is None and not (agent / "var/lib/rancher/rke2/standin/ready").exists()
    assert url != impostor_url


# --- zarf stand-in -------------------------------------------------------------------------------------


@pytest.fixture
def zarf_home(zarf: ZarfRelease, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    opt = tmp_path / "opt/zarf"
    opt.mkdir(parents=True)
    shutil.copy(zarf.directory / zarf.binary_name, opt / "zarf")
    bindir = tmp_path / "usr/local/bin"
    bindir.mkdir(parents=True)
    (bindir / "zarf").symlink_to(opt / "zarf")
    kubeconfig = tmp_path / "root/etc/rancher/rke2/rke2.yaml"  # KUBECONFIG is under ZARF_STANDIN_ROOT
    kubeconfig.parent.mkdir(parents=True)
    kubeconfig.write_text("apiVersion: v1\n")
    home = tmp_path / "home"
    home.mkdir()
    env = base_env(
        HOME=str(home), KUBECONFIG="/etc/rancher/rke2/rke2.yaml", ZARF_STANDIN_ROOT=str(tmp_path / "root")
    )
    yield bindir / "zarf", env


def test_zarf_init_finds_package_beside_resolved_binary(
    zarf: ZarfRelease, zarf_home: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    exe, env = zarf_home
    shutil.copy(zarf.directory / zarf.init_name, tmp_path / "opt/zarf" / zarf.init_name)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    out = run([str(exe), "init", "--confirm", "--storage-class", "local-path"], env, cwd=cwd)
    assert out.returncode == 0, out.stderr
    log = (tmp_path / "root/var/lib/zarf-standin/init.log").read_text().splitlines()
    assert log == [
        "argv=zarf init --confirm --storage-class local-path"
        f"\tKUBECONFIG={env['KUBECONFIG']}\tpackage={tmp_path / 'opt/zarf' / zarf.init_name}",
        "registry: pvc=true hpa=true",  # the zarf-registry chart's defaults
    ]


def test_zarf_init_version_mismatch_fails_with_confirm(
    zarf: ZarfRelease, zarf_home: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    exe, env = zarf_home
    shutil.copy(zarf.directory / zarf.init_name, tmp_path / "opt/zarf/zarf-init-amd64-v0.83.0.tar.zst")
    out = run([str(exe), "init", "--confirm"], env, cwd=tmp_path)
    assert out.returncode == 1
    assert "requires a zarf-init package, but one was not found" in out.stderr
    assert (Path(env["HOME"]) / ".zarf-cache").is_dir()  # created like the real one
    out = run([str(exe), "init"], env, cwd=tmp_path)
    assert out.returncode == 1 and "failed to download the init package" in out.stderr
    assert not (tmp_path / "root/var/lib/zarf-standin/init.log").exists()


def test_zarf_init_cwd_and_cache(
    zarf: ZarfRelease, zarf_home: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    exe, env = zarf_home
    cache = Path(env["HOME"]) / ".zarf-cache"
    cache.mkdir()
    shutil.copy(zarf.directory / zarf.init_name, cache / zarf.init_name)
    assert run([str(exe), "init", "--confirm"], env, cwd=tmp_path).returncode == 0
    shutil.copy(zarf.directory / zarf.init_name, tmp_path / zarf.init_name)
    assert run([str(exe), "init", "--confirm"], env, cwd=tmp_path).returncode == 0
    log = [line for line in (tmp_path / "root/var/lib/zarf-standin/init.log").read_text().splitlines()
           if line.startswith("argv=")]
    assert log[0].endswith(f"package={cache / zarf.init_name}")
    assert log[1].endswith(f"package={tmp_path / zarf.init_name}")
    env_no_cluster = {**env, "KUBECONFIG": "/etc/rancher/rke2/missing.yaml"}
    out = run([str(exe), "init", "--confirm"], env_no_cluster, cwd=tmp_path)
    assert out.returncode == 1 and "unable to connect" in out.stderr


def test_zarf_without_home_fails_like_upstream(
    zarf: ZarfRelease, zarf_home: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """cloud-init's runcmd has no HOME: zarf's cache path goes through os.UserHomeDir() on init and
    deploy, with or without --zarf-cache. With HOME set, --zarf-cache is where the cache goes."""
    exe, env = zarf_home
    pkg = tmp_path / "zarf-package-demo-amd64-1.0.0.tar"
    pkg.write_bytes(b"x")
    cache = tmp_path / "var/cache/zarf"
    for home in ({}, {"HOME": ""}):
        no_home = {k: v for k, v in env.items() if k != "HOME"} | home
        for args in (["init", "--confirm"], ["init", "--confirm", "--zarf-cache", str(cache)],
                     ["package", "deploy", str(pkg), "--confirm", "--zarf-cache", str(cache)]):
            out = run([str(exe), *args], no_home, cwd=tmp_path)
            assert out.returncode == 1 and "$HOME is not defined" in out.stderr, (args, out.stderr)
    assert not (tmp_path / "root/var/lib/zarf-standin").exists() and not cache.exists()
    cache.mkdir(parents=True)
    shutil.copy(zarf.directory / zarf.init_name, cache / zarf.init_name)
    out = run([str(exe), "init", "--confirm", "--zarf-cache", str(cache)], env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    init_log = (tmp_path / "root/var/lib/zarf-standin/init.log").read_text()
    assert f"package={cache / zarf.init_name}" in init_log
    assert not (Path(env["HOME"]) / ".zarf-cache").exists()


def test_zarf_init_records_the_registry_it_would_deploy(
    zarf: ZarfRelease, zarf_home: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    exe, env = zarf_home
    shutil.copy(zarf.directory / zarf.init_name, tmp_path / "opt/zarf" / zarf.init_name)
    log = tmp_path / "root/var/lib/zarf-standin/init.log"
    for variables, want in (("REGISTRY_PVC_ENABLED=false", "pvc=false hpa=true"),
                            ("REGISTRY_PVC_ENABLED=false,REGISTRY_HPA_ENABLE=false", "pvc=false hpa=false")):
        out = run([str(exe), "init", "--confirm", "--set-variables", variables], env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert log.read_text().splitlines()[-1] == f"registry: {want}"
    out = run([str(exe), "init", "--confirm", "--set-variables=REGISTRY_HPA_ENABLE=false",
               "--set-variables", "REGISTRY_PVC_ENABLED=false"], env, cwd=tmp_path)
    assert out.returncode == 0 and log.read_text().splitlines()[-1] == "registry: pvc=false hpa=false"


def test_zarf_package_deploy_and_unknown(
    zarf: ZarfRelease, zarf_home: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    exe, env = zarf_home
    pkg = make_zarf_package(tmp_path / "zarf-package-demo-amd64-1.0.0.tar.zst", "demo")
    out = run([str(exe), "package", "deploy", str(pkg), "--confirm"], env)
    assert out.returncode == 0, out.stderr
    # unsigned, no key: upstream's default (--verify=if-possible) warns and deploys
    assert "package signature not verified; continuing" in out.stderr
    log = (tmp_path / "root/var/lib/zarf-standin/deploy.log").read_text().splitlines()
    assert log[0].startswith(f"argv=zarf package deploy {pkg} --confirm\t")
    assert log[1] == "signature: not verified"
    out = run([str(exe), "package", "deploy", str(pkg), "--confirm", "--verify"], env)
    assert out.returncode == 1 and "package is not signed - verification cannot be performed" in out.stderr
    junk = tmp_path / "zarf-package-junk-amd64-1.0.0.tar"
    junk.write_bytes(b"x")
    out = run([str(exe), "package", "deploy", str(junk), "--confirm"], env)
    assert out.returncode == 1 and "is not a Zarf package archive" in out.stderr
    out = run([str(exe), "frobnicate"], env)
    assert out.returncode == 1 and "unknown command" in out.stderr


def test_zarf_package_deploy_checks_integrity_and_signatures_like_upstream(
    zarf: ZarfRelease, zarf_home: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """v0.84.0 LoadFromTar: checksums always; with --key an unsigned package or a bad signature is
    fatal, a good bundle or legacy signature deploys."""
    exe, env = zarf_home
    public, private = cosign_key_pair()
    other_public, _ = cosign_key_pair()
    key = tmp_path / "cosign.pub"
    key.write_bytes(public)
    (tmp_path / "other.pub").write_bytes(other_public)
    log = tmp_path / "root/var/lib/zarf-standin/deploy.log"

    def deploy(pkg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return run([str(exe), "package", "deploy", str(pkg), "--confirm", *extra], env, cwd=tmp_path)

    signed = make_zarf_package(tmp_path / "zarf-package-s-amd64-1.0.0.tar.zst", "s", sign=private)
    legacy = make_zarf_package(tmp_path / "zarf-package-l-amd64-1.0.0.tar", "l", sign=private, legacy=True)
    for pkg, want in ((signed, "verified (bundle)"), (legacy, "verified (legacy)")):
        out = deploy(pkg, "--key", "cosign.pub")  # relative to the working directory
        assert out.returncode == 0, out.stderr
        assert log.read_text().splitlines()[-1] == f"signature: {want}"
    out = deploy(signed)
    assert out.returncode == 0 and "package is signed but no verification material" in out.stderr
    before = log.read_text()
    unsigned = make_zarf_package(tmp_path / "zarf-package-u-amd64-1.0.0.tar", "u")
    tampered = tamper_zarf_yaml(signed, tmp_path / "zarf-package-t-amd64-1.0.0.tar.zst",
                                b"version: 1.0.0", b"version: 1.0.1")
    tampered_legacy = tamper_zarf_yaml(legacy, tmp_path / "zarf-package-tl-amd64-1.0.0.tar",
                                       b"required: true", b"required: false")
    extra = make_zarf_package(tmp_path / "zarf-package-x-amd64-1.0.0.tar", "x", sign=private,
                              extra={"components/smuggled.tar": b"x"})
    for pkg, args, message in (
            (unsigned, ["--key", str(key)],
             "verification material was provided but the package is not signed"),
            (signed, ["--key", str(tmp_path / "other.pub")], "signature verification failed"),
            (tampered, ["--key", str(key)], "signature verification failed"),
            (tampered_legacy, ["--key", str(key)], "invalid signature"),
            (extra, [], "additional files not present in the checksum components/smuggled.tar"),
            (signed, ["--verify=sometimes"], "invalid --verify value")):
        out = deploy(pkg, *args)
        assert out.returncode == 1 and message in out.stderr, (pkg.name, args, out.stderr)
    assert log.read_text() == before  # nothing refused was deployed


# --- mirror --------------------------------------------------------------------------------------------


def tls_get(url: str, path: str, ca: bytes | None = None) -> tuple[int, bytes, dict[str, Any]]:
    """GET over TLS: unverified without `ca` (as a joiner fetches /cacerts), else verified against
    it with Python's own hostname check. (status, body, the server's certificate if verified)."""
    host, port = url.removeprefix("https://").split(":")
    if ca is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cadata=ca.decode())
    conn = http.client.HTTPSConnection(host, int(port), timeout=5, context=ctx)
    try:
        conn.connect()
        cert = conn.sock.getpeercert() if ca is not None else {}
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(), cert or {}
    finally:
        conn.close()


def request(url: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_mirror_serves_release(rke2: Rke2Release, zarf: ZarfRelease, release_root: Path) -> None:
    with ReleaseMirror(release_root, channels={"stable": VERSION}) as m:
        assert m.url.startswith("http://127.0.0.1:")
        bases = upstream_bases(m.url)
        assert bases == m.bases
        rel = bases["rke2_release"].removeprefix(m.url)
        for ver in ("v1.31.4%2Brke2r1", "v1.31.4+rke2r1", "v1.31.4%2brke2r1"):
            status, headers, body = request(m.url, f"{rel}/{ver}/sha256sum-amd64.txt")
            assert status == 200 and body == (rke2.directory / "sha256sum-amd64.txt").read_bytes()
        status, headers, body = request(m.url, f"{rel}/v1.31.4%2Brke2r1/rke2.{SUFFIX}.tar.gz", "HEAD")
        assert status == 200 and body == b""
        assert int(headers["content-length"]) == (rke2.directory / f"rke2.{SUFFIX}.tar.gz").stat().st_size
        src = bases["rke2_source"].removeprefix(m.url)
        assert (
            request(m.url, f"{src}/{version_dirname(VERSION)}/install.sh")[2] == rke2.install_sh.read_bytes()
        )
        zrel = bases["zarf_release"].removeprefix(m.url)
        assert request(m.url, f"{zrel}/v0.84.0/{zarf.init_name}")[0] == 200
        assert request(m.url, f"{rel}/v9.9.9/nothing")[0] == 404
        assert request(m.url, f"{rel}/../../../../etc/passwd")[0] == 404
        assert request(m.url, f"{rel}/%2E%2E/%2E%2E/x")[0] == 404

        channels = bases["rke2_channels"].removeprefix(m.url)
        status, headers, _ = request(m.url, f"{channels}/stable")
        assert status == 302
        assert headers["location"] == f"{m.url}/rancher/rke2/releases/tag/v1.31.4%2Brke2r1"
        assert request(m.url, headers["location"].removeprefix(m.url))[0] == 200
        assert request(m.url, f"{channels}/nope")[0] == 404
        m.channels["latest"] = "v1.32.0+rke2r1"
        status, headers, _ = request(m.url, f"{channels}/latest")
        assert headers["location"].endswith("/v1.32.0%2Brke2r1")
        status, _, body = request(m.url, channels)
        doc = json.loads(body)
        assert {(c["id"], c["name"], c["latest"]) for c in doc["data"]} == {
            ("stable", "stable", VERSION),
            ("latest", "latest", "v1.32.0+rke2r1"),
        }
        assert all(c["links"]["self"].startswith(m.url) for c in doc["data"])
        assert f"{channels}/stable" in m.requests
        assert f"{rel}/v1.31.4+rke2r1/sha256sum-amd64.txt" in m.requests
    with pytest.raises(RuntimeError):
        _ = m.url


def test_disk_path_mapping(tmp_path: Path) -> None:
    assert disk_path(tmp_path, "/a/v1.31.4+rke2r1/f") == tmp_path / "a/v1.31.4%2Brke2r1/f"
    assert disk_path(tmp_path, "/a/v1.31.4%2Brke2r1/f") == tmp_path / "a/v1.31.4%2Brke2r1/f"
    assert disk_path(tmp_path, "/a/../b") is None


def test_install_sh_through_mirror_download(rke2: Rke2Release, release_root: Path, tmp_path: Path) -> None:
    """Fetch the assets over HTTP like a build would, verify them, then install from the fetched copy."""
    artifacts = tmp_path / "fetched"
    artifacts.mkdir()
    with ReleaseMirror(release_root) as m:
        rel = upstream_bases(m.url)["rke2_release"].removeprefix(m.url) + "/" + version_dirname(VERSION)
        for name in ("sha256sum-amd64.txt", f"rke2.{SUFFIX}.tar.gz", f"rke2-images.{SUFFIX}.tar.zst"):
            status, _, body = request(m.url, f"{rel}/{name}")
            assert status == 200
            (artifacts / name).write_bytes(body)
    out = run(["sh", str(rke2.install_sh)], install_env(tmp_path / "root", artifacts))
    assert out.returncode == 0, out.stderr
