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
from ..recipes.rke2_releases import unknown_config_keys

_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,28}[a-z0-9])?$")
_NAD = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?/[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
GiB = 1024**3


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_SC_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class DataDisk(_Model):
    size: ByteSize = Field(description="e.g. 50GiB")
    storage_class: str | None = Field(
        None, description="harvester: the StorageClass of this disk (unset: the cluster's default, "
                          "harvester-longhorn unless changed)")

    @field_validator("size")
    @classmethod
    def _size(cls, v: ByteSize) -> ByteSize:
        if v < 1024**3:
            raise ValueError("at least 1GiB")
        return v

    @field_validator("storage_class")
    @classmethod
    def _sc(cls, v: str | None) -> str | None:
        if v is not None and not _SC_NAME.match(v):
            raise ValueError(f"'{v}' is not a StorageClass name")
        return v


class NodePool(_Model):
    count: int = Field(1, ge=0, le=15)
    cpu: int = Field(2, ge=1, le=64)
    memory: ByteSize = Field(ByteSize(4 * GiB), description="guest memory, e.g. 4GiB")
    disk: ByteSize = Field(ByteSize(20 * GiB), description="root disk; at least the image's virtual size")
    reserved_memory: ByteSize | None = Field(
        None, description="harvester: memory kept from the guest for the VM's own overhead "
                          "(annotation harvesterhci.io/reservedMemory; unset: Harvester's default)")
    data_disks: tuple[DataDisk, ...] = Field(
        (), description="harvester: extra empty disks per VM (block volumes, virtio, after the root "
                        "disk), e.g. [{size: 100GiB, storage_class: longhorn-ssd}]")
    anti_affinity: Literal["preferred", "required", "none"] = Field(
        "preferred", description="harvester: keep this pool's VMs on different hosts (required: never "
                                 "two on one host; VMs stay Pending when hosts run out)")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: ByteSize) -> ByteSize:
        if v < 512 * 1024**2:
            raise ValueError("at least 512MiB")
        return v

    @model_validator(mode="after")
    def _reserved(self) -> NodePool:
        if self.reserved_memory is not None and not 0 < self.reserved_memory < self.memory // 2:
            raise ValueError(f"reserved_memory: {self.reserved_memory} bytes must be more than 0 and less "
                             f"than half of memory ({self.memory})")
        return self


# Why a multi-node RKE2 cluster cannot live on Harvester's pod network: KubeVirt's masquerade
# binding NATs each VM behind its pod and gives every guest the same address (10.0.2.2 in its
# default 10.0.2.0/24; the VMI status shows the pod IP, which the guest does not have). RKE2
# takes its node IP from the guest's interface, so every node registers as 10.0.2.2: etcd peers,
# kubelet endpoints and the CNI's tunnel endpoints all point at the node itself.
MASQUERADE = ("KubeVirt's masquerade binding gives every VM on the pod network the same guest address "
              "(10.0.2.2), so every RKE2 node would register with that node IP and the nodes could not "
              "reach each other")


