"""First boot of an RKE2 node: the baked helper script and the cloud-init user-data that drives it.

The same templates serve the boot tests here and the cluster issue later (Harvester Secrets,
libvirt seeds): given a role (bootstrap server, server, agent), the token, the server address, the
node name/IP and TLS SANs, cloud-init writes `config.yaml.d/50-join.yaml` and runs the helper,
which enables and starts the right unit with a timeout, waits for Ready, and on the bootstrap
server runs `zarf init`.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass, field
from typing import Literal

import jinja2
import yaml

from .cloudinit import TEMPLATES

FIRSTBOOT_PATH = "/usr/local/libexec/imagefactory/rke2-firstboot"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
    trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False,
)

Role = Literal["bootstrap", "server", "agent"]


def render_firstboot_script(*, prefix: str, zarf: str | None, verify_key: str | None = None) -> str:
    """``verify_key``: the baked cosign public key every `zarf package deploy` gets as --key."""
    zarf_dir = posixpath.dirname(zarf) if zarf else None
    return _env.get_template("rke2-firstboot.sh.j2").render(
        prefix=prefix, zarf=zarf, zarf_dir=zarf_dir, verify_key=verify_key)


@dataclass(frozen=True)
class NodeSeed:
    role: Role
    node_name: str
    token: str
    server: str | None = None  # https://<addr>:9345; required except for the bootstrap server
    node_ip: str | None = None
    tls_san: tuple[str, ...] = ()
    zarf_init: bool = False
    zarf_storage_class: str | None = None
    zarf_deploy: bool = False  # deploy the baked zarf.packages after init
    ssh_authorized_keys: tuple[str, ...] = ()
    timeout: int = 900
    guest_agent: bool = False  # start qemu-guest-agent early (Harvester reads bridge IPs through it)
    extra_config: dict[str, object] = field(default_factory=dict)
    # registries.yaml (mirrors, credentials, CA paths) from the cluster spec: it holds secrets, so it
    # travels like the token, in user-data, and is never baked; written 0600 before RKE2 starts
    registries_yaml: str | None = None
    files: tuple[tuple[str, str, str], ...] = ()  # (path, content, permissions), e.g. registry CAs

    def __post_init__(self) -> None:
        if self.role != "bootstrap" and not self.server:
            raise ValueError(f"a {self.role} node needs the server address")
        if self.zarf_init and self.role != "bootstrap":
            raise ValueError("zarf init runs on the bootstrap server only")


def join_config(seed: NodeSeed) -> dict[str, object]:
    cfg: dict[str, object] = {"token": seed.token, "node-name": seed.node_name}
    if seed.server:
        cfg["server"] = seed.server
    if seed.node_ip:
        cfg["node-ip"] = seed.node_ip
    if seed.tls_san:
        cfg["tls-san"] = list(seed.tls_san)
    cfg.update(seed.extra_config)
    return cfg


def render_user_data(seed: NodeSeed) -> str:
    argv = [FIRSTBOOT_PATH, seed.role, "--timeout", str(seed.timeout)]
    if seed.zarf_init:
        argv.append("--zarf-init")
        argv += (["--zarf-storage-class", seed.zarf_storage_class] if seed.zarf_storage_class
                 else ["--zarf-no-registry-pvc"])
        if seed.zarf_deploy:
            argv.append("--zarf-deploy")
    return _env.get_template("rke2-user-data.j2").render(
        role=seed.role, node_name=seed.node_name, guest_agent=seed.guest_agent,
        ssh_authorized_keys=list(seed.ssh_authorized_keys),
        join_yaml=yaml.safe_dump(join_config(seed), sort_keys=True),
        registries_yaml=seed.registries_yaml, files=list(seed.files),
        command=shlex.join(argv),
    )
