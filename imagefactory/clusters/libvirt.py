"""An RKE2 cluster as local libvirt VMs: the embedded default target (needs only this host).

Each node is a persistent libvirt domain (type qemu/TCG unless kvm is asked for) with a qcow2
overlay on the verified catalogue image, a NoCloud seed from the same first-boot templates as on
Harvester, and two NICs:
- `eth0`: qemu user networking with `restrict=on` (no egress) and SSH forwarded to 127.0.0.1 only,
  for management (status, tests). Every node has the same address here, so RKE2 never uses it.
- `eth1`: the cluster link, a qemu stream socket connected to this cluster's switch
  (`imagefactory.l2hub`) on 127.0.0.1; static addresses from `network.cidr` (.11 and up) and
  `node-ip` pinned to them. No host bridge, no libvirt network, no multicast.

State lives in `WORKDIR/clusters/<name>/` (0700): `state.json`, the token (0600), a management
SSH key, the switch's pid and log, and per node the overlay, seed and serial console. The bootstrap
server and the agents start together (agents retry the server until it answers); further servers
start once the bootstrap server is Ready (cloud-init done = the first-boot helper saw the node Ready).
`create` again continues a partial cluster; `delete` removes domains, switch and state.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import libvirt
import yaml

from ..cloudinit import write_seed_iso
from ..errors import BuildError, UserError
from ..fsutil import atomic_write, exclusive_lock, write_json
from ..run import run, spawn_daemon
from ..testing import libvirt as lv
from .common import ClusterStatus, NodeStatus, new_token, seed_for, server_url, user_data
from .spec import ClusterSpec, Node, nodes

log = logging.getLogger(__name__)
FIRSTBOOT_DONE = "/var/lib/imagefactory/rke2-firstboot.done"
FIRSTBOOT_LOG = "/var/lib/imagefactory/rke2-firstboot.log"
KUBECTL = "sudo -n /var/lib/rancher/rke2/bin/kubectl --kubeconfig /etc/rancher/rke2/rke2.yaml"


@dataclass(frozen=True)
class LocalImage:
    ref: str
    path: Path
    virtual_size: int
    user: str  # the distro's cloud-init default user (STIG images refuse root logins)


def node_ip(spec: ClusterSpec, node: Node) -> str:
    net = ipaddress.ip_network(spec.network.cidr)
    return str(net.network_address + 11 + node.index)


def _mac() -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def network_config(mgmt_mac: str, link_mac: str, address: str, prefix: int) -> str:
    return yaml.safe_dump({"version": 2, "ethernets": {
        "mgmt": {"match": {"macaddress": mgmt_mac}, "set-name": "eth0", "dhcp4": True},
        "link": {"match": {"macaddress": link_mac}, "set-name": "eth1", "dhcp4": False,
                 "addresses": [f"{address}/{prefix}"]},
    }}, sort_keys=False)


def link_interface_xml(mac: str, port: int) -> str:
    return (f"<interface type='client'><mac address='{escape(mac)}'/>"
            f"<source address='127.0.0.1' port='{port}'/><model type='virtio'/></interface>")


class LibvirtCluster:
    def __init__(self, spec: ClusterSpec, workdir: Path) -> None:
        self.spec = spec
        self.dir = workdir / "clusters" / spec.name
        self.state_file = self.dir / "state.json"

    def domain(self, node_name: str) -> str:
        return f"{lv.DOMAIN_PREFIX}{node_name}"

    def _state(self) -> dict[str, Any]:
        if not self.state_file.is_file():
            return {}
        data: dict[str, Any] = json.loads(self.state_file.read_text())
        return data

    # --- create ---------------------------------------------------------------------------------

    def create(self, image: LocalImage) -> ClusterStatus:
        spec = self.spec
        for pool, what in ((spec.servers, "servers"), (spec.agents, "agents")):
            if pool.count and pool.disk < image.virtual_size:
                raise UserError(f"{what}.disk: {pool.disk} bytes is smaller than the image's virtual size "
                                f"{image.virtual_size}",
                                hint=f"set {what}.disk to at least {-(-image.virtual_size // 1024**3)}GiB")
        lv.ensure_libvirtd()
        accel = lv.resolve_accelerator(spec.libvirt.accelerator)
        self.dir.mkdir(parents=True, exist_ok=True)
        # libvirt's qemu user must traverse to the overlays; nobody may list or read the rest.
        self.dir.chmod(0o711)
        lv.check_reachable(self.dir)
        with exclusive_lock(self.dir / ".lock", f"cluster {spec.name}"):
            state = self._state()
            if state and state.get("image") != image.ref:
                raise UserError(f"cluster {spec.name} exists with image {state.get('image')}, "
                                f"not {image.ref}",
                                hint="delete it first, or use that image")
            token = self._secret_file("token", new_token)
            key, pub = self._mgmt_key()  # key: the private key file
            state.setdefault("name", spec.name)
            state["image"], state["image_path"], state["user"] = image.ref, str(image.path), image.user
            state.setdefault("nodes", {})
            port = self._switch(state)
            write_json(self.state_file, state)
            all_nodes = nodes(spec)
            bootstrap = all_nodes[0]
            server = server_url(spec, node_ip(spec, bootstrap))
            conn = libvirt.open(lv.URI)
            # Agents boot with the bootstrap server: their addresses are static, and an agent
            # retries the server until it answers, as upstream's does ("Waiting to retrieve agent
            # configuration; server is not ready"), so one TCG boot overlaps the other. Further
            # servers join an etcd that is up: they start once the bootstrap server is Ready.
            agents = [n for n in all_nodes[1:] if not n.is_server]
            servers = [n for n in all_nodes[1:] if n.is_server]
            try:
                started = [(n, self._node(conn, state, n, image, token, server, pub, port, accel))
                           for n in (bootstrap, *agents)]
                write_json(self.state_file, state)
                if servers:
                    self._wait_ready(conn, bootstrap, started[0][1], key, image.user)
                    started = started[1:] + [
                        (n, self._node(conn, state, n, image, token, server, pub, port, accel))
                        for n in servers]
                    write_json(self.state_file, state)
                for n, g in started:
                    self._wait_ready(conn, n, g, key, image.user)
            finally:
                conn.close()
        return self.status()

    def _secret_file(self, name: str, make: Any) -> str:
        path = self.dir / name
        if path.is_file():
            return path.read_text().strip()
        value: str = make()
        atomic_write(path, value + "\n", mode=0o600)
        return value

    def _mgmt_key(self) -> tuple[Path, str]:
        key = self.dir / "id_ed25519"
        if not key.is_file():
            lv.ephemeral_key(self.dir)
            # the public half is kept so that a resumed create authorises the same key
            from cryptography.hazmat.primitives import serialization

            private = serialization.load_ssh_private_key(key.read_bytes(), None)
            pub = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                    serialization.PublicFormat.OpenSSH).decode()
            atomic_write(self.dir / "id_ed25519.pub", f"{pub} imagefactory-cluster-{self.spec.name}\n")
        return key, (self.dir / "id_ed25519.pub").read_text().strip()

    def _switch(self, state: dict[str, Any]) -> int:
        """The cluster's switch: reuse a live one, else start it on a free loopback port."""
        pid = switch_pid(self.dir)
        if pid and state.get("switch_port"):
            return int(state["switch_port"])
        if any(n.get("started") for n in state.get("nodes", {}).values()):
            # qemu's stream netdev does not reconnect: running nodes lost their link for good
            raise BuildError(f"cluster {self.spec.name}: its switch is gone, the nodes lost the cluster link",
                             hint="'imagefactory cluster delete' and create it again")
        port = lv.free_port()
        spawn_daemon([sys.executable, "-m", "imagefactory.l2hub", "--port", str(port),
                      "--pid-file", str(self.dir / "switch.pid")], self.dir / "switch.log",
                     self.dir / "switch.pid")
        state["switch_port"] = port
        return port

    def _node(self, conn: Any, state: dict[str, Any], node: Node, image: LocalImage, token: str,
              server: str, pub: str, port: int, accel: str) -> lv.Guest:
        spec = self.spec
        # Every node runs at once in the end: under TCG they share the host's cores (guest_cpus).
        cpus = lv.guest_cpus(node.pool.cpu, accel, len(nodes(spec)))
        rec = state["nodes"].setdefault(node.name, {})
        rec.setdefault("mgmt_mac", _mac())
        rec.setdefault("link_mac", _mac())
        rec.setdefault("ssh_port", lv.free_port())
        rec.update(role=node.role, ip=node_ip(spec, node), domain=self.domain(node.name))
        d = self.dir / "nodes" / node.name
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o711)
        g = lv.Guest(name=rec["domain"], index=node.index, port=rec["ssh_port"], mac=rec["mgmt_mac"],
                     overlay=d / "disk.qcow2", seed=d / "seed.iso", console=d / "console.log",
                     instance_id=f"{spec.name}-{node.name}", hostname=node.name)
        existing = _lookup(conn, g.name)
        if existing is not None and existing.isActive():
            log.info("%s is running: kept", node.name)
            return g
        if existing is None:
            if not g.overlay.exists():
                run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.path),
                     str(g.overlay), str(int(node.pool.disk))])
            seed = seed_for(spec, node, token, server=server, node_ip=rec["ip"],
                            keys=(*spec.ssh_authorized_keys, pub))
            prefix = ipaddress.ip_network(spec.network.cidr).prefixlen
            write_seed_iso({
                "user-data": user_data(seed),
                "meta-data": yaml.safe_dump({"instance-id": g.instance_id, "local-hostname": node.name}),
                "network-config": network_config(rec["mgmt_mac"], rec["link_mac"], rec["ip"], prefix),
            }, g.seed, mode=0o600)
            # The seed holds the cluster token: root only from its first byte. libvirt hands the
            # files to its qemu user while the domain runs (dynamic ownership) and back afterwards.
            g.overlay.chmod(0o600)
            g.console.touch(mode=0o600)
            xml = lv.domain_xml(g, accel, int(node.pool.memory) // 1024**2, cpus)
            xml = xml.replace("</devices>", f"  {link_interface_xml(rec['link_mac'], port)}\n  </devices>", 1)
            existing = conn.defineXML(xml)
        log.info("starting %s (%s, %s, %d MiB, %d vCPU, cluster address %s, ssh 127.0.0.1:%d)", node.name,
                 node.role, accel, int(node.pool.memory) // 1024**2, cpus, rec["ip"], g.port)
        g.boot_epoch = time.time()
        try:
            existing.create()
        except libvirt.libvirtError as e:
            raise BuildError(f"libvirt could not start {g.name}: {e}") from None
        rec["started"] = True
        return g

    def _wait_ready(self, conn: Any, node: Node, g: lv.Guest, key: Path, user: str) -> None:
        """cloud-init done means the first-boot helper ran (runcmd); its marker says it succeeded."""
        if not g.boot_epoch:
            g.boot_epoch = time.time()
        lv.wait_for_ssh(conn, g, user, key, self.spec.libvirt.boot_timeout + self.spec.rke2.node_timeout)
        out = self.ssh(node.name, f"sudo -n test -e {FIRSTBOOT_DONE} && echo done "
                                  f"|| sudo -n tail -n 20 {FIRSTBOOT_LOG}")
        if out.strip() != "done":
            raise BuildError(f"{node.name}: RKE2 first boot did not finish:\n{out}\n{g.console_tail(20)}",
                             hint="'cluster create' again continues; 'cluster delete' removes the cluster")
        log.info("%s: RKE2 %s is Ready", node.name, "server" if node.is_server else "agent")

    # --- access ---------------------------------------------------------------------------------

    def ssh(self, node_name: str, command: str, timeout: float = 120) -> str:
        """Run `command` on a node as the image's default user (management NIC); returns stdout,
        raises on failure. Prefix `sudo -n` for root (the default user has it, as on every cloud image)."""
        state = self._state()
        rec = state.get("nodes", {}).get(node_name)
        if rec is None:
            raise UserError(f"cluster {self.spec.name} has no node {node_name}")
        g = lv.Guest(name=rec["domain"], index=0, port=rec["ssh_port"], mac=rec["mgmt_mac"],
                     overlay=Path(), seed=Path(), console=self.dir / "nodes" / node_name / "console.log",
                     instance_id="", hostname=node_name)
        client = lv.connect(g, state.get("user", "root"), self.dir / "id_ed25519", timeout=timeout)
        try:
            _, out, err = client.exec_command(command, timeout=timeout)
            text = out.read().decode(errors="replace")
            if out.channel.recv_exit_status() != 0:
                detail = err.read().decode(errors="replace")[-500:]
                raise BuildError(f"{node_name}: '{command}' failed: {detail}")
            return text
        finally:
            client.close()

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        state = self._state()
        if not state:
            return ClusterStatus(self.spec.name, "libvirt", [], exists=False)
        rows: list[NodeStatus] = []
        conn = libvirt.open(lv.URI)
        try:
            for name, rec in sorted(state.get("nodes", {}).items(), key=lambda kv: kv[1].get("ip", "")):
                dom = _lookup(conn, rec["domain"])
                phase = "Running" if dom is not None and dom.isActive() else ("Stopped" if dom else "Missing")
                rows.append(NodeStatus(name, rec["role"], phase, rec["ip"]))
        finally:
            conn.close()
        detail = ""
        if switch_pid(self.dir) is None:
            detail = "the cluster switch is not running"
        boot = next((r for r in rows if r.role == "bootstrap" and r.phase == "Running"), None)
        if boot:
            try:
                ready = parse_nodes(self.ssh(boot.name, f"{KUBECTL} get nodes", timeout=60))
                for r in rows:
                    r.ready = ready.get(r.name, False)
            except BuildError as e:
                detail = (detail + "; " if detail else "") + f"kubectl on {boot.name}: {e.message[:200]}"
        return ClusterStatus(self.spec.name, "libvirt", rows, exists=True, detail=detail)

    # --- delete ---------------------------------------------------------------------------------

    def delete(self) -> list[str]:
        removed: list[str] = []
        state = self._state()
        conn = libvirt.open(lv.URI)
        try:
            names = {rec["domain"] for rec in state.get("nodes", {}).values()}
            prefix = f"{lv.DOMAIN_PREFIX}{self.spec.name}-"
            names |= {d.name() for d in conn.listAllDomains() if d.name().startswith(prefix)}
            for name in sorted(names):
                if _lookup(conn, name) is not None:
                    lv.destroy_domain(conn, name)
                    removed.append(f"domain/{name}")
        finally:
            conn.close()
        pid = switch_pid(self.dir)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
            removed.append(f"switch/{pid}")
        if self.dir.exists():
            shutil.rmtree(self.dir)
            removed.append(str(self.dir))
        return removed


def _lookup(conn: Any, name: str) -> Any:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


def switch_pid(directory: Path) -> int | None:
    """The switch's pid if it is alive and really our switch (pids are reused)."""
    try:
        pid = int((directory / "switch.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"imagefactory.l2hub" in cmdline else None


def parse_nodes(table: str) -> dict[str, bool]:
    """`kubectl get nodes` table -> {name: Ready}."""
    ready: dict[str, bool] = {}
    for line in table.splitlines():
        cols = line.split()
        if len(cols) >= 2 and cols[0] != "NAME":
            ready[cols[0]] = cols[1] == "Ready"
    return ready
