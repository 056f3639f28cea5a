"""What both cluster targets share: the token, the per-node first-boot seed, node status rows."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from typing import Any

from ..firstboot import NodeSeed, render_user_data
from .spec import ClusterSpec, Node, registries_seed

LABEL = "imagefactory.io"
SUPERVISOR_PORT = 9345


def new_token() -> str:
    # RKE2 accepts any string; 32 random bytes in hex is what `rke2 token generate` style tools use.
    return secrets.token_hex(32)


def server_url(spec: ClusterSpec, bootstrap_ip: str) -> str:
    host = spec.rke2.vip if spec.rke2.join_via_vip and spec.rke2.vip else bootstrap_ip
    return f"https://{host}:{SUPERVISOR_PORT}"


def tls_sans(spec: ClusterSpec, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    sans = [*spec.rke2.tls_san, *([spec.rke2.vip] if spec.rke2.vip else []), *extra]
    return tuple(dict.fromkeys(sans))


def seed_for(spec: ClusterSpec, node: Node, token: str, *, server: str | None, node_ip: str | None,
             keys: tuple[str, ...], extra_sans: tuple[str, ...] = ()) -> NodeSeed:
    """The first-boot seed of one node: the same templates as the image's boot tests."""
    zarf = node.role == "bootstrap" and spec.zarf.init
    registries = registries_seed(spec)
    return NodeSeed(
        role=node.role, node_name=node.name, token=token,
        server=None if node.role == "bootstrap" else server, node_ip=node_ip,
        tls_san=tls_sans(spec, extra_sans) if node.is_server else (),
        zarf_init=zarf, zarf_storage_class=spec.zarf.storage_class if zarf else None,
        zarf_deploy=zarf and spec.zarf.deploy_packages,
        ssh_authorized_keys=keys, timeout=spec.rke2.node_timeout,
        extra_config=dict(spec.rke2.config),
        registries_yaml=registries[0] if registries else None,
        files=registries[1] if registries else (),
    )


def user_data(seed: NodeSeed) -> str:
    return render_user_data(seed)


@dataclass
class NodeStatus:
    name: str
    role: str
    phase: str
    ip: str | None
    ready: bool | None = None  # RKE2 node Ready, where the target can tell
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClusterStatus:
    name: str
    target: str
    nodes: list[NodeStatus]
    exists: bool = True
    detail: str = ""

    @property
    def running(self) -> bool:
        return bool(self.nodes) and all(n.phase == "Running" and n.ip for n in self.nodes)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "exists": self.exists, "running": self.running,
                "detail": self.detail, "nodes": [n.as_dict() for n in self.nodes]}
