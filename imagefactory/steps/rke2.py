"""RKE2 baked for air-gapped sites: upstream install.sh in offline mode, verified image tarballs,
static hardened configuration, CIS prerequisites; units installed but disabled, never started.

Per-node settings (token, server, node name/IP, TLS SANs) are written at first boot by the
`rke2-firstboot` helper baked here (see `imagefactory.firstboot`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from typing import Any

import yaml

from ..artifacts import Artifact
from ..context import BuildContext, Step
from ..errors import BuildError
from ..firstboot import FIRSTBOOT_PATH, render_firstboot_script
from ..fsutil import copy_into_root, mkdir_in_root, read_in_root, resolve_in_root, write_in_root
from ..recipes.model import Recipe
from ..recipes.rke2_releases import images_needed, missing_images
from ..tarballs import ArchiveProblem, image_refs
from ..zarf_packages import PackageProblem, PublicKey, check_package, read_key

STAGING = "var/tmp/imagefactory-rke2"  # inside the root: install.sh runs in the chroot
IMAGES_DIR = "var/lib/rancher/rke2/agent/images"
AUDIT_POLICY = "/etc/rancher/rke2/audit-policy.yaml"
VERIFY_KEY = "/etc/imagefactory/zarf-verify.pub"  # zarf.verify.key, baked (a public key)

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


def _checked_image_tarballs(ctx: BuildContext) -> dict[str, list[str]]:
    """The images inside each locked tarball, and a build error unless the runtime at the locked
    tag and the images of the configured CNI and ingress are among them: the sha256 only proves
    the file is the one locked, not that it is the one this configuration needs offline."""
    r = ctx.recipe.rke2
    assert r is not None
    version = ctx.lock_entry["rke2"]["version"]
    contents: dict[str, list[str]] = {}
    for a in _artifacts(ctx, "rke2-images"):
        try:
            contents[a.name] = image_refs(ctx.fetcher.get(a, ctx.recipe.name))
        except ArchiveProblem as e:
            raise BuildError(f"RKE2 image tarball {a.name}: {e}",
                             hint="re-download it ('imagefactory artifacts fetch')") from None
    missing = missing_images(images_needed(r, version), [i for refs in contents.values() for i in refs])
    if missing:
        raise BuildError(f"the baked RKE2 image tarballs ({', '.join(sorted(contents))}) lack: "
                         + "; ".join(missing),
                         hint="check rke2.images against rke2.config cni/ingress-controller and the "
                              "locked version ('imagefactory lock update')")
    return contents


def install_rke2(ctx: BuildContext) -> None:
    r = ctx.recipe.rke2
    assert r is not None
    preloaded = _checked_image_tarballs(ctx)  # before minutes go into install.sh
    # Every path below is resolved inside the image root (fsutil): links a base image holds
    # never reach the build host.
    staging = mkdir_in_root(ctx.root, STAGING)
    # Only the bundle and the sums file go where install.sh looks: it would copy image tarballs
    # (and .txt pull lists!) unverified; we place the verified tarballs ourselves below.
    for a in _artifacts(ctx, "rke2-sums", "rke2-bundle", "rke2-install"):
        copy_into_root(ctx.fetcher.get(a, ctx.recipe.name), ctx.root, f"{STAGING}/{a.name}")
    prefix = r.install_prefix or ctx.distro.rke2_prefix
    ctx.in_root(["sh", f"/{STAGING}/install.sh"], env={
        "INSTALL_RKE2_ARTIFACT_PATH": f"/{STAGING}",
        "INSTALL_RKE2_SKIP_RELOAD": "1",
        "INSTALL_RKE2_TAR_PREFIX": prefix,
        "INSTALL_RKE2_METHOD": "tar",
        "INSTALL_RKE2_VERSION": ctx.lock_entry["rke2"]["version"],
    })
    shutil.rmtree(staging)
    for a in _artifacts(ctx, "rke2-images"):
        copy_into_root(ctx.fetcher.get(a, ctx.recipe.name), ctx.root, f"{IMAGES_DIR}/{a.name}")
    # Empty = "import only changed archives" (RKE2 >= 1.31.9); never one written by a run.
    write_in_root(ctx.root, f"{IMAGES_DIR}/.cache.json", b"")
    ctx.manifest["rke2"] = {"version": ctx.lock_entry["rke2"]["version"], "prefix": prefix,
                            "images": sorted(a.name for a in _artifacts(ctx, "rke2-images")),
                            "preloaded": preloaded}


def configure_rke2(ctx: BuildContext) -> None:
    r = ctx.recipe.rke2
    assert r is not None
    prefix = r.install_prefix or ctx.distro.rke2_prefix
    # registries.yaml holds registry credentials: 0600 from the first byte (write_in_root).
    etc = "etc/rancher/rke2"
    write_in_root(ctx.root, f"{etc}/config.yaml",
                  "# Written by imagefactory: static settings only; per-node settings\n"
                  "# arrive at first boot in config.yaml.d/50-join.yaml.\n"
                  + yaml.safe_dump(static_config(ctx), sort_keys=True), 0o600)
    write_in_root(ctx.root, AUDIT_POLICY, AUDIT_POLICY_YAML, 0o600)
    if r.registries:
        write_in_root(ctx.root, f"{etc}/registries.yaml", yaml.safe_dump(r.registries, sort_keys=True), 0o600)
    mkdir_in_root(ctx.root, f"{etc}/config.yaml.d")
    resolve_in_root(ctx.root, etc).chmod(0o700)
    cis = read_in_root(ctx.root, f"{prefix}/share/rke2/rke2-cis-sysctl.conf")
    if cis is None:
        raise BuildError(f"{prefix}/share/rke2/rke2-cis-sysctl.conf missing after install.sh")
    # A drop-in only: sysctl values apply at the guest's boot, never to the build host.
    write_in_root(ctx.root, "etc/sysctl.d/60-rke2-cis.conf", cis)
    passwd = read_in_root(ctx.root, "etc/passwd") or ""
    if not any(line.startswith("etcd:") for line in passwd.splitlines()):
        ctx.in_root(["useradd", "-r", "-c", "etcd user", "-s", "/sbin/nologin", "-M", "-U", "etcd"])
    if resolve_in_root(ctx.root, "etc/NetworkManager").is_dir():
        write_in_root(ctx.root, "etc/NetworkManager/conf.d/rke2-canal.conf", NM_DROPIN, 0o644)
    units = ("rke2-server.service", "rke2-agent.service")
    ctx.in_root(["systemctl", "disable", *units])
    for unit in units:
        state = ctx.in_root(["systemctl", "is-enabled", unit], check=False).stdout.strip()
        if state == "enabled":
            raise BuildError(f"{unit} is enabled: a clone would start a stray cluster")
    z = ctx.recipe.zarf
    zarf = f"{ctx.distro.zarf_dir}/zarf" if z else None
    verify_key = VERIFY_KEY if z and z.verify else None
    write_in_root(ctx.root, FIRSTBOOT_PATH,
                  render_firstboot_script(prefix=prefix, zarf=zarf, verify_key=verify_key), 0o755)


def _checked_packages(ctx: BuildContext, key: PublicKey | None) -> dict[str, dict[str, Any]]:
    """Every baked package (and the init package) checked as `zarf package deploy` checks it:
    a corrupt or, with zarf.verify, unsigned/wrongly signed package fails the build here rather
    than the site's first boot."""
    z = ctx.recipe.zarf
    assert z is not None
    out: dict[str, dict[str, Any]] = {}
    for a in _artifacts(ctx, "zarf-init", "zarf-package"):
        try:
            # the init package is Zarf's own (verified by its release's checksums.txt), not the site's
            check = check_package(ctx.fetcher.get(a, ctx.recipe.name),
                                  key if a.role == "zarf-package" else None)
        except PackageProblem as e:
            hint = ("re-sign it with the key zarf.verify.key names, or fix the key"
                    if z.verify and a.role == "zarf-package" else "rebuild or re-download the package")
            raise BuildError(f"zarf package {a.name}: {e}", hint=hint) from None
        out[a.name] = check.to_json()
    return out


