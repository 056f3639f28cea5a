"""The cluster spec (`cluster.yaml`): one RKE2 cluster from one catalogue image, on a target.

Parsed once into a frozen model and validated before anything is created; errors name the file,
the key path and a hint. The same spec builds on Harvester (`target: harvester`) or as local
libvirt VMs (`target: libvirt`, the default: it needs nothing but this host).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from ..catalogue.manifest import parse_ref
from ..errors import Problem, UserError, ValidationError

_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,28}[a-z0-9])?$")
_NAD = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?/[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
GiB = 1024**3


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodePool(_Model):
    count: int = Field(1, ge=0, le=15)
    cpu: int = Field(2, ge=1, le=64)
    memory: ByteSize = Field(ByteSize(4 * GiB), description="guest memory, e.g. 4GiB")
    disk: ByteSize = Field(ByteSize(20 * GiB), description="root disk; at least the image's virtual size")
    anti_affinity: Literal["preferred", "required", "none"] = Field(
        "preferred", description="harvester: keep this pool's VMs on different hosts (required: never "
                                 "two on one host; VMs stay Pending when hosts run out)")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: ByteSize) -> ByteSize:
        if v < 512 * 1024**2:
            raise ValueError("at least 512MiB")
        return v


class Network(_Model):
    type: Literal["pod", "vlan", "private"] | None = Field(
        None, description="harvester: pod (management network, default) or vlan (a "
        "NetworkAttachmentDefinition); libvirt: private (a link between the VMs, host side on 127.0.0.1)")
    nad: str | None = Field(None, description="vlan: the NetworkAttachmentDefinition as namespace/name")
    cidr: str = Field("10.77.0.0/24", description="private: the node subnet on the link between the VMs")

    @field_validator("nad")
    @classmethod
    def _nad(cls, v: str | None) -> str | None:
        if v is not None and not _NAD.match(v):
            raise ValueError(f"'{v}' is not namespace/name")
        return v

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            net = ipaddress.ip_network(v)
        except ValueError as e:
            raise ValueError(str(e)) from None
        if net.version != 4 or net.prefixlen > 26:
            raise ValueError("an IPv4 subnet of at least /26")
        return v


class Rke2Options(_Model):
    config: dict[str, Any] = Field(default_factory=dict,
                                   description="RKE2 config.yaml keys added to every node's join file")
    tls_san: tuple[str, ...] = ()
    vip: str | None = Field(None, description="an address in front of the servers: added to tls-san; "
                                              "joiners use it as the server URL with join_via_vip")
    join_via_vip: bool = False
    node_timeout: int = Field(900, ge=60, le=7200, description="seconds a node may take to become Ready")

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = {"token", "server", "node-name", "node-ip", "tls-san"} & set(v)
        if owned:
            raise ValueError(f"{', '.join(sorted(owned))} are set by imagefactory per node; "
                             "use tls_san for extra names")
        return v


class ZarfOptions(_Model):
    init: bool = True
    storage_class: str | None = Field(None, description="StorageClass for the registry PVC; none: no PVC")
    deploy_packages: bool = False


class LibvirtOptions(_Model):
    accelerator: Literal["auto", "kvm", "tcg"] = "auto"
    boot_timeout: int = Field(900, ge=60)


class ClusterSpec(_Model):
    name: str
    target: Literal["harvester", "libvirt"] = "libvirt"
    image: str = Field(description="catalogue reference: NAME, NAME:VERSION or NAME@CHANNEL")
    store: str | None = None
    namespace: str | None = Field(None, description="harvester: namespace (default: the context's)")
    servers: NodePool = NodePool()
    agents: NodePool = NodePool(count=0)
    network: Network = Network()
    ssh_authorized_keys: tuple[str, ...] = ()
    rke2: Rke2Options = Rke2Options()
    zarf: ZarfOptions = ZarfOptions()
    libvirt: LibvirtOptions = LibvirtOptions()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("a DNS label of at most 30 characters (a-z, 0-9, '-'; starts with a letter): "
                             "VM, Secret and host names derive from it")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        parse_ref(v)  # raises UserError with the accepted forms
        return v

    @field_validator("ssh_authorized_keys")
    @classmethod
    def _keys(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for k in v:
            if not re.match(r"^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+( .*)?$", k):
                raise ValueError(f"'{k[:30]}...' is not an OpenSSH public key line")
        return v

    @model_validator(mode="after")
    def _target(self) -> ClusterSpec:
        if self.servers.count < 1:
            raise ValueError("servers.count: a cluster needs at least one server (the bootstrap server)")
        net = self.network.type
        if self.target == "harvester":
            if net == "private":
                raise ValueError("network.type: 'private' is the libvirt link; use pod or vlan on Harvester")
            if net == "vlan" and not self.network.nad:
                raise ValueError("network.nad: required for a vlan network (namespace/name)")
        elif net in ("pod", "vlan"):
            raise ValueError(f"network.type: '{net}' exists on Harvester only; libvirt uses 'private'")
        hosts = ipaddress.ip_network(self.network.cidr).num_addresses - 2
        if self.servers.count + self.agents.count + 10 > hosts:
            raise ValueError("network.cidr: too small for the nodes (addresses start at .11)")
        return self

    @property
    def network_type(self) -> str:
        return self.network.type or ("pod" if self.target == "harvester" else "private")


@dataclass(frozen=True)
class Node:
    """One VM of the cluster, in creation order (the bootstrap server first)."""

    name: str
    role: Literal["bootstrap", "server", "agent"]
    pool: NodePool
    index: int  # position in the whole cluster: the private-link address is .11 + index

    @property
    def is_server(self) -> bool:
        return self.role != "agent"


def nodes(spec: ClusterSpec) -> list[Node]:
    out: list[Node] = []
    for i in range(spec.servers.count):
        role: Literal["bootstrap", "server"] = "bootstrap" if i == 0 else "server"
        out.append(Node(f"{spec.name}-server-{i}", role, spec.servers, len(out)))
    for i in range(spec.agents.count):
        out.append(Node(f"{spec.name}-agent-{i}", "agent", spec.agents, len(out)))
    return out


def load_spec(path: Path) -> ClusterSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read the cluster spec: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValidationError([Problem(str(path), None, "", "a cluster spec is a mapping",
                                       "see 'Clusters' in README.md")])
    try:
        return ClusterSpec.model_validate(data)
    except PydanticValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if not loc and ": " in msg and msg.split(": ", 1)[0].replace(".", "").replace("_", "").isalnum():
                loc, msg = msg.split(": ", 1)  # model-level checks name their key first
            problems.append(Problem(str(path), _line(path, loc), loc, msg, "see 'Clusters' in README.md"))
        raise ValidationError(problems) from None
    except UserError as e:  # parse_ref
        raise ValidationError([Problem(str(path), None, "image", e.message, e.hint)]) from None


def _line(path: Path, loc: str) -> int | None:
    """Line of the first key of `loc` in the file (good enough to find it)."""
    key = loc.split(".")[0]
    if not key:
        return None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(rf"^{re.escape(key)}\s*:", line):
            return n
    return None
