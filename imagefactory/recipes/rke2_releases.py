"""What RKE2 releases accept and ship, per version: a small table, checked against a recipe's
`rke2` section before anything is downloaded or built. A mismatch would otherwise show only on
the node, offline: image pulls failing for a CNI or ingress whose images were not baked, or
`rke2 server` exiting on a profile it does not know.

Sources (upstream rancher/rke2):
- image sets: the release assets `rke2-images-<set>.linux-<arch>.tar.zst` and
  `scripts/build-images` (which images go into which set). `rke2-images.linux-<arch>.tar.zst`
  (images: all) is the legacy full set, core + canal only. From v1.36 traefik is part of core and
  the ingress-nginx images are a set of their own; before, ingress-nginx was part of core and
  traefik a set.
- default ingress: ingress-nginx before v1.36, traefik from v1.36 (`ingress-controller`).
- marker images per set (`scripts/build-images`: the images-<set>.txt lists): what a baked
  tarball must hold for the configuration to run offline; `rke2-runtime` at the release's own
  tag (`DOCKERIZED_VERSION`: the version with `+` as `-`) and `hardened-kubernetes` at
  `<that tag>-build...` (`KUBERNETES_IMAGE_TAG`).
- `profile: cis` (the version-less profile): v1.28.2, backported to v1.27.6, v1.26.9 and v1.25.14
  (the September 2023 releases); older releases know only `cis-1.6`/`cis-1.23`, which imagefactory
  does not bake (`cis-1.23` is fatal in later releases).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from .model import Rke2

CNI_SETS = ("canal", "calico", "cilium", "flannel", "multus")
INGRESS_SPLIT = (1, 36)  # traefik into core, ingress-nginx a set of its own
CIS_PROFILE_SINCE = {(1, 25): 14, (1, 26): 9, (1, 27): 6, (1, 28): 2}  # minor -> first patch
FULL_SET = ("core", "canal")  # what images: all bakes


@dataclass(frozen=True)
class Rke2Problem:
    key: tuple[str | int, ...]  # under `rke2`
    message: str
    hint: str


def parse_version(version: str) -> tuple[int, int, int]:
    m = re.match(r"^v(\d+)\.(\d+)\.(\d+)", version)
    if not m:
        raise ValueError(f"not an RKE2 version: {version}")
    return int(m[1]), int(m[2]), int(m[3])


def _names(value: Any) -> list[str]:
    """`cni`/`ingress-controller` as RKE2 reads them: a list, or a comma-separated string."""
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def sets_known(version: tuple[int, int, int]) -> set[str]:
    """The split image sets this release publishes (harvester/vsphere: amd64, cloud providers)."""
    sets = {"core", *CNI_SETS, "harvester", "vsphere"}
    return sets | ({"ingress-nginx"} if version[:2] >= INGRESS_SPLIT else {"traefik"})


def sets_needed(rke2: Rke2, version: tuple[int, int, int]) -> dict[str, str]:
    """Image set -> why this configuration runs its images."""
    need: dict[str, str] = {}  # core: the recipe model's own check (any version)
    cni = _names(rke2.config.get("cni", "canal"))
    for name in cni:
        if name != "none":
            need[name] = f"cni: {','.join(cni)}"
    default_ingress = "traefik" if version[:2] >= INGRESS_SPLIT else "ingress-nginx"
    ingress = _names(rke2.config.get("ingress-controller", default_ingress))
    for name in ingress:
        if name == "none":
            continue
        in_core = "traefik" if version[:2] >= INGRESS_SPLIT else "ingress-nginx"
        if name != in_core:
            need[name] = f"ingress-controller: {','.join(ingress)}"
    return need


def release_problems(rke2: Rke2, version: str) -> list[Rke2Problem]:
    """Everything in `rke2` that this release would not run offline as configured."""
    v = parse_version(version)
    problems: list[Rke2Problem] = []
    if rke2.profile == "cis":
        first = CIS_PROFILE_SINCE.get(v[:2])
        if v[:2] < (1, 25) or (first is not None and v[2] < first):
            since = f"v{v[0]}.{v[1]}.{first}" if first is not None else "v1.25.14"
            problems.append(Rke2Problem(
                ("profile",), f"RKE2 {version} does not know the 'cis' profile (it came with v1.28.2, "
                f"backported to v1.27.6, v1.26.9, v1.25.14)",
                f"use RKE2 {since} or later, or set rke2.profile: null"))
    known = sets_known(v)
    baked = set(FULL_SET) if rke2.images == "all" else set(rke2.images)
    if rke2.images != "all":
        for i, name in enumerate(rke2.images):
            if name not in known:
                moved = ("traefik is part of core from v1.36" if name == "traefik"
                         else "ingress-nginx is part of core before v1.36" if name == "ingress-nginx" else "")
                problems.append(Rke2Problem(
                    ("images", i), f"RKE2 {version} publishes no '{name}' image set"
                    + (f" ({moved})" if moved else ""),
                    f"remove '{name}'; this release's sets: {', '.join(sorted(known))}"))
    for name, why in sets_needed(rke2, v).items():
        if name not in baked:
            fix = (f"add '{name}' to rke2.images" if rke2.images != "all"
                   else f"list the sets instead of 'all' (the full tarball is {' + '.join(FULL_SET)}), "
                        f"including '{name}'")
            problems.append(Rke2Problem(
                ("images",), f"{why} runs the '{name}' images, which are not baked: offline, "
                "their pulls would fail on the node", fix))
    return problems


# Image set -> repositories whose presence shows the set's images are there (any of a tuple).
# Before v1.36 traefik came as rancher/mirrored-library-traefik (its own set); from v1.36 it is
# rancher/hardened-traefik in core.
SET_MARKERS: dict[str, tuple[tuple[str, ...], ...]] = {
    "canal": (("rancher/hardened-calico",), ("rancher/hardened-flannel",)),
    "calico": (("rancher/mirrored-calico-node",), ("rancher/mirrored-calico-operator",)),
    "cilium": (("rancher/mirrored-cilium-cilium",), ("rancher/mirrored-cilium-operator-generic",)),
    "flannel": (("rancher/hardened-flannel",),),
    "multus": (("rancher/hardened-multus-cni",),),
    "ingress-nginx": (("rancher/nginx-ingress-controller",),),
    "traefik": (("rancher/hardened-traefik", "rancher/mirrored-library-traefik"),),
    "harvester": (("rancher/harvester-cloud-provider",),),
}


@dataclass(frozen=True)
class ImageNeed:
    why: str
    repositories: tuple[str, ...]  # any of them (docker.io/ prefix implied)
    tag_prefix: str | None = None  # exact tag when it does not end with '-'


def _repo_tag(ref: str) -> tuple[str, str]:
    ref = ref.removeprefix("docker.io/")
    repo, _, tag = ref.rpartition(":")
    return (repo, tag) if repo and "/" not in tag else (ref, "")


def images_needed(rke2: Rke2, version: str) -> list[ImageNeed]:
    """What the baked tarballs must hold for this release and configuration to start offline."""
    v = parse_version(version)
    tag = version.replace("+", "-")
    needs = [ImageNeed(f"RKE2 {version} runs its runtime image", ("rancher/rke2-runtime",), tag),
             ImageNeed(f"RKE2 {version} runs its Kubernetes image", ("rancher/hardened-kubernetes",),
                       f"{tag}-")]
    in_core = "traefik" if v[:2] >= INGRESS_SPLIT else "ingress-nginx"
    wanted = dict(sets_needed(rke2, v))
    if in_core in _names(rke2.config.get("ingress-controller", in_core)):
        wanted[in_core] = "ingress-controller (in core)"
    for name, why in wanted.items():
        for repos in SET_MARKERS.get(name, ()):
            needs.append(ImageNeed(f"{why} ({name})", repos))
    return needs


def missing_images(needs: list[ImageNeed], refs: list[str]) -> list[str]:
    """The needs no reference satisfies, as messages."""
    have = [_repo_tag(r) for r in refs]
    out: list[str] = []
    for n in needs:
        def ok(repo: str, tag: str, n: ImageNeed = n) -> bool:
            if repo not in n.repositories:
                return False
            if n.tag_prefix is None:
                return True
            return tag.startswith(n.tag_prefix) if n.tag_prefix.endswith("-") else tag == n.tag_prefix
        if not any(ok(repo, tag) for repo, tag in have):
            want = " or ".join(n.repositories)
            if n.tag_prefix:
                want += f":{n.tag_prefix}{'*' if n.tag_prefix.endswith('-') else ''}"
            out.append(f"{want} ({n.why})")
    return out


# config.yaml keys rke2 reads (rancher/rke2 main, August 2026): `pkg/cli/cmds/server.go` and
# `agent.go` (the k3s flags each copies or hides - dropped ones excluded - and their own flags) and
# `root.go` commonFlag. k3s's configfilearg parser skips any other key with a warning ("Unknown flag
# --KEY found in config.yaml, skipping"): a typo'd hardening setting is silently not applied.
_SERVER_KEYS = """
advertise-address agent-token agent-token-file airgap-extra-registry alsologtostderr bind-address
cluster-cidr cluster-dns cluster-domain cluster-reset cluster-reset-restore-path cni config
container-runtime-endpoint data-dir datastore-cafile datastore-certfile datastore-endpoint
datastore-keyfile debug default-runtime disable disable-agent disable-apiserver
disable-cloud-controller disable-controller-manager disable-default-registry-endpoint disable-etcd
disable-kube-proxy disable-scheduler egress-selector-mode embedded-registry enable-pprof
enable-servicelb etcd-arg etcd-disable-snapshots etcd-expose-metrics etcd-s3 etcd-s3-access-key
etcd-s3-bucket etcd-s3-bucket-lookup-type etcd-s3-config-secret etcd-s3-endpoint etcd-s3-endpoint-ca
etcd-s3-folder etcd-s3-insecure etcd-s3-proxy etcd-s3-region etcd-s3-retention etcd-s3-secret-key
etcd-s3-session-token etcd-s3-skip-ssl-verify etcd-s3-timeout etcd-snapshot-compress etcd-snapshot-dir
etcd-snapshot-name etcd-snapshot-reconcile-interval etcd-snapshot-retention etcd-snapshot-schedule-cron
helm-controller-arg helm-job-image image-credential-provider-bin-dir image-credential-provider-config
ingress-controller kube-apiserver-arg kube-cloud-controller-manager-arg kube-controller-manager-arg
kube-proxy-arg kube-scheduler-arg kubelet-arg lb-server-port log node-external-dns node-external-ip
node-internal-dns node-ip node-label node-name node-taint nonroot-devices prime private-registry
protect-kernel-defaults resolv-conf secrets-encryption secrets-encryption-provider selinux server
service-cidr service-node-port-range servicelb-namespace snapshotter supervisor-metrics
system-default-registry tls-san tls-san-security token token-file v vmodule with-node-id
write-kubeconfig write-kubeconfig-group write-kubeconfig-mode write-kubeconfig-name
"""
_COMMON_KEYS = """
runtime-image kube-apiserver-image kube-controller-manager-image kube-proxy-image kube-scheduler-image
etcd-image pause-image cloud-controller-manager-image kubelet-path cloud-provider-name
cloud-provider-config node-name-from-cloud-provider-metadata profile audit-policy-file
pod-security-admission-config-file control-plane-resource-requests control-plane-resource-limits
control-plane-probe-configuration
"""
_COMPONENTS = ("kube-apiserver", "kube-scheduler", "kube-controller-manager", "kube-proxy", "etcd",
               "cloud-controller-manager")
CONFIG_KEYS = frozenset(_SERVER_KEYS.split()) | frozenset(_COMMON_KEYS.split()) | frozenset(
    f"{c}-extra-{kind}" for c in _COMPONENTS for kind in ("mount", "env"))


def unknown_config_keys(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(key as written, closest known key or "") for every key rke2 would skip."""
    out: list[tuple[str, str]] = []
    for key in config:
        base = key[:-1] if key.endswith("+") else key  # `key+` appends (rke2's drop-in syntax)
        if base not in CONFIG_KEYS:
            close = difflib.get_close_matches(base, sorted(CONFIG_KEYS), n=1)
            out.append((key, close[0] if close else ""))
    return out
