"""Stand-in RKE2 and Zarf release assets, laid out exactly like the upstream download URLs.

``make_rke2_release(root)`` writes ``root/rancher/rke2/releases/download/<quote(version)>/...`` (the
GitHub release download path; ``+`` is stored as ``%2B``, exactly as in the URL) and the matching
``root/rancher/rke2/<quote(version)>/install.sh`` (raw.githubusercontent.com/rancher/rke2/<tag>/install.sh).
``make_zarf_release(root)`` writes ``root/zarf-dev/zarf/releases/download/<version>/...``.

Every archive is real (gzip tar, zstd tar) but tiny, and the checksum files use ``sha256sum`` format.
The executables inside are POSIX sh stand-ins whose texts live in ``scripts/*.in``; see their headers
for the environment variables they honour.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import k8s_flags

SCRIPTS = Path(__file__).resolve().parent / "scripts"

RKE2_DOWNLOAD = "rancher/rke2/releases/download"
RKE2_SOURCE = "rancher/rke2"
ZARF_DOWNLOAD = "zarf-dev/zarf/releases/download"

DEFAULT_RKE2_VERSION = "v1.31.4+rke2r1"
DEFAULT_ZARF_VERSION = "v0.84.0"
DEFAULT_IMAGE_SETS = ("core", "canal", "calico", "cilium", "multus")

CIS_SYSCTLS = {
    "vm.panic_on_oom": "0",
    "vm.overcommit_memory": "1",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
}

# Fixed mtime so that the same inputs always give byte-identical archives (stable checksums).
_MTIME = 1_700_000_000


@dataclass(frozen=True)
class Rke2Release:
    version: str
    arch: str
    directory: Path
    install_sh: Path
    sha256: dict[str, str] = field(hash=False)
    images: tuple[str, ...]

    @property
    def bundle_name(self) -> str:
        return f"rke2.linux-{self.arch}.tar.gz"

    @property
    def sums_name(self) -> str:
        return f"sha256sum-{self.arch}.txt"

    @property
    def images_name(self) -> str:
        return f"rke2-images.linux-{self.arch}.tar.zst"

    def image_set_name(self, name: str) -> str:
        return f"rke2-images-{name}.linux-{self.arch}.tar.zst"


@dataclass(frozen=True)
class ZarfRelease:
    version: str
    arch: str
    directory: Path
    binary_name: str
    init_name: str
    sha256: dict[str, str] = field(hash=False)


def version_dirname(version: str) -> str:
    """The path segment of a version in a URL and on disk (``+`` -> ``%2B``)."""
    return quote(version, safe="")


def image_tag(version: str) -> str:
    """Container image tag of an RKE2 version (``v1.31.4+rke2r1`` -> ``v1.31.4-rke2r1``)."""
    return version.replace("+", "-")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _template(name: str, **subs: str) -> str:
    text = (SCRIPTS / name).read_text()
    for key, value in subs.items():
        text = text.replace(f"@{key}@", value)
    return text


def rke2_script(version: str) -> str:
    """The stand-in ``bin/rke2`` (also the bare ``rke2.linux-<arch>`` asset), with the component
    flag table of ``k8s_flags`` embedded (it checks ``kube-apiserver-arg`` & co. against it)."""
    kubectl = _template("kubectl.in", RKE2_VERSION=version).rstrip("\n")
    return _template("rke2.in", RKE2_VERSION=version, KUBECTL=kubectl, K8S_FLAGS=k8s_flags.table_json())


def install_script(version: str) -> str:
    return _template("install.sh.in", RKE2_VERSION=version)


def zarf_script(version: str, arch: str) -> str:
    return _template("zarf.in", ZARF_VERSION=version, ZARF_ARCH=arch)


# --- archives -------------------------------------------------------------------------------------


def _tar_bytes(members: Iterable[tuple[str, bytes | None, int]]) -> bytes:
    """An uncompressed tar of (name, data or None for a directory, mode), owned by root, fixed mtime."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mtime = _MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _write_tar_gz(path: Path, members: Iterable[tuple[str, bytes | None, int]]) -> None:
    raw = _tar_bytes(members)
    with path.open("wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(raw)


def zstd_compress(data: bytes) -> bytes:
    """zstd-compress with the ``zstd`` CLI (the ``zstandard`` module is not a dependency)."""
    exe = shutil.which("zstd")
    if exe is None:
        raise RuntimeError("the zstd command is needed to build stand-in .tar.zst assets")
    # upstream compresses image tarballs with --long=25; a tiny input keeps a tiny window anyway
    return subprocess.run(
        [exe, "-q", "-c", "--long=25", "-19"], input=data, stdout=subprocess.PIPE, check=True
    ).stdout


def _write_tar_zst(path: Path, members: Iterable[tuple[str, bytes | None, int]]) -> None:
    path.write_bytes(zstd_compress(_tar_bytes(members)))


def _write_sums(path: Path, directory: Path, names: Iterable[str]) -> None:
    lines = [f"{sha256_file(directory / n)}  {n}\n" for n in sorted(names)]
    path.write_text("".join(lines))


# --- RKE2 -----------------------------------------------------------------------------------------


def image_list(name: str, version: str, arch: str = "amd64") -> list[str]:
    """A plausible image list for an RKE2 image set (``core``, ``canal``, ...)."""
    tag = image_tag(version)
    build = "build20250101"
    sets: dict[str, list[str]] = {
        "core": [
            f"docker.io/rancher/hardened-addon-resizer:1.8.20-{build}",
            f"docker.io/rancher/hardened-cluster-autoscaler:v1.8.11-{build}",
            f"docker.io/rancher/hardened-coredns:v1.12.0-{build}",
            f"docker.io/rancher/hardened-dns-node-cache:1.24.0-{build}",
            f"docker.io/rancher/hardened-etcd:v3.5.16-k3s1-{build}",
            f"docker.io/rancher/hardened-k8s-metrics-server:v0.7.2-{build}",
            f"docker.io/rancher/hardened-kubernetes:{tag}-{build}",
            "docker.io/rancher/klipper-helm:v0.9.3-build20241008",
            "docker.io/rancher/klipper-lb:v0.4.9",
            "docker.io/rancher/mirrored-pause:3.6",
            "docker.io/rancher/mirrored-sig-storage-snapshot-controller:v8.1.0",
            "docker.io/rancher/nginx-ingress-controller:v1.10.6-hardened1",
            "docker.io/rancher/rke2-cloud-provider:v1.31.2-0.20241016053446-0955fa330f90-build20241016",
            f"docker.io/rancher/rke2-runtime:{tag}",
        ],
        "canal": [
            f"docker.io/rancher/hardened-calico:v3.29.1-{build}",
            f"docker.io/rancher/hardened-flannel:v0.26.1-{build}",
        ],
        "calico": [
            "docker.io/rancher/mirrored-calico-operator:v1.36.2",
            "docker.io/rancher/mirrored-calico-ctl:v3.29.1",
            "docker.io/rancher/mirrored-calico-kube-controllers:v3.29.1",
            "docker.io/rancher/mirrored-calico-typha:v3.29.1",
            "docker.io/rancher/mirrored-calico-node:v3.29.1",
            "docker.io/rancher/mirrored-calico-pod2daemon-flexvol:v3.29.1",
            "docker.io/rancher/mirrored-calico-cni:v3.29.1",
            "docker.io/rancher/mirrored-calico-apiserver:v3.29.1",
        ],
        "cilium": [
            "docker.io/rancher/mirrored-cilium-certgen:v0.2.0",
            "docker.io/rancher/mirrored-cilium-cilium:v1.16.4",
            "docker.io/rancher/mirrored-cilium-cilium-envoy:v1.30.7-1731393961-5ff7b5e1",
            "docker.io/rancher/mirrored-cilium-operator-generic:v1.16.4",
            "docker.io/rancher/mirrored-cilium-hubble-relay:v1.16.4",
        ],
        "flannel": [f"docker.io/rancher/hardened-flannel:v0.26.1-{build}"],
        "multus": [
            f"docker.io/rancher/hardened-multus-cni:v4.1.3-{build}",
            f"docker.io/rancher/hardened-cni-plugins:v1.6.0-{build}",
            f"docker.io/rancher/hardened-whereabouts:v0.8.0-{build}",
            "docker.io/rancher/mirrored-library-busybox:1.36.1",
        ],
        "traefik": ["docker.io/rancher/mirrored-library-traefik:3.1.4"],
        "harvester": [
            "docker.io/rancher/harvester-cloud-provider:v0.2.2",
            "docker.io/rancher/harvester-csi-driver:v0.1.7",
        ],
        "vsphere": [
            "docker.io/rancher/mirrored-cloud-provider-vsphere-cpi-release-manager:v1.31.0",
            "docker.io/rancher/mirrored-cloud-provider-vsphere-csi-release-driver:v3.3.1",
        ],
        "ingress-nginx": ["docker.io/rancher/nginx-ingress-controller:v1.10.6-hardened1"],
    }
    minor = tuple(int(x) for x in version.lstrip("v").split(".")[:2])
    if minor >= (1, 36):  # scripts/build-images: traefik (hardened) in core, ingress-nginx a set
        sets["core"] = [i for i in sets["core"] if "nginx-ingress" not in i] + [
            f"docker.io/rancher/hardened-traefik:v3.7.11-{build}"]
        del sets["traefik"]
    return sets.get(name, [f"docker.io/rancher/mirrored-{name}:{tag}"])


def _image_archive_members(images: list[str], arch: str) -> list[tuple[str, bytes | None, int]]:
    """A tiny docker-archive look-alike: manifest.json naming the images, plus one dummy layer."""
    layer = f"stand-in image layer ({arch})\n".encode()
    layer_name = hashlib.sha256(layer).hexdigest() + "/layer.tar"
    manifest = [{"Config": "standin.json", "RepoTags": images, "Layers": [layer_name]}]
    return [
        ("manifest.json", json.dumps(manifest, indent=1).encode(), 0o644),
        ("standin.json", json.dumps({"architecture": arch, "os": "linux"}).encode(), 0o644),
        (layer_name, layer, 0o644),
    ]


def _unit(role: str) -> str:
    other = "agent" if role == "server" else "server"
    return f"""[Unit]
Description=Rancher Kubernetes Engine v2 ({role})
Documentation=https://github.com/rancher/rke2#readme
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-/usr/local/lib/systemd/system/rke2-{role}.env
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecCondition=/bin/sh -c 'if systemctl is-active --quiet rke2-{other}.service; then echo "Error: rke2-{other} is running!"; exit 1; fi'
ExecStartPre=/bin/sh -xc '! /usr/bin/systemctl is-enabled --quiet nm-cloud-setup.service'
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/rke2 {role}
ExecStopPost=-/bin/sh -c "systemd-cgls /system.slice/%n | grep -Eo '[0-9]+ (containerd|kubelet)' | awk '{{print $1}}' | xargs -r kill"
"""  # noqa: E501


_KILLALL = """#!/bin/sh
# TEST STAND-IN for rke2-killall.sh: harmless, it only says what the real one does.
echo "+ rke2-killall.sh stand-in: the real script stops rke2 units, kills containerd-shims and unmounts"
exit 0
"""

_UNINSTALL = """#!/bin/sh
# TEST STAND-IN for rke2-uninstall.sh: harmless, it removes nothing.
# install.sh sed-edits the next line when it installs to a non-default INSTALL_RKE2_TAR_PREFIX.
RKE2_TAR_PREFIX=/usr/local
echo "+ rke2-uninstall.sh stand-in: the real script removes ${RKE2_TAR_PREFIX}/bin/rke2, units and data"
exit 0
"""

_LICENSE = """                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/

(stand-in copy for tests; the real release ships the full Apache-2.0 text)
"""


def bundle_members(version: str) -> list[tuple[str, bytes | None, int]]:
    """The members of ``rke2.linux-<arch>.tar.gz``, relative to the install prefix."""
    sysctl = "".join(f"{k}={v}\n" for k, v in CIS_SYSCTLS.items())
    return [
        ("bin/", None, 0o755),
        ("bin/rke2", rke2_script(version).encode(), 0o755),
        ("bin/rke2-killall.sh", _KILLALL.encode(), 0o755),
        ("bin/rke2-uninstall.sh", _UNINSTALL.encode(), 0o755),
        ("lib/", None, 0o755),
        ("lib/systemd/", None, 0o755),
        ("lib/systemd/system/", None, 0o755),
        ("lib/systemd/system/rke2-agent.env", b"HOME=/root\n", 0o644),
        ("lib/systemd/system/rke2-agent.service", _unit("agent").encode(), 0o644),
        ("lib/systemd/system/rke2-server.env", b"HOME=/root\n", 0o644),
        ("lib/systemd/system/rke2-server.service", _unit("server").encode(), 0o644),
        ("share/", None, 0o755),
        ("share/rke2/", None, 0o755),
        ("share/rke2/LICENSE.txt", _LICENSE.encode(), 0o644),
        ("share/rke2/rke2-cis-sysctl.conf", sysctl.encode(), 0o644),
    ]


def make_rke2_release(
    root: Path,
    version: str = DEFAULT_RKE2_VERSION,
    arch: str = "amd64",
    images: tuple[str, ...] = DEFAULT_IMAGE_SETS,
) -> Rke2Release:
    """Write a stand-in RKE2 release for ``version``/``arch`` under ``root`` (see module docstring)."""
    d = root / RKE2_DOWNLOAD / version_dirname(version)
    d.mkdir(parents=True, exist_ok=True)
    names: list[str] = []

    bundle = f"rke2.linux-{arch}.tar.gz"
    _write_tar_gz(d / bundle, bundle_members(version))
    names.append(bundle)

    binary = f"rke2.linux-{arch}"
    (d / binary).write_text(rke2_script(version))
    (d / binary).chmod(0o755)
    names.append(binary)

    full = image_list("core", version, arch) + image_list("canal", version, arch)
    _write_tar_zst(d / f"rke2-images.linux-{arch}.tar.zst", _image_archive_members(full, arch))
    (d / f"rke2-images.linux-{arch}.txt").write_text("".join(f"{i}\n" for i in full))
    names += [f"rke2-images.linux-{arch}.tar.zst", f"rke2-images.linux-{arch}.txt"]

    for name in images:
        lst = image_list(name, version, arch)
        _write_tar_zst(d / f"rke2-images-{name}.linux-{arch}.tar.zst", _image_archive_members(lst, arch))
        (d / f"rke2-images-{name}.linux-{arch}.txt").write_text("".join(f"{i}\n" for i in lst))
        names += [f"rke2-images-{name}.linux-{arch}.tar.zst", f"rke2-images-{name}.linux-{arch}.txt"]

    sums = f"sha256sum-{arch}.txt"
    _write_sums(d / sums, d, names)

    install_sh = root / RKE2_SOURCE / version_dirname(version) / "install.sh"
    install_sh.parent.mkdir(parents=True, exist_ok=True)
    install_sh.write_text(install_script(version))
    install_sh.chmod(0o755)

    make_rke2_rpm_repo(root)
    sha = {n: sha256_file(d / n) for n in [*names, sums]}
    return Rke2Release(
        version=version, arch=arch, directory=d, install_sh=install_sh, sha256=sha, images=tuple(images)
    )


# --- Zarf -----------------------------------------------------------------------------------------


def _zarf_init_members(version: str, arch: str) -> list[tuple[str, bytes | None, int]]:
    injector = _tar_bytes([("zarf-injector/standin.txt", b"stand-in injector\n", 0o644)])
    checksums = f"{hashlib.sha256(injector).hexdigest()} components/zarf-injector.tar\n".encode()
    aggregate = hashlib.sha256(checksums).hexdigest()
    zarf_yaml = f"""kind: ZarfInitConfig
metadata:
  name: init
  description: Used to establish a new Zarf cluster (stand-in)
  version: {version}
  architecture: {arch}
  aggregateChecksum: {aggregate}
build:
  terminal: standin
  user: standin
  architecture: {arch}
  timestamp: Tue, 14 Nov 2023 22:13:20 +0000
  version: {version}
components:
  - name: zarf-injector
    required: true
  - name: zarf-seed-registry
    required: true
  - name: zarf-registry
    required: true
  - name: zarf-agent
    required: true
  - name: git-server
"""
    return [
        ("zarf.yaml", zarf_yaml.encode(), 0o644),
        ("checksums.txt", checksums, 0o644),
        ("components/", None, 0o755),
        ("components/zarf-injector.tar", injector, 0o644),
    ]


def make_zarf_release(root: Path, version: str = DEFAULT_ZARF_VERSION, arch: str = "amd64") -> ZarfRelease:
    """Write a stand-in Zarf release under ``root/zarf-dev/zarf/releases/download/<version>``."""
    d = root / ZARF_DOWNLOAD / version
    d.mkdir(parents=True, exist_ok=True)
    binary = f"zarf_{version}_Linux_{arch}"
    (d / binary).write_text(zarf_script(version, arch))
    (d / binary).chmod(0o755)
    init = f"zarf-init-{arch}-{version}.tar.zst"
    _write_tar_zst(d / init, _zarf_init_members(version, arch))
    _write_sums(d / "checksums.txt", d, [binary, init])
    sha = {n: sha256_file(d / n) for n in (binary, init, "checksums.txt")}
    return ZarfRelease(
        version=version, arch=arch, directory=d, binary_name=binary, init_name=init, sha256=sha
    )


# --- Zarf packages (zarf package create's layout, v0.84.0 src/pkg/packager/layout) ----------------


def cosign_key_pair() -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """What `cosign generate-key-pair` makes: ECDSA P-256; the public half as PEM `PUBLIC KEY`."""
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return public, private


def sigstore_bundle(message: bytes, private: ec.EllipticCurvePrivateKey) -> bytes:
    """A key-signed Sigstore bundle (v0.3) over ``message``, as cosign sign-blob --bundle writes it
    for zarf (no transparency-log entry: zarf signs and verifies offline, IgnoreTlog)."""
    signature = private.sign(message, ec.ECDSA(hashes.SHA256()))
    return json.dumps({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": ""}},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256",
                              "digest": base64.b64encode(hashlib.sha256(message).digest()).decode()},
            "signature": base64.b64encode(signature).decode()},
    }, indent=1).encode()


