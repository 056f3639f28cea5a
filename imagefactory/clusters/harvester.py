"""An RKE2 cluster as Harvester VMs (what Rancher's node driver does, without Rancher).

Objects, all labelled `imagefactory.io/cluster=<name>`: the image (uploaded if missing, see
`harvester.images`), a KeyPair, a Secret with the cluster token, per VM a cloud-init Secret
(`userdata`/`networkdata`, owned by its VM once it exists) and a KubeVirt VirtualMachine whose
disk comes from the `harvesterhci.io/volumeClaimTemplates` annotation with the image's
`status.storageClassName`. The bootstrap server goes first; its address, read from its VMI,
becomes every joiner's server URL.

Every step looks for its object first, so `create` after a failure continues where it stopped
(the token Secret keeps the token). `delete` tells Harvester which PVCs go with each VM
(`harvesterhci.io/removedPersistentVolumeClaims`) and then removes VMs, Secrets and the KeyPair.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from typing import Any

import yaml

from ..errors import BuildError, UserError
from ..harvester.api import KEYPAIRS, NADS, VMIS, VMS, HarvesterApi
from ..harvester.images import UploadResult
from .common import LABEL, ClusterStatus, NodeStatus, new_token, seed_for, server_url, user_data
from .spec import MASQUERADE, ClusterSpec, Node, nodes

log = logging.getLogger(__name__)
CREATOR = "imagefactory"
# Harvester labels the NetworkAttachmentDefinitions of its VM networks with their cluster network.
CLUSTER_NETWORK_LABEL = "network.harvesterhci.io/clusternetwork"
RESERVED_MEMORY = "harvesterhci.io/reservedMemory"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _size(n: int) -> str:
    return f"{n // 1024**2}Mi" if n % 1024**3 else f"{n // 1024**3}Gi"


class HarvesterCluster:
    def __init__(self, api: HarvesterApi, spec: ClusterSpec, *, poll: float = 5.0,
                 ip_timeout: float = 900.0) -> None:
        self.api = api
        self.spec = spec
        self.poll = poll
        self.ip_timeout = ip_timeout
        self.selector = f"{LABEL}/cluster={spec.name}"
        self.nad: str | None = None  # the VM network, once create() has chosen it

    def _labels(self, role: str | None = None) -> dict[str, str]:
        labels = {f"{LABEL}/cluster": self.spec.name, "harvesterhci.io/creator": CREATOR}
        if role:
            labels[f"{LABEL}/role"] = role
        return labels

    def _guest(self) -> dict[str, str]:
        """The labels by which Harvester knows a guest cluster's VMs (its load balancer's backend
        discovery, the cloud provider): both on the VM and its pods, the creator being the node
        driver's name - Harvester checks that value (`getGuestClusterVMInfo`), and its docs ask
        custom clusters for exactly these two labels."""
        if not self.spec.guest_cluster_labels:
            return {}
        return {"harvesterhci.io/creator": "docker-machine-driver-harvester",
                "guestcluster.harvesterhci.io/name": self.spec.name}

    # --- create ---------------------------------------------------------------------------------

    def create(self, image: UploadResult) -> ClusterStatus:
        spec = self.spec
        for pool, key in ((spec.servers, "servers"), (spec.agents, "agents")):
            if pool.count and image.virtual_size and pool.disk < image.virtual_size:
                raise UserError(f"{key}.disk: {pool.disk} bytes is smaller than the image's virtual size "
                                f"{image.virtual_size} (the guest disk would be corrupt)",
                                hint=f"set {key}.disk to at least {-(-image.virtual_size // 1024**3)}GiB")
        firmware(spec, image)  # an image the chosen firmware cannot boot: before anything is created
        for key, pool in (("servers", spec.servers), ("agents", spec.agents)):
            for i, extra in enumerate(pool.data_disks):
                # Harvester's VM webhook would refuse the VM; a joiner refused after the bootstrap
                # server exists leaves half a cluster
                if pool.count and extra.storage_class and self.api.storage_class(extra.storage_class) is None:
                    raise UserError(f"{key}.data_disks.{i}.storage_class: StorageClass {extra.storage_class} "
                                    "does not exist", hint="create it in Harvester, or leave it unset for "
                                                           "the default StorageClass")
        self.nad = self._network()
        for nad in spec.network.extra_nads:
            ns, name = nad.split("/")
            if self.api.get(NADS, name, ns) is None:
                raise UserError(f"network.extra_nads: NetworkAttachmentDefinition {nad} does not exist",
                                hint="create the VM network in Harvester first")
        token = self._token()
        keypair = self._keypair()
        all_nodes = nodes(spec)
        bootstrap, joiners = all_nodes[0], all_nodes[1:]
        self._vm(bootstrap, image, token, None, keypair)
        ip = self._wait_ips([bootstrap])[bootstrap.name]
        server = server_url(spec, ip)
        log.info("bootstrap server %s is at %s; joining %d node(s) to %s", bootstrap.name, ip, len(joiners),
                 server)
        for node in joiners:
            self._vm(node, image, token, server, keypair)
        self._wait_ips(all_nodes)
        return self.status()

    def _network(self) -> str | None:
        """The NetworkAttachmentDefinition (namespace/name) the VMs attach to, or None for the pod
        network. Unset, a one-node cluster takes the pod network; a larger one takes the
        namespace's only Harvester VM network (see spec.MASQUERADE for why not the pod network)."""
        spec = self.spec
        if spec.network_type == "pod":
            return None
        if spec.network.nad:
            ns, nad = spec.network.nad.split("/")
            if self.api.get(NADS, nad, ns) is None:
                raise UserError(f"network.nad: NetworkAttachmentDefinition {spec.network.nad} does not exist",
                                hint="create the VM network in Harvester first")
            return spec.network.nad
        vm_networks = [f"{n['metadata']['namespace']}/{n['metadata']['name']}"
                       for n in self.api.list_objects(NADS, CLUSTER_NETWORK_LABEL)]
        if len(vm_networks) != 1:
            found = ", ".join(sorted(vm_networks)) or "none"
            raise UserError(f"network: a cluster of {len(nodes(spec))} nodes cannot use the pod network: "
                            f"{MASQUERADE}",
                            hint=f"set network: {{type: vlan, nad: NAMESPACE/NAME}} (Harvester VM "
                                 f"networks in namespace {self.api.namespace}: {found})")
        log.info("network: the VMs attach to %s, the namespace's only VM network (the pod network "
                 "cannot hold a multi-node cluster)", vm_networks[0])
        return vm_networks[0]

    def _token(self) -> str:
        name = f"{self.spec.name}-token"
        existing = self.api.get_secret(name)
        if existing is not None:
            data = (existing.get("data") or {}).get("token")
            if not data:
                raise BuildError(f"secret {self.api.namespace}/{name} has no 'token' key",
                                 hint="delete the cluster and create it again")
            return base64.b64decode(data).decode()
        token = new_token()
        self.api.create_secret({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                "metadata": {"name": name, "labels": self._labels()},
                                "data": {"token": _b64(token)}})
        log.info("cluster token stored in secret %s/%s", self.api.namespace, name)
        return token

    def _keypair(self) -> str | None:
        if not self.spec.ssh_authorized_keys:
            return None
        name = f"{self.spec.name}-ssh"
        if self.api.get(KEYPAIRS, name) is None:
            self.api.create(KEYPAIRS, {"apiVersion": "harvesterhci.io/v1beta1", "kind": "KeyPair",
                                       "metadata": {"name": name, "labels": self._labels()},
                                       "spec": {"publicKey": self.spec.ssh_authorized_keys[0]}})
        return name

    def _nics(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(name, KubeVirt network, KubeVirt interface) per NIC: the cluster network first, then
        one bridge per extra NAD. With several NICs or fixed addresses each gets a MAC of ours,
        so that the guest's network config can name it (PCI order is not a contract)."""
        spec = self.spec
        if self.nad:
            nics: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
                ("nic-0", {"name": "nic-0", "multus": {"networkName": self.nad}},
                 {"name": "nic-0", "model": "virtio", "bridge": {}})]
        else:
            nics = [("default", {"name": "default", "pod": {}},
                     {"name": "default", "model": "virtio", "masquerade": {}})]
        for i, nad in enumerate(spec.network.extra_nads, 1):
            nics.append((f"nic-{i}", {"name": f"nic-{i}", "multus": {"networkName": nad}},
                         {"name": f"nic-{i}", "model": "virtio", "bridge": {}}))
        if len(nics) > 1 or spec.network.addresses:
            for _, _, iface in nics:
                iface["macAddress"] = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        return nics

    def _network_data(self, node: Node, nics: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str:
        """netplan v2 for cloud-init. One NIC on DHCP (pod network or VLAN): any `en*` interface.
        Otherwise per MAC: the first with the node's fixed address (`network.addresses`) or DHCP,
        the extra ones on DHCP and `optional` (the boot does not wait for them)."""
        addresses = self.spec.network.addresses
        if len(nics) == 1 and addresses is None:
            return "version: 2\nethernets:\n  nic0:\n    match: {name: \"en*\"}\n    dhcp4: true\n"
        ethernets: dict[str, Any] = {}
        for i, (_, _, iface) in enumerate(nics):
            eth: dict[str, Any] = {"match": {"macaddress": iface["macAddress"]}}
            if i == 0 and addresses is not None:
                eth["dhcp4"] = False
                eth["addresses"] = [str(addresses.address(node.index))]
                if addresses.gateway:
                    eth["routes"] = [{"to": "default", "via": addresses.gateway}]
                if addresses.dns:
                    eth["nameservers"] = {"addresses": list(addresses.dns)}
            else:
                eth["dhcp4"] = True
                if i > 0:
                    eth["optional"] = True
                    eth["dhcp4-overrides"] = {"use-routes": False, "use-dns": False}
            ethernets[f"nic{i}"] = eth
        return yaml.safe_dump({"version": 2, "ethernets": ethernets}, sort_keys=False)

    def _vm(self, node: Node, image: UploadResult, token: str, server: str | None,
            keypair: str | None) -> None:
        spec, ns = self.spec, self.api.namespace
        if self.api.get(VMS, node.name) is not None:
            log.info("%s exists: kept", node.name)
            return
        secret = f"{node.name}-cloudinit"
        fixed = spec.network.addresses.address(node.index) if spec.network.addresses else None
        # with several NICs RKE2 would take the default route's: pin the cluster network's address
        seed = seed_for(spec, node, token, server=server, node_ip=str(fixed.ip) if fixed else None,
                        keys=spec.ssh_authorized_keys)
        nics = self._nics()
        seed = type(seed)(**{**seed.__dict__, "guest_agent": True})
        if self.api.get_secret(secret) is None:
            self.api.create_secret({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": secret, "labels": {**self._labels(node.role),
                                                        "harvesterhci.io/cloud-init-template": "harvester"}},
                "data": {"userdata": _b64(user_data(seed)),
                         "networkdata": _b64(self._network_data(node, nics))},
            })
        pvc = f"{node.name}-disk-0-{secrets.token_hex(3)[:5]}"
        claims = [{
            "metadata": {"name": pvc,
                         "annotations": {"harvesterhci.io/imageId": f"{image.namespace}/{image.name}"}},
            "spec": {"accessModes": ["ReadWriteMany"], "volumeMode": "Block",
                     "resources": {"requests": {"storage": _size(int(node.pool.disk))}},
                     "storageClassName": image.storage_class},
        }]
        disks: list[dict[str, Any]] = [{"name": "disk-0", "bootOrder": 1, "disk": {"bus": "virtio"}}]
        volumes: list[dict[str, Any]] = [{"name": "disk-0", "persistentVolumeClaim": {"claimName": pvc}}]
        for i, extra in enumerate(node.pool.data_disks, 1):
            # Empty Longhorn volumes, as Harvester's UI makes them: block mode, RWX (live migration);
            # without storageClassName the PVC gets the cluster's default StorageClass.
            claim_name = f"{node.name}-disk-{i}-{secrets.token_hex(3)[:5]}"
            claims.append({"metadata": {"name": claim_name},
                           "spec": {"accessModes": ["ReadWriteMany"], "volumeMode": "Block",
                                    "resources": {"requests": {"storage": _size(int(extra.size))}},
                                    **({"storageClassName": extra.storage_class} if extra.storage_class
                                       else {})}})
            disks.append({"name": f"disk-{i}", "disk": {"bus": "virtio"}})
            volumes.append({"name": f"disk-{i}", "persistentVolumeClaim": {"claimName": claim_name}})
        networks = [net for _, net, _ in nics]
        interfaces = [iface for _, _, iface in nics]
        cores = node.pool.cpu
        pool = "servers" if node.is_server else "agents"
        body = {
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {
                "name": node.name, "namespace": ns, "labels": {**self._labels(node.role), **self._guest()},
                "annotations": {"harvesterhci.io/volumeClaimTemplates": json.dumps(claims),
                                # Harvester's VM mutator gives the guest limits.memory minus this
                                **({RESERVED_MEMORY: _size(int(node.pool.reserved_memory))}
                                   if node.pool.reserved_memory else {}),
                                f"{LABEL}/image": image.ref},
            },
            "spec": {
                "runStrategy": "RerunOnFailure",
                "template": {
                    "metadata": {
                        "labels": {"harvesterhci.io/vmName": node.name, f"{LABEL}/cluster": spec.name,
                                   f"{LABEL}/pool": pool, **self._guest()},
                        "annotations": ({"harvesterhci.io/sshNames": json.dumps([f"{ns}/{keypair}"])}
                                        if keypair else {}),
                    },
                    "spec": {
                        **anti_affinity(spec.name, pool, node.pool.anti_affinity),
                        "hostname": node.name,
                        "evictionStrategy": "LiveMigrateIfPossible",
                        "domain": {
                            **firmware(spec, image),
                            "cpu": {"cores": cores, "sockets": 1, "threads": 1},
                            "resources": {"limits": {"cpu": str(cores),
                                                     "memory": _size(int(node.pool.memory))}},
                            "devices": {
                                "disks": [*disks, {"name": "cloudinitdisk", "disk": {"bus": "virtio"}}],
                                "interfaces": interfaces,
                                # non-persistent: a persistent vTPM needs KubeVirt's VMPersistentState gate
                                **({"tpm": {}} if spec.tpm else {}),
                            },
                        },
                        "networks": networks,
                        "volumes": [
                            *volumes,
                            {"name": "cloudinitdisk", "cloudInitNoCloud": {
                                "secretRef": {"name": secret}, "networkDataSecretRef": {"name": secret}}},
                        ],
                    },
                },
            },
        }
        vm = self.api.create(VMS, body)
        # Owned by the VM from now on: Kubernetes deletes the seed with it.
        self.api.patch_secret(secret, {"metadata": {"ownerReferences": [{
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": node.name,
            "uid": vm["metadata"]["uid"]}]}})
        log.info("created VM %s/%s (%s, %d vCPU, %s, disk %s)", ns, node.name, node.role, cores,
                 _size(int(node.pool.memory)), _size(int(node.pool.disk)))

    def _wait_ips(self, wanted: list[Node]) -> dict[str, str]:
        deadline = time.monotonic() + self.ip_timeout
        while True:
            ips: dict[str, str] = {}
            pending: list[str] = []
            for node in wanted:
                vmi = self.api.get(VMIS, node.name)
                ip = _vmi_ip(vmi) if vmi else None
                if vmi and (vmi.get("status") or {}).get("phase") == "Running" and ip:
                    ips[node.name] = ip
                else:
                    phase = (vmi.get("status") or {}).get("phase", "?") if vmi else "no VMI yet"
                    pending.append(f"{node.name} ({phase}{', no IP' if vmi and not ip else ''})")
            if not pending:
                return ips
            if time.monotonic() > deadline:
                raise BuildError(f"cluster {self.spec.name}: not running with an IP after "
                                 f"{self.ip_timeout:.0f} s: {', '.join(pending)}",
                                 hint="check the VMs in Harvester (is qemu-guest-agent in the image, is the "
                                      "network's DHCP up?); 'cluster create' again continues, "
                                      "'cluster delete' removes what exists")
            time.sleep(self.poll)

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        vms = self.api.list_objects(VMS, self.selector)
        rows = []
        for vm in sorted(vms, key=lambda v: v["metadata"]["name"]):
            name = vm["metadata"]["name"]
            vmi = self.api.get(VMIS, name)
            st = (vmi or {}).get("status") or {}
            rows.append(NodeStatus(
                name=name, role=vm["metadata"].get("labels", {}).get(f"{LABEL}/role", "?"),
                phase=st.get("phase") or (vm.get("status") or {}).get("printableStatus") or "Stopped",
                ip=_vmi_ip(vmi) if vmi else None,
                detail=(vm.get("status") or {}).get("printableStatus", "")))
        return ClusterStatus(self.spec.name, "harvester", rows, exists=bool(vms) or self._leftovers())

    def _leftovers(self) -> bool:
        return bool(self.api.list_secrets(self.selector))

    # --- delete ---------------------------------------------------------------------------------

    def delete(self, timeout: float = 600.0) -> list[str]:
        removed: list[str] = []
        for vm in self.api.list_objects(VMS, self.selector):
            name = vm["metadata"]["name"]
            claims = json.loads((vm["metadata"].get("annotations") or {})
                                .get("harvesterhci.io/volumeClaimTemplates", "[]"))
            pvcs = ",".join(c["metadata"]["name"] for c in claims)
            if pvcs:
                # Annotation-made PVCs have no owner: this tells Harvester to delete them with the VM.
                self.api.patch(VMS, name, {"metadata": {"annotations": {
                    "harvesterhci.io/removedPersistentVolumeClaims": pvcs}}})
            self.api.delete(VMS, name)
            removed.append(f"virtualmachine/{name}")
        deadline = time.monotonic() + timeout
        while self.api.list_objects(VMS, self.selector):
            if time.monotonic() > deadline:
                raise BuildError(f"cluster {self.spec.name}: VMs still exist {timeout:.0f} s after deletion")
            time.sleep(self.poll)
        for s in self.api.list_secrets(self.selector):
            if self.api.delete_secret(s["metadata"]["name"]):
                removed.append(f"secret/{s['metadata']['name']}")
        for kp in self.api.list_objects(KEYPAIRS, self.selector):
            if self.api.delete(KEYPAIRS, kp["metadata"]["name"]):
                removed.append(f"keypair/{kp['metadata']['name']}")
        return removed


