"""RKE2 baked for air-gapped sites: upstream install.sh in offline mode, verified image tarballs,
static hardened configuration, CIS prerequisites; units installed but disabled, never started.

Per-node settings (token, server, node name/IP, TLS SANs) are written at first boot by the
`rke2-firstboot` helper baked here (see `imagefactory.firstboot`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from ..artifacts import Artifact
from ..context import BuildContext, Step
from ..errors import BuildError
from ..firstboot import FIRSTBOOT_PATH, render_firstboot_script
from ..recipes.model import Recipe

STAGING = "var/tmp/imagefactory-rke2"  # inside the root: install.sh runs in the chroot
IMAGES_DIR = "var/lib/rancher/rke2/agent/images"
AUDIT_POLICY = "/etc/rancher/rke2/audit-policy.yaml"

# Static hardening from the RKE2 STIG V2R1 (see README, "RKE2 configuration baked").
STIG_CONFIG: dict[str, Any] = {
    "write-kubeconfig-mode": "0640",  # CNTR-R2-000520
    "secrets-encryption": True,  # CNTR-R2-001500
    "audit-policy-file": AUDIT_POLICY,  # CNTR-R2-000060
    "kube-apiserver-arg": [
        "tls-min-version=VersionTLS12",  # CNTR-R2-000010
        "tls-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,"
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "anonymous-auth=false",  # CNTR-R2-000160
        "authorization-mode=RBAC,Node",  # CNTR-R2-001270
        "audit-log-mode=blocking-strict",  # CNTR-R2-000060
        "audit-log-maxage=30",  # CNTR-R2-000320
    ],
    "kube-controller-manager-arg": [
        "tls-min-version=VersionTLS12",
        "bind-address=127.0.0.1",  # CNTR-R2-000100
        "use-service-account-credentials=true",  # CNTR-R2-000030
    ],
    "kube-scheduler-arg": ["tls-min-version=VersionTLS12"],
    "kubelet-arg": [
        "anonymous-auth=false",  # CNTR-R2-000110
        "read-only-port=0",  # CNTR-R2-000130
        "authorization-mode=Webhook",  # CNTR-R2-000150
        "streaming-connection-idle-timeout=5m",  # CNTR-R2-000890
        "protect-kernel-defaults=true",  # CNTR-R2-000940 (needs the CIS sysctls)
    ],
}
AUDIT_POLICY_YAML = """\
# Written by imagefactory: log request metadata for everything (RKE2 STIG CNTR-R2-000060).
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
  - level: Metadata
"""
NM_DROPIN = """\
# Written by imagefactory: let the CNI own its interfaces (RKE2 docs, canal/calico).
[keyfile]
unmanaged-devices=interface-name:flannel*;interface-name:cali*;interface-name:tunl*;interface-name:vxlan.calico;interface-name:vxlan-v6.calico;interface-name:wireguard.cali;interface-name:wg-v6.cali
"""


def static_config(ctx: BuildContext) -> dict[str, Any]:
    """config.yaml: STIG defaults, then the recipe's keys (`key+` appends to a list)."""
    r = ctx.recipe.rke2
    assert r is not None
    cfg: dict[str, Any] = json.loads(json.dumps(STIG_CONFIG))
    if r.profile:
        cfg["profile"] = r.profile
    if r.selinux:
        cfg["selinux"] = True
    for key, value in r.config.items():
        if key.endswith("+"):
            base = key[:-1]
            cfg[base] = [*cfg.get(base, []), *(value if isinstance(value, list) else [value])]
        else:
            cfg[key] = value
    return cfg


def _artifacts(ctx: BuildContext, *roles: str) -> list[Artifact]:
    return [a for a in ctx.locked if a.role in roles]