def make_zarf_package(path: Path, name: str, version: str = "1.0.0", arch: str = "amd64", *,
                      sign: ec.EllipticCurvePrivateKey | None = None, legacy: bool = False,
                      extra: dict[str, bytes] | None = None) -> Path:
    """A Zarf package file as `zarf package create` lays it out: zarf.yaml with
    metadata.aggregateChecksum (sha256 of checksums.txt), checksums.txt over every other file, a
    component tarball, and with ``sign`` a cosign signature of zarf.yaml (the bundle format since
    v0.71 with build.signed and build.provenanceFiles, or the legacy zarf.yaml.sig). ``extra`` adds
    files *after* the checksums were taken (a tampered package). `.tar.zst` or `.tar` by the name."""
    component = _tar_bytes([(f"{name}/manifests/standin.yaml", b"kind: ConfigMap\n", 0o644)])
    files = {f"components/{name}.tar": component}
    checksums = "".join(f"{hashlib.sha256(b).hexdigest()} {n}\n" for n, b in sorted(files.items()))
    signed = ""
    if sign is not None:
        signed = "  signed: true\n" + ("" if legacy else "  provenanceFiles:\n    - zarf.bundle.sig\n")
    zarf_yaml = (f"kind: ZarfPackageConfig\nmetadata:\n  name: {name}\n  version: {version}\n"
                 f"  architecture: {arch}\n  aggregateChecksum: "
                 f"{hashlib.sha256(checksums.encode()).hexdigest()}\nbuild:\n  terminal: standin\n"
                 f"  user: standin\n  architecture: {arch}\n  timestamp: Tue, 14 Nov 2023 22:13:20 "
                 f"+0000\n  version: {DEFAULT_ZARF_VERSION}\n{signed}components:\n  - name: {name}\n"
                 "    required: true\n").encode()
    members: list[tuple[str, bytes | None, int]] = [
        ("zarf.yaml", zarf_yaml, 0o644), ("checksums.txt", checksums.encode(), 0o644),
        ("components/", None, 0o755), *[(n, b, 0o644) for n, b in files.items()]]
    if sign is not None and legacy:
        sig = base64.b64encode(sign.sign(zarf_yaml, ec.ECDSA(hashes.SHA256())))
        members.append(("zarf.yaml.sig", sig, 0o644))
    elif sign is not None:
        members.append(("zarf.bundle.sig", sigstore_bundle(zarf_yaml, sign), 0o644))
    members += [(n, b, 0o644) for n, b in (extra or {}).items()]
    data = _tar_bytes(members)
    path.write_bytes(zstd_compress(data) if path.name.endswith(".zst") else data)
    return path