def _vmi_ip(vmi: dict[str, Any] | None) -> str | None:
    """The first non-link-local IPv4 address of the first interface (what the node driver uses)."""
    for iface in ((vmi or {}).get("status") or {}).get("interfaces") or []:
        for ip in [iface.get("ipAddress"), *(iface.get("ipAddresses") or [])]:
            if ip and "." in ip and not ip.startswith("169.254."):
                return str(ip)
        break
    return None



def firmware(spec: ClusterSpec, image: UploadResult) -> dict[str, Any]:
    """The VM's firmware (KubeVirt `domain.firmware`/`features`) for the image's declared boot.

    KubeVirt defaults an EFI bootloader's `secureBoot` to true and refuses Secure Boot without SMM
    (virt-api's validating webhook), so both are always spelled out."""
    declared = image.firmware or "bios"  # a manifest from before `boot` was recorded: BIOS, as before
    wanted = spec.firmware
    if wanted == "auto":
        wanted = "uefi" if declared in ("uefi", "hybrid") else "bios"
    if wanted == "bios" and declared == "uefi":
        raise UserError(f"{image.ref} boots on UEFI only; firmware: bios would not boot it",
                        hint="remove 'firmware' from the cluster spec (auto) or set firmware: uefi")
    if wanted == "uefi" and declared == "bios":
        raise UserError(f"{image.ref} has no EFI system partition; firmware: uefi would not boot it",
                        hint="remove 'firmware' from the cluster spec (auto) or set firmware: bios")
    if wanted == "bios":
        return {}
    secure = image.secure_boot
    out: dict[str, Any] = {"firmware": {"bootloader": {"efi": {"secureBoot": secure}}}}
    if secure:
        out["features"] = {"smm": {"enabled": True}}
    return out


def anti_affinity(cluster: str, pool: str, mode: str) -> dict[str, Any]:
    """The VMI's `affinity` keeping a pool's VMs on different Harvester hosts. Harvester's own VM
    builder sets a soft pod anti-affinity on every VM it creates (pkg/builder/vm.go
    DefaultPodAntiAffinity: weight 100, topology kubernetes.io/hostname); here it is scoped to
    this cluster's pool, so that losing one host never takes two etcd members (servers)."""
    if mode == "none":
        return {}
    term = {"labelSelector": {"matchLabels": {f"{LABEL}/cluster": cluster, f"{LABEL}/pool": pool}},
            "topologyKey": "kubernetes.io/hostname"}
    if mode == "required":
        return {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}}
    return {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": term}]}}}
