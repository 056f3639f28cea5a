"""Cluster spec parsing and validation, node planning, first-boot seeds per node, and the
loopback switch the libvirt target links its VMs with."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from imagefactory.clusters.common import seed_for, server_url, user_data
from imagefactory.clusters.libvirt import network_config, node_ip, parse_nodes
from imagefactory.clusters.spec import ClusterSpec, load_spec, nodes
from imagefactory.errors import ValidationError
from imagefactory.firstboot import join_config

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMnXZ8mWq0+ZLq1mB3Iq8m3yv6o3l4vK1x3vP6bXqG2z ops@site"


def write(tmp_path: Path, data: dict[str, object]) -> Path:
    p = tmp_path / "cluster.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def test_minimal_spec_defaults_to_libvirt(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, {"name": "edge", "image": "rke2-node-debian@stable"}))
    assert spec.target == "libvirt" and spec.network_type == "private"
    assert [n.name for n in nodes(spec)] == ["edge-server-0"]
    assert nodes(spec)[0].role == "bootstrap"


def test_node_order_roles_and_addresses(tmp_path: Path) -> None:
    spec = load_spec(
        write(
            tmp_path,
            {
                "name": "edge",
                "image": "x@stable",
                "servers": {"count": 3},
                "agents": {"count": 2},
                "network": {"cidr": "10.99.0.0/24"},
            },
        )
    )
    ns = nodes(spec)
    assert [(n.name, n.role) for n in ns] == [
        ("edge-server-0", "bootstrap"),
        ("edge-server-1", "server"),
        ("edge-server-2", "server"),
        ("edge-agent-0", "agent"),
        ("edge-agent-1", "agent"),
    ]
    assert [node_ip(spec, n) for n in ns] == [f"10.99.0.{i}" for i in range(11, 16)]


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        ({"name": "Edge_1", "image": "x"}, "name", "DNS label"),
        ({"name": "edge", "image": "x y"}, "image", "not an image reference"),
        (
            {"name": "edge", "image": "x", "target": "harvester", "network": {"type": "private"}},
            "network.type",
            "libvirt link",
        ),
        (
            {"name": "edge", "image": "x", "target": "harvester", "network": {"type": "vlan"}},
            "network.nad",
            "required",
        ),
        (
            {"name": "edge", "image": "x", "network": {"type": "vlan", "nad": "default/vlan1"}},
            "network.type",
            "Harvester only",
        ),
        (
            {"name": "edge", "image": "x", "target": "harvester", "network": {"type": "pod"},
             "agents": {"count": 1}},
            "network.type",
            "same guest address (10.0.2.2)",
        ),
        ({"name": "edge", "image": "x", "servers": {"count": 0}}, "servers.count", "at least one server"),
        ({"name": "edge", "image": "x", "tpm": True}, "tpm", "Harvester only"),
        (
            {"name": "edge", "image": "x", "target": "harvester",
             "network": {"addresses": {"cidr": "10.5.0.0/24"}}},
            "network.addresses",
            "vlan network",
        ),
        (
            {"name": "edge", "image": "x", "target": "harvester", "agents": {"count": 3},
             "network": {"nad": "default/v", "addresses": {"cidr": "10.5.0.0/29", "first": 4}}},
            "network.addresses",
            "no room for 4 nodes",
        ),
        (
            {"name": "edge", "image": "x", "target": "harvester",
             "network": {"nad": "default/v", "addresses": {"cidr": "10.5.0.0/24", "gateway": "10.5.0"}}},
            "network.addresses.gateway",
            "not an IPv4 address",
        ),
        (
            {"name": "edge", "image": "x", "target": "harvester",
             "servers": {"memory": "1GiB", "reserved_memory": "600MiB"}},
            "servers",
            "less than half of memory",
        ),
        (
            {"name": "edge", "image": "x", "agents": {"data_disks": [{"size": "10GiB"}]}},
            "agents.data_disks",
            "Harvester only",
        ),
        (
            {"name": "edge", "image": "x", "target": "harvester",
             "agents": {"data_disks": [{"size": "10GiB", "storage_class": "Not_A_Name"}]}},
            "agents.data_disks.0.storage_class",
            "not a StorageClass name",
        ),
        ({"name": "edge", "image": "x", "servers": {"memory": "100MiB"}}, "servers.memory", "512MiB"),
        (
            {"name": "edge", "image": "x", "rke2": {"config": {"token": "x"}}},
            "rke2.config",
            "set by imagefactory",
        ),
        (
            {"name": "edge", "image": "x", "rke2": {"config": {"kubelet-args": ["max-pods=200"]}}},
            "rke2.config",
            "rke2 has no 'kubelet-args' setting (it would skip it with a warning): "
            "did you mean 'kubelet-arg'?",
        ),
        (
            {"name": "edge", "image": "x", "ssh_authorized_keys": ["not a key"]},
            "ssh_authorized_keys",
            "OpenSSH",
        ),
        ({"name": "edge", "image": "x", "surprise": 1}, "surprise", "Extra inputs"),
        ({"name": "edge", "image": "x", "network": {"cidr": "10.0.0.0/28"}}, "network.cidr", "/26"),
    ],
)
def test_bad_specs_name_file_key_and_reason(
    tmp_path: Path, data: dict[str, object], path: str, words: str
) -> None:
    f = write(tmp_path, data)
    with pytest.raises(ValidationError) as e:
        load_spec(f)
    problems = e.value.problems
    assert any(p.path == path and words in p.message for p in problems), [str(p) for p in problems]
    assert all(p.file == str(f) for p in problems)


def test_cli_bad_spec_exit_2_without_traceback(tmp_path: Path) -> None:
    f = write(tmp_path, {"name": "edge", "image": "x", "servers": {"count": 0}})
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagefactory.cli",
            "--workdir",
            str(tmp_path / "w"),
            "cluster",
            "status",
            "-f",
            str(f),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "servers.count" in r.stderr and str(f) in r.stderr
    assert "Traceback" not in r.stderr


def test_seeds_join_bootstrap_and_carry_overrides() -> None:
    spec = ClusterSpec.model_validate(
        {
            "name": "edge",
            "image": "x",
            "servers": {"count": 2},
            "agents": {"count": 1},
            "rke2": {
                "config": {"cni": "canal", "write-kubeconfig-mode": "0600"},
                "tls_san": ["edge.example"],
                "vip": "192.0.2.10",
            },
            "zarf": {"init": True, "storage_class": "longhorn"},
            "ssh_authorized_keys": [KEY],
        }
    )
    boot, server, agent = nodes(spec)
    url = server_url(spec, "10.77.0.11")
    assert url == "https://10.77.0.11:9345"
    seeds = [seed_for(spec, n, "tok", server=url, node_ip=node_ip(spec, n), keys=(KEY,)) for n in nodes(spec)]
    cfgs = [join_config(s) for s in seeds]
    assert "server" not in cfgs[0] and cfgs[1]["server"] == url and cfgs[2]["server"] == url
    assert all(c["token"] == "tok" and c["cni"] == "canal" for c in cfgs)
    assert [c["node-name"] for c in cfgs] == [boot.name, server.name, agent.name]
    assert [c["node-ip"] for c in cfgs] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    assert cfgs[0]["tls-san"] == ["edge.example", "192.0.2.10"] and "tls-san" not in cfgs[2]
    assert seeds[0].zarf_init and seeds[0].zarf_storage_class == "longhorn" and not seeds[1].zarf_init
    ud = yaml.safe_load(user_data(seeds[2]))
    assert ud["hostname"] == agent.name and KEY in ud["ssh_authorized_keys"]
    assert yaml.safe_load(ud["write_files"][0]["content"])["server"] == url
    assert "agent" in ud["runcmd"][0]
    # joining through the VIP when asked
    via_vip = spec.model_copy(update={"rke2": spec.rke2.model_copy(update={"join_via_vip": True})})
    assert server_url(via_vip, "10.77.0.11") == "https://192.0.2.10:9345"


def test_network_config_pins_the_link_address() -> None:
    cfg = yaml.safe_load(network_config("52:54:00:00:00:01", "52:54:00:00:00:02", "10.77.0.12", 24))
    eth = cfg["ethernets"]
    assert eth["mgmt"]["dhcp4"] is True and eth["mgmt"]["match"]["macaddress"] == "52:54:00:00:00:01"
    assert eth["link"]["addresses"] == ["10.77.0.12/24"] and eth["link"]["dhcp4"] is False


def test_parse_kubectl_nodes_table() -> None:
    table = (
        "NAME            STATUS     ROLES                       AGE   VERSION\n"
        "edge-server-0   Ready      control-plane,etcd,master   1m    v1.31.4+rke2r1\n"
        "edge-agent-0    NotReady   <none>                      1m    v1.31.4+rke2r1\n"
    )
    assert parse_nodes(table) == {"edge-server-0": True, "edge-agent-0": False}


# --- the loopback switch ----------------------------------------------------------------------------


def frame(dst: bytes, src: bytes, payload: bytes) -> bytes:
    body = dst + src + b"\x08\x00" + payload
    return struct.pack("!I", len(body)) + body


def recv_frame(s: socket.socket) -> bytes:
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        assert chunk, "switch closed the port"
        head += chunk
    (n,) = struct.unpack("!I", head)
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return body


def test_switch_floods_then_learns(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pid_file = tmp_path / "switch.pid"
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagefactory.l2hub", "--port", str(port), "--pid-file", str(pid_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        a, b, c = (socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3))
        time.sleep(0.2)
        mac_a, mac_b = b"\x52\x54\x00\x00\x00\x0a", b"\x52\x54\x00\x00\x00\x0b"
        bcast = b"\xff" * 6
        a.sendall(frame(bcast, mac_a, b"who-has"))  # broadcast: everyone but the sender
        assert recv_frame(b)[12:] == b"\x08\x00who-has"
        assert recv_frame(c)[12:] == b"\x08\x00who-has"
        b.sendall(frame(mac_a, mac_b, b"is-at"))  # a's MAC was learnt: only a gets it
        assert recv_frame(a)[6:12] == mac_b
        c.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.recv(1)
        for s in (a, b, c):
            s.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert not pid_file.exists()  # removed on a clean stop


CA = "-----BEGIN CERTIFICATE-----\nMIIBstandin\n-----END CERTIFICATE-----\n"


def test_registries_arrive_at_first_boot_with_their_secrets(tmp_path: Path) -> None:
    """registries.yaml (mirrors, credentials, CA) from the spec's files, in every node's user-data,
    0600, and the CA beside it: credentials are never baked into an image."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/reg.yaml").write_text("username: site\npassword: hunter2-secret\n")
    (tmp_path / "site-ca.pem").write_text(CA)
    spec = load_spec(write(tmp_path, {
        "name": "edge", "image": "x", "agents": {"count": 1},
        "registries": {"mirrors": {"docker.io": {"endpoint": ["https://registry.site:5000"]}},
                       "configs": {"registry.site:5000": {"auth_file": "secrets/reg.yaml",
                                                          "ca_file": "site-ca.pem"}}}}))
    for node in nodes(spec):
        ud = yaml.safe_load(user_data(seed_for(spec, node, "tok", server="https://10.77.0.11:9345",
                                               node_ip=None, keys=())))
        files = {f["path"]: f for f in ud["write_files"]}
        reg = files["/etc/rancher/rke2/registries.yaml"]
        assert reg["permissions"] == "0600"
        ca_path = "/etc/rancher/rke2/registry-ca/registry.site_5000.crt"
        assert yaml.safe_load(reg["content"]) == {
            "mirrors": {"docker.io": {"endpoint": ["https://registry.site:5000"]}},
            "configs": {"registry.site:5000": {"auth": {"username": "site", "password": "hunter2-secret"},
                                               "tls": {"ca_file": ca_path}}}}
        assert files[ca_path]["content"] == CA and files[ca_path]["permissions"] == "0644"
    # without a registries section nothing is written (the image's own registries.yaml stays)
    plain = load_spec(write(tmp_path, {"name": "edge", "image": "x"}))
    seed = seed_for(plain, nodes(plain)[0], "tok", server=None, node_ip=None, keys=())
    ud = yaml.safe_load(user_data(seed))
    assert [f["path"] for f in ud["write_files"]] == ["/etc/rancher/rke2/config.yaml.d/50-join.yaml"]


@pytest.mark.parametrize(("cfg", "files", "expected"), [
    ({"auth_file": "missing.yaml"}, {}, "registries.configs.r.example.auth_file: missing.yaml: cannot read"),
    ({"auth_file": "a.yaml"}, {"a.yaml": "username: u\n"}, "a.yaml: not registry credentials"),
    ({"auth_file": "a.yaml"}, {"a.yaml": "user: u\npassword: topsecret\n"},
     "a.yaml: not registry credentials"),
    ({"ca_file": "ca.pem"}, {"ca.pem": "hello\n"}, "registries.configs.r.example.ca_file: ca.pem: not a PEM"),
    ({"insecure_skip_verify": True}, {}, "TLS verification stays on"),
])
def test_bad_registries_are_refused_without_quoting_secrets(
        tmp_path: Path, cfg: dict[str, object], files: dict[str, str], expected: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    p = write(tmp_path, {"name": "edge", "image": "x", "registries": {"configs": {"r.example": cfg}}})
    with pytest.raises(ValidationError) as e:
        load_spec(p)
    text = "\n".join(str(x) for x in e.value.problems)
    assert expected in text and str(p) in text, text
    assert "topsecret" not in text