def tamper_zarf_yaml(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    """``src`` with ``old`` replaced by ``new`` in zarf.yaml, everything else (signature,
    checksums) kept: what a package altered after signing looks like."""
    raw = src.read_bytes()
    if src.name.endswith(".zst"):
        raw = subprocess.run(["zstd", "-dcq"], input=raw, capture_output=True, check=True).stdout
    members: list[tuple[str, bytes | None, int]] = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m)
            body = f.read() if f else None
            if m.name == "zarf.yaml" and body is not None:
                assert old in body, (old, body)
                body = body.replace(old, new)
            members.append((m.name + ("/" if m.isdir() else ""), body, m.mode))
    data = _tar_bytes(members)
    dst.write_bytes(zstd_compress(data) if dst.name.endswith(".zst") else data)
    return dst


# --- rpm.rancher.io: rke2-selinux ------------------------------------------------------------------

RKE2_RPM = "rpm"  # the mirror path standing for https://rpm.rancher.io (upstream_bases: rke2_rpm)
RKE2_SELINUX_BUILDS = (("0.17", "1.slemicro"), ("0.18", "1.slemicro"), ("0.9", "1.slemicro"))


def make_rke2_rpm_repo(root: Path) -> dict[str, str]:
    """rpm.rancher.io's layout for rke2-selinux (install.sh: ``rke2/<channel>/common/<infix>/noarch``)
    with createrepo's metadata: ``repodata/repomd.xml`` naming ``primary.xml.gz`` by sha256, which
    lists each build with its sha256. Several builds (the newest by rpmvercmp is 0.18, not 0.9);
    the ``.rpm`` files are stand-ins (not valid RPMs), and ``public.key`` a stand-in key text.
    Returns {file name: sha256} of the packages."""
    base = root / RKE2_RPM
    (base / "public.key").parent.mkdir(parents=True, exist_ok=True)
    (base / "public.key").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\nstand-in rancher rpm key\n"
                                     "-----END PGP PUBLIC KEY BLOCK-----\n")
    out = {}
    for channel in ("stable", "latest"):
        repo = base / "rke2" / channel / "common" / "slemicro" / "noarch"
        (repo / "repodata").mkdir(parents=True, exist_ok=True)
        pkgs = []
        for ver, rel in RKE2_SELINUX_BUILDS:
            name = f"rke2-selinux-{ver}-{rel}.noarch.rpm"
            data = f"stand-in rpm {name} ({channel})\n".encode()
            (repo / name).write_bytes(data)
            sha = hashlib.sha256(data).hexdigest()
            out[f"{channel}/{name}"] = sha
            pkgs.append(f"""<package type="rpm"><name>rke2-selinux</name><arch>noarch</arch>
<version epoch="0" ver="{ver}" rel="{rel}"/><checksum type="sha256" pkgid="YES">{sha}</checksum>
<location href="{name}"/></package>""")
        primary = gzip.compress((f'<?xml version="1.0" encoding="UTF-8"?>\n<metadata xmlns='
                                 f'"http://linux.duke.edu/metadata/common" packages="{len(pkgs)}">\n'
                                 + "\n".join(pkgs) + "\n</metadata>\n").encode(), mtime=0)
        psha = hashlib.sha256(primary).hexdigest()
        (repo / "repodata" / f"{psha}-primary.xml.gz").write_bytes(primary)
        (repo / "repodata" / "repomd.xml").write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n<repomd xmlns="http://linux.duke.edu/metadata/repo">\n'
            f'<data type="primary"><checksum type="sha256">{psha}</checksum>'
            f'<location href="repodata/{psha}-primary.xml.gz"/></data>\n</repomd>\n')
    return out