def _ipv4_network(v: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(v)
    except ValueError as e:
        raise ValueError(str(e)) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError("an IPv4 subnet")
    return net


class StaticAddresses(_Model):
    """Fixed node addresses on a VM network without DHCP (Harvester has no IPAM): node N of the
    cluster (creation order, the bootstrap server first) gets `cidr`'s network address + `first`
    + N."""

    cidr: str = Field(description="the VM network's subnet, e.g. 10.5.0.0/24")
    first: int = Field(11, ge=1, description="host number of the first node")
    gateway: str | None = Field(None, description="default route (unset: none, an isolated network)")
    dns: tuple[str, ...] = Field((), description="name servers")

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        _ipv4_network(v)
        return v

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ipaddress.IPv4Address(v)
            except ValueError:
                raise ValueError(f"'{v}' is not an IPv4 address") from None
        return v

    @field_validator("dns")
    @classmethod
    def _dns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for a in v:
            try:
                ipaddress.ip_address(a)
            except ValueError:
                raise ValueError(f"'{a}' is not an IP address") from None
        return v

    def address(self, index: int) -> ipaddress.IPv4Interface:
        net = ipaddress.IPv4Network(self.cidr)
        return ipaddress.IPv4Interface(f"{net.network_address + self.first + index}/{net.prefixlen}")


class Network(_Model):
    type: Literal["pod", "vlan", "private"] | None = Field(
        None, description="harvester: vlan (a NetworkAttachmentDefinition; the default for more than "
        "one node: the namespace's only Harvester VM network) or pod (masquerade; single-node "
        "clusters only, their default); libvirt: private (a link between the VMs, host side on "
        "127.0.0.1)")
    nad: str | None = Field(None, description="vlan: the NetworkAttachmentDefinition as namespace/name")
    addresses: StaticAddresses | None = Field(
        None, description="vlan: fixed node addresses instead of DHCP (the node IP RKE2 registers)")
    extra_nads: tuple[str, ...] = Field(
        (), description="harvester: more NICs, one per NetworkAttachmentDefinition (DHCP, optional: "
                        "the boot does not wait for them), e.g. a storage network")
    cidr: str = Field("10.77.0.0/24", description="private: the node subnet on the link between the VMs")

    @field_validator("nad")
    @classmethod
    def _nad(cls, v: str | None) -> str | None:
        if v is not None and not _NAD.match(v):
            raise ValueError(f"'{v}' is not namespace/name")
        return v

    @field_validator("extra_nads")
    @classmethod
    def _extra(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for nad in v:
            if not _NAD.match(nad):
                raise ValueError(f"'{nad}' is not namespace/name")
        if len(set(v)) != len(v):
            raise ValueError("a NetworkAttachmentDefinition is named twice")
        return v

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        if _ipv4_network(v).prefixlen > 26:
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
        unknown = unknown_config_keys(v)
        if unknown:
            raise ValueError("; ".join(f"rke2 has no '{k}' setting (it would skip it with a warning)"
                                       + (f": did you mean '{c}'?" if c else "") for k, c in unknown))
        return v


class ZarfOptions(_Model):
    init: bool = True
    storage_class: str | None = Field(None, description="StorageClass for the registry PVC; none: no PVC")
    deploy_packages: bool = False


_CREDENTIAL_KEYS = ("username", "password", "auth", "identity_token")
REGISTRY_CA_DIR = "/etc/rancher/rke2/registry-ca"


class RegistryConfig(_Model):
    """One registry's entry in RKE2's registries.yaml `configs`, with its secrets in files beside
    the spec (read at `cluster create`, delivered in the node's user-data, never in the image)."""

    auth_file: str | None = Field(None, description="YAML file with username+password, auth or "
                                  "identity_token (RKE2's auth keys), relative to the spec; keep it 0600")
    ca_file: str | None = Field(None, description="PEM CA bundle the registry's certificate chains to, "
                                "relative to the spec; written to " + REGISTRY_CA_DIR)
    insecure_skip_verify: bool = Field(False, description="refused: TLS verification stays on")

    @field_validator("insecure_skip_verify")
    @classmethod
    def _verify(cls, v: bool) -> bool:
        if v:
            raise ValueError("TLS verification stays on: give the registry's CA as ca_file")
        return v


class Registries(_Model):
    mirrors: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="RKE2 registries.yaml `mirrors` (endpoint, rewrite)")
    configs: dict[str, RegistryConfig] = Field(default_factory=dict)

    @field_validator("mirrors")
    @classmethod
    def _mirrors(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for host, m in v.items():
            endpoints = m.get("endpoint", [])
            if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
                raise ValueError(f"mirrors.{host}.endpoint: a list of registry URLs")
            unknown = sorted(set(m) - {"endpoint", "rewrite"})
            if unknown:
                raise ValueError(f"mirrors.{host}: unknown keys {', '.join(unknown)} (endpoint, rewrite)")
        return v


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
    firmware: Literal["auto", "bios", "uefi"] = Field(
        "auto", description="harvester: auto = what the image declares (UEFI with Secure Boot when it "
        "supports UEFI and was built for Secure Boot; BIOS for a BIOS-only or older image)")
    guest_cluster_labels: bool = Field(
        True, description="harvester: label the VMs as a guest cluster the way Rancher's node driver "
                          "does (guestcluster.harvesterhci.io/name, creator "
                          "docker-machine-driver-harvester), so that Harvester's load balancer and "
                          "cloud provider find them")
    tpm: bool = Field(False, description="harvester: give every VM a virtual TPM 2.0 (KubeVirt "
                      "`domain.devices.tpm`, not persistent: measured boot, not sealed secrets)")
    registries: Registries | None = Field(
        None, description="registries.yaml written at first boot (replaces one baked in the image)")
    libvirt: LibvirtOptions = LibvirtOptions()
    directory: Path = Field(Path("."), exclude=True, description="set by load_spec: files are relative to it")

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
            if self.network.addresses is not None:
                if self.network_type != "vlan":
                    raise ValueError("network.addresses: fixed addresses are for a vlan network "
                                     "(network.nad); the pod network's guests all have 10.0.2.2")
                subnet = ipaddress.ip_network(self.network.addresses.cidr)
                last = self.network.addresses.address(self.servers.count + self.agents.count - 1)
                if last.ip not in subnet or last.ip == subnet.broadcast_address:
                    raise ValueError(f"network.addresses: {self.network.addresses.cidr} has no room for "
                                     f"{self.servers.count + self.agents.count} nodes from host "
                                     f"{self.network.addresses.first}")
            if net == "pod" and self.servers.count + self.agents.count > 1:
                raise ValueError(f"network.type: pod: {MASQUERADE}; use a vlan network (network.nad) "
                                 "for a cluster of more than one node")
        elif net in ("pod", "vlan"):
            raise ValueError(f"network.type: '{net}' exists on Harvester only; libvirt uses 'private'")
        elif self.network.addresses is not None or self.network.extra_nads:
            raise ValueError("network.addresses/extra_nads: Harvester only (libvirt: network.cidr)")
        else:
            if self.tpm:
                raise ValueError("tpm: Harvester only (the libvirt clones have no swtpm)")
            for key, pool in (("servers", self.servers), ("agents", self.agents)):
                if pool.data_disks:
                    raise ValueError(f"{key}.data_disks: Harvester only (libvirt clones have their one disk)")
                if pool.reserved_memory is not None:
                    raise ValueError(f"{key}.reserved_memory: Harvester only")
        hosts = ipaddress.ip_network(self.network.cidr).num_addresses - 2
        if self.servers.count + self.agents.count + 10 > hosts:
            raise ValueError("network.cidr: too small for the nodes (addresses start at .11)")
        return self

    @property
    def network_type(self) -> str:
        """The declared type, else the default: libvirt `private`; Harvester `vlan` when a NAD is
        named or the cluster has more than one node (MASQUERADE), else `pod`."""
        if self.network.type:
            return self.network.type
        if self.target != "harvester":
            return "private"
        return "vlan" if self.network.nad or self.servers.count + self.agents.count > 1 else "pod"


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
        spec = ClusterSpec.model_validate({**data, "directory": path.parent})
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
    problems = []
    for host, cfg in (spec.registries.configs.items() if spec.registries else ()):
        for key in ("auth_file", "ca_file"):
            try:
                if getattr(cfg, key):
                    _registry_file(spec, host, key)
            except UserError as e:
                problems.append(Problem(str(path), _line(path, "registries"),
                                        f"registries.configs.{host}.{key}", e.message, e.hint or ""))
    if problems:
        raise ValidationError(problems)
    return spec


def _registry_file(spec: ClusterSpec, host: str, key: str) -> str:
    """The content of a registry's auth_file or ca_file, checked: credentials as RKE2 takes them,
    a CA as PEM certificates."""
    assert spec.registries is not None
    rel: str = getattr(spec.registries.configs[host], key)
    path: Path = spec.directory / rel
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{rel}: cannot read it ({getattr(e, 'strerror', None) or e})",
                        hint="paths are relative to the cluster spec") from None
    if key == "ca_file":
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise UserError(f"{rel}: not a PEM certificate bundle", hint="the registry's CA, PEM")
        return text
    try:
        auth = yaml.safe_load(text)
    except yaml.YAMLError:
        auth = None
    if not isinstance(auth, dict) or not auth or set(auth) - set(_CREDENTIAL_KEYS) or \
            not all(isinstance(v, str) and v for v in auth.values()) or \
            (("username" in auth) != ("password" in auth)):
        # the message never quotes the file: it holds a secret
        raise UserError(f"{rel}: not registry credentials",
                        hint="a YAML mapping of username + password, or auth, or identity_token")
    return text


def registries_seed(spec: ClusterSpec) -> tuple[str, tuple[tuple[str, str, str], ...]] | None:
    """registries.yaml and the CA files for every node's user-data (path, content, permissions)."""
    if spec.registries is None:
        return None
    doc: dict[str, Any] = {}
    files: list[tuple[str, str, str]] = []
    if spec.registries.mirrors:
        doc["mirrors"] = spec.registries.mirrors
    configs: dict[str, Any] = {}
    for host, cfg in spec.registries.configs.items():
        entry: dict[str, Any] = {}
        if cfg.auth_file:
            entry["auth"] = yaml.safe_load(_registry_file(spec, host, "auth_file"))
        if cfg.ca_file:
            ca = f"{REGISTRY_CA_DIR}/{re.sub(r'[^A-Za-z0-9._-]', '_', host)}.crt"
            files.append((ca, _registry_file(spec, host, "ca_file"), "0644"))
            entry["tls"] = {"ca_file": ca}
        configs[host] = entry
    if configs:
        doc["configs"] = configs
    return yaml.safe_dump(doc, sort_keys=True), tuple(files)


def _line(path: Path, loc: str) -> int | None:
    """Line of the first key of `loc` in the file (good enough to find it)."""
    key = loc.split(".")[0]
    if not key:
        return None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(rf"^{re.escape(key)}\s*:", line):
            return n
    return None
