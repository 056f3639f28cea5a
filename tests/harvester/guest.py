"""What the guests of the double's VMs would see of their network, and what RKE2 inside them would
register as node IPs - so that a cluster that could not form on a real Harvester fails here too.

KubeVirt (pkg/network: masquerade binding) NATs a VM on the pod network behind its virt-launcher
pod: the guest's DHCP lease is always 10.0.2.2/24 in the default `vmNetworkCIDR` 10.0.2.0/24
(gateway 10.0.2.1), the same in every VM, while the VMI status reports the *pod's* address for
that interface (which the guest does not have). A bridge binding on a Multus network (a Harvester
VM network) gives the guest the address the network's DHCP hands out, which the VMI status
reports through the guest agent.

RKE2 (k3s `pkg/util` GetHostnameAndIPs / `--node-ip`) registers the node with `node-ip` from its
config when set, else the address of the interface of the default route: on masquerade that is
10.0.2.2 in every VM. A `node-ip` that is not an address of the guest makes etcd and the
supervisor fail to bind. Two nodes with one node IP cannot form a cluster: etcd peer URLs, kubelet
endpoints and the CNI's tunnel endpoints would all point at the node itself.

Not modelled: anything else inside the guest (RKE2 itself, DHCP timing, IPv6, several NICs,
the default route's choice among them - the first interface is taken).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from .double import HarvesterDouble

MASQUERADE_GUEST_ADDRESS = "10.0.2.2"
JOIN_CONFIG = "/etc/rancher/rke2/config.yaml.d/"


def static_addresses(network_data: str | None) -> dict[str, str]:
    """MAC -> fixed IPv4 address of a netplan v2 network config (cloud-init's `networkdata`):
    what a bridge NIC's guest has, and its guest agent reports, instead of a DHCP lease."""
    try:
        doc = yaml.safe_load(network_data or "") or {}
    except yaml.YAMLError:
        return {}
    out: dict[str, str] = {}
    for eth in ((doc.get("ethernets") or {}) if isinstance(doc, dict) else {}).values():
        mac = ((eth or {}).get("match") or {}).get("macaddress")
        addrs = (eth or {}).get("addresses") or []
        if mac and addrs and not eth.get("dhcp4"):
            out[str(mac).lower()] = str(addrs[0]).split("/")[0]
    return out


def network_data(secret: dict[str, Any] | None) -> str | None:
    data = (secret or {}).get("data") or {}
    return base64.b64decode(data["networkdata"]).decode() if "networkdata" in data else None


def guest_addresses(vm: dict[str, Any], vmi: dict[str, Any] | None) -> list[str]:
    """The IPv4 addresses the guest itself has, one per interface, in interface order."""
    tpl = ((vm.get("spec") or {}).get("template") or {}).get("spec") or {}
    status = (vmi or {}).get("status") or {}
    reported = {i.get("name"): i.get("ipAddress") for i in status.get("interfaces") or []}
    out = []
    for iface in ((tpl.get("domain") or {}).get("devices") or {}).get("interfaces") or []:
        if "masquerade" in iface:
            out.append(MASQUERADE_GUEST_ADDRESS)
        elif reported.get(iface.get("name")):
            out.append(str(reported[iface.get("name")]))
    return out


def _join_config(h: HarvesterDouble, vm: dict[str, Any]) -> dict[str, Any]:
    """The RKE2 join drop-in the VM's cloud-init user-data writes (firstboot's 50-join.yaml)."""
    tpl = ((vm.get("spec") or {}).get("template") or {}).get("spec") or {}
    for vol in tpl.get("volumes") or []:
        ref = ((vol.get("cloudInitNoCloud") or {}).get("secretRef") or {}).get("name")
        if not ref:
            continue
        secret = h.get_object("secrets", vm["metadata"]["namespace"], ref)
        if not secret or "userdata" not in (secret.get("data") or {}):
            continue
        ud = yaml.safe_load(base64.b64decode(secret["data"]["userdata"]))  # "#cloud-config" is a comment
        for f in (ud or {}).get("write_files") or []:
            if str(f.get("path", "")).startswith(JOIN_CONFIG):
                cfg = yaml.safe_load(f.get("content") or "")
                return cfg if isinstance(cfg, dict) else {}
    return {}


def _running(h: HarvesterDouble, namespace: str) -> Iterator[tuple[str, str | None, list[str]]]:
    """(VM name, its pinned node-ip or None, the guest's addresses) per running VM."""
    for vm in h.objects("virtualmachines", namespace):
        name = vm["metadata"]["name"]
        vmi = h.get_object("virtualmachineinstances", namespace, name)
        if vmi and (vmi.get("status") or {}).get("phase") == "Running":
            pinned = _join_config(h, vm).get("node-ip")
            yield name, str(pinned) if pinned else None, guest_addresses(vm, vmi)


def rke2_node_ips(h: HarvesterDouble, namespace: str = "default") -> dict[str, str | None]:
    """Per running VM: the node IP RKE2 would register (None: the guest has no address yet)."""
    return {name: pinned or (addresses[0] if addresses else None)
            for name, pinned, addresses in _running(h, namespace)}


def cluster_problems(h: HarvesterDouble, namespace: str = "default") -> list[str]:
    """Why the RKE2 nodes on the double's VMs would not form one cluster ([] when they would)."""
    problems = []
    by_ip: dict[str, list[str]] = {}
    for name, pinned, addresses in _running(h, namespace):
        if pinned and pinned not in addresses:
            problems.append(f"{name}: node-ip {pinned} is not an address of the guest "
                            f"({', '.join(addresses)})")
        ip = pinned or (addresses[0] if addresses else None)
        if ip:
            by_ip.setdefault(ip, []).append(name)
    for ip, names in sorted(by_ip.items()):
        if len(names) > 1:
            problems.append(f"{', '.join(sorted(names))} all register node IP {ip}")
    return problems