def _write(path: Path, text: str, mode: int) -> None:
    """`text` into `path` with `mode` from the first byte (registries.yaml holds registry
    credentials: never readable by others, not even briefly); a link at `path` is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode & 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), mode & 0o600)  # an existing file keeps its mode through O_CREAT
        f.write(text)
        f.flush()
        os.fchmod(f.fileno(), mode)


def install_rke2(ctx: BuildContext) -> None:
    r = ctx.recipe.rke2
    assert r is not None
    staging = ctx.root / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    # Only the bundle and the sums file go where install.sh looks: it would copy image tarballs
    # (and .txt pull lists!) unverified; we place the verified tarballs ourselves below.
    for a in _artifacts(ctx, "rke2-sums", "rke2-bundle", "rke2-install"):
        shutil.copyfile(ctx.fetcher.get(a, ctx.recipe.name), staging / a.name)
    prefix = r.install_prefix or ctx.distro.rke2_prefix
    ctx.in_root(["sh", f"/{STAGING}/install.sh"], env={
        "INSTALL_RKE2_ARTIFACT_PATH": f"/{STAGING}",
        "INSTALL_RKE2_SKIP_RELOAD": "1",
        "INSTALL_RKE2_TAR_PREFIX": prefix,
        "INSTALL_RKE2_METHOD": "tar",
        "INSTALL_RKE2_VERSION": ctx.lock_entry["rke2"]["version"],
    })
    shutil.rmtree(staging)
    images = ctx.root / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    for a in _artifacts(ctx, "rke2-images"):
        shutil.copyfile(ctx.fetcher.get(a, ctx.recipe.name), images / a.name)
        (images / a.name).chmod(0o644)
    # Empty = "import only changed archives" (RKE2 >= 1.31.9); never one written by a run.
    (images / ".cache.json").write_bytes(b"")
    ctx.manifest["rke2"] = {"version": ctx.lock_entry["rke2"]["version"], "prefix": prefix,
                            "images": sorted(a.name for a in _artifacts(ctx, "rke2-images"))}


def configure_rke2(ctx: BuildContext) -> None:
    r = ctx.recipe.rke2
    assert r is not None
    prefix = r.install_prefix or ctx.distro.rke2_prefix
    etc = ctx.root / "etc/rancher/rke2"
    _write(etc / "config.yaml", "# Written by imagefactory: static settings only; per-node settings\n"
           "# arrive at first boot in config.yaml.d/50-join.yaml.\n"
           + yaml.safe_dump(static_config(ctx), sort_keys=True), 0o600)
    _write(ctx.root / AUDIT_POLICY.lstrip("/"), AUDIT_POLICY_YAML, 0o600)
    if r.registries:
        _write(etc / "registries.yaml", yaml.safe_dump(r.registries, sort_keys=True), 0o600)
    (etc / "config.yaml.d").mkdir(exist_ok=True)
    etc.chmod(0o700)
    cis = ctx.root / prefix.lstrip("/") / "share/rke2/rke2-cis-sysctl.conf"
    if not cis.is_file():
        raise BuildError(f"{prefix}/share/rke2/rke2-cis-sysctl.conf missing after install.sh")
    # A drop-in only: sysctl values apply at the guest's boot, never to the build host.
    shutil.copyfile(cis, ctx.root / "etc/sysctl.d/60-rke2-cis.conf")
    passwd = (ctx.root / "etc/passwd").read_text()
    if not any(line.startswith("etcd:") for line in passwd.splitlines()):
        ctx.in_root(["useradd", "-r", "-c", "etcd user", "-s", "/sbin/nologin", "-M", "-U", "etcd"])
    if (ctx.root / "etc/NetworkManager").is_dir():
        _write(ctx.root / "etc/NetworkManager/conf.d/rke2-canal.conf", NM_DROPIN, 0o644)
    units = ("rke2-server.service", "rke2-agent.service")
    ctx.in_root(["systemctl", "disable", *units])
    for unit in units:
        state = ctx.in_root(["systemctl", "is-enabled", unit], check=False).stdout.strip()
        if state == "enabled":
            raise BuildError(f"{unit} is enabled: a clone would start a stray cluster")
    zarf = f"{ctx.distro.zarf_dir}/zarf" if ctx.recipe.zarf else None
    _write(ctx.root / FIRSTBOOT_PATH.lstrip("/"), render_firstboot_script(prefix=prefix, zarf=zarf), 0o755)


def install_zarf(ctx: BuildContext) -> None:
    z = ctx.recipe.zarf
    assert z is not None
    target = ctx.root / ctx.distro.zarf_dir.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    for a in _artifacts(ctx, "zarf-package"):
        (target / "packages").mkdir(exist_ok=True)
        shutil.copyfile(ctx.fetcher.get(a, ctx.recipe.name), target / "packages" / a.name)
        (target / "packages" / a.name).chmod(0o644)
    for a in _artifacts(ctx, "zarf-binary", "zarf-init"):
        src = ctx.fetcher.get(a, ctx.recipe.name)
        if a.role == "zarf-binary":
            shutil.copyfile(src, target / "zarf")
            (target / "zarf").chmod(0o755)
        else:
            # Beside the binary, under its exact upstream name: `zarf init` looks there.
            shutil.copyfile(src, target / a.name)
            (target / a.name).chmod(0o644)
    ctx.manifest["zarf"] = {"version": z.version, "dir": ctx.distro.zarf_dir,
                            "init_package": [a.name for a in _artifacts(ctx, "zarf-init")],
                            "packages": [a.name for a in _artifacts(ctx, "zarf-package")]}


def fetch_inputs(ctx: BuildContext) -> None:
    """Every locked artifact, verified against the lock and its upstream sums file, before the
    build starts spending minutes (and so that a missing one is reported first)."""
    for a in ctx.locked:
        ctx.fetcher.get(a, ctx.recipe.name)
    ctx.fetcher.verify_against_sums(ctx.locked, ctx.recipe.name)


def steps(recipe: Recipe) -> list[Step]:
    """The RKE2/Zarf steps a recipe needs (none without rke2/zarf), run inside the chroot."""
    out: list[Step] = []
    if recipe.rke2:
        out += [Step("install-rke2", install_rke2), Step("configure-rke2", configure_rke2)]
    if recipe.zarf:
        out.append(Step("install-zarf", install_zarf))
    return out