def install_zarf(ctx: BuildContext) -> None:
    z = ctx.recipe.zarf
    assert z is not None
    target = ctx.distro.zarf_dir
    # the key file is read once: checked, baked and hashed from the same bytes
    key_data, key = read_key(ctx.loaded.directory, z.verify.key) if z.verify else (b"", None)
    checked = _checked_packages(ctx, key)
    mkdir_in_root(ctx.root, target)
    for a in _artifacts(ctx, "zarf-package"):
        copy_into_root(ctx.fetcher.get(a, ctx.recipe.name), ctx.root, f"{target}/packages/{a.name}")
    if z.verify:
        write_in_root(ctx.root, VERIFY_KEY.lstrip("/"), key_data, 0o644)
    for a in _artifacts(ctx, "zarf-binary", "zarf-init"):
        src = ctx.fetcher.get(a, ctx.recipe.name)
        if a.role == "zarf-binary":
            copy_into_root(src, ctx.root, f"{target}/zarf", 0o755)
        else:
            # Beside the binary, under its exact upstream name: `zarf init` looks there.
            copy_into_root(src, ctx.root, f"{target}/{a.name}")
    ctx.manifest["zarf"] = {"version": z.version, "dir": ctx.distro.zarf_dir,
                            "init_package": [a.name for a in _artifacts(ctx, "zarf-init")],
                            "packages": [a.name for a in _artifacts(ctx, "zarf-package")],
                            "checked": checked}
    if z.verify:
        ctx.manifest["zarf"]["verify_key"] = {
            "path": VERIFY_KEY,
            "sha256": hashlib.sha256(key_data).hexdigest()}


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
