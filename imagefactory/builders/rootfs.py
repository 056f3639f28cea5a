"""The rootfs builder: mmdebstrap a root, provision it in a chroot, seal it, make a disk.

No VM, no KVM, no loop devices: the disk is assembled from the root directory by
`builders.disk`. The build is the list `STEPS` below, run in order by `imagefactory.build`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from ..chroot import Chroot
from ..errors import BuildError
from ..lock import security_suite
from ..recipes.model import MmdebstrapSource, Recipe
from ..run import run
from ..steps import seal as sealing
from . import disk

if TYPE_CHECKING:
    from ..build import BuildContext, Step

log = logging.getLogger(__name__)


def _source(ctx: BuildContext) -> MmdebstrapSource:
    src = ctx.recipe.source
    assert isinstance(src, MmdebstrapSource)  # validated: rootfs takes mmdebstrap sources
    return src


def check_mirror(ctx: BuildContext) -> None:
    """Fail fast, with the URL, when the mirror cannot serve the suite (before minutes of work)."""
    src = _source(ctx)
    url = f"{src.mirror.rstrip('/')}/dists/{src.suite}/Release"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            release = resp.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise BuildError(f"mirror unreachable: {url}: {reason}",
                         hint="check source.mirror and the network/proxy settings") from None
    ctx.manifest["source"] = {
        "type": "mmdebstrap", "mirror": src.mirror, "suite": src.suite,
        "components": list(src.components), "variant": src.variant,
        "release_sha256": hashlib.sha256(release).hexdigest(),
        "security": _security_release(ctx),
    }


def _security_release(ctx: BuildContext) -> dict[str, Any] | None:
    """The security suite the build adds (`lock.security_suite`: what the lock and `updates check`
    track), with its Release hash; None when the mirror does not serve one (a partial mirror):
    the build goes on without it and the manifest says so."""
    sec = security_suite(ctx.recipe)
    if sec is None:
        return None
    base, suite = sec
    url = f"{base}/dists/{suite}/Release"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            release = resp.read()
    except (urllib.error.URLError, OSError) as e:
        log.warning("no security updates: %s: %s", url, getattr(e, "reason", e))
        return None
    return {"mirror": base, "suite": suite, "release_sha256": hashlib.sha256(release).hexdigest()}


def bootstrap(ctx: BuildContext) -> None:
    src = _source(ctx)
    from ..steps import stig

    # Packages the STIG controls need (auditd, aide, ...) come with the bootstrap: one apt run.
    packages = sorted({*ctx.distro.base_packages, *ctx.recipe.packages.install,
                       *stig.packages(ctx.recipe)[1]})
    argv = [
        "mmdebstrap", "--mode=root", f"--variant={src.variant}",
        f"--components={','.join(src.components)}",
        f"--include={','.join(packages)}",
        '--aptopt=Acquire::Retries "3"',
    ]
    if src.keyring:
        argv.append(f"--keyring={src.keyring}")
    mirrors = [src.mirror]
    sec = ctx.manifest.get("source", {}).get("security")
    if sec:
        # Security updates in the same apt run: the newest version of every package wins.
        mirrors.append(f"deb {sec['mirror']} {sec['suite']} {' '.join(src.components)}")
    run([*argv, src.suite, str(ctx.root), *mirrors])


def enter_chroot(ctx: BuildContext) -> None:
    ctx.chroot = ctx.stack.enter_context(Chroot(ctx.root))


def packages(ctx: BuildContext) -> None:
    """The shared `packages` step script (the Packer builder runs it in its build VM); here the
    installs came with the bootstrap, so it purges what the recipe removes."""
    from ..steps import scripts

    script = scripts.packages_script(ctx.recipe, install=[], remove=list(ctx.recipe.packages.remove))
    ctx.in_root(["bash", "-c", script.text], env={"IMAGEFACTORY_UPDATE": "0"})


def distro_config(ctx: BuildContext) -> None:
    ctx.distro.configure(ctx)


def write_files(ctx: BuildContext) -> None:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ctx.loaded.directory),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
    )
    users = _ids(ctx.root / "etc/passwd")
    groups = _ids(ctx.root / "etc/group")
    for i, f in enumerate(ctx.recipe.files):
        if f.template is not None:
            try:
                text = env.get_template(f.template).render(recipe=ctx.recipe)
            except jinja2.TemplateError as e:
                raise BuildError(f"files[{i}] ({f.template}): template error: {e}") from None
        else:
            text = f.content or ""
        user, group = f.owner.split(":")
        if user not in users or group not in groups:
            raise BuildError(f"files[{i}].owner: '{f.owner}' does not exist in the image",
                             hint="create the user in a package or use an existing one")
        target = ctx.root / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()  # never write through a link into somewhere else
        target.write_text(text)
        os.chown(target, users[user], groups[group])
        target.chmod(int(f.mode, 8))


def _ids(path: Path) -> dict[str, int]:
    """name -> id from the image's own passwd/group file (not the host's)."""
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[2].isdigit():
            out[parts[0]] = int(parts[2])
    return out


def configure_services(ctx: BuildContext) -> None:
    s = ctx.recipe.services
    # systemctl enable/disable/mask work offline in a chroot: they only edit symlinks.
    for verb, units in (("enable", s.enable), ("disable", s.disable), ("mask", s.mask)):
        if units:
            ctx.in_root(["systemctl", verb, *units])
    # `systemctl enable` of a unit without an [Install] section succeeds and does nothing; a
    # recipe that asks for it would ship a unit that never starts. Say so instead.
    for unit in s.enable:
        state = ctx.in_root(["systemctl", "is-enabled", unit], check=False).stdout.strip()
        if state not in ("enabled", "alias", "enabled-runtime"):
            raise BuildError(f"services.enable: '{unit}' is '{state}' after enabling it",
                             hint="a 'static' unit has no [Install] section and starts through "
                                  "its dependencies: remove it from services.enable")


def leave_chroot(ctx: BuildContext) -> None:
    if ctx.chroot is not None:
        ctx.chroot.__exit__(None, None, None)
        ctx.chroot = None


def record_packages(ctx: BuildContext) -> None:
    pkgs = ctx.distro.installed_packages(ctx.root)
    ctx.manifest["packages"] = [{"name": n, "version": v} for n, v in pkgs]
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (ctx.root / "boot").glob("vmlinuz-*"))
    ctx.manifest["kernel"] = kernels[-1] if kernels else None


def seal(ctx: BuildContext) -> None:
    sealing.seal(ctx.root, ctx.distro.package_caches)


def check_seal(ctx: BuildContext) -> None:
    problems = sealing.check(ctx.root, ctx.distro.package_caches)
    if problems:
        raise BuildError("the sealed root is not clean:\n  " + "\n  ".join(problems))


def make_disk(ctx: BuildContext) -> None:
    used = disk.root_size(ctx.root)
    # ext4 needs room for its metadata and the guest for its first boot: 25 % + 256 MiB.
    needed = int(used * 1.25) + 256 * 1024**2 + disk.PART_START * disk.SECTOR
    if needed > ctx.recipe.disk.size:
        raise BuildError(
            f"disk.size {ctx.recipe.disk.size / 1024**3:.1f} GiB is too small for a root of "
            f"{used / 1024**3:.2f} GiB", hint=f"set disk.size to at least {needed // 1024**3 + 1}GiB")
    layout = disk.new_layout(ctx.recipe.disk.size)
    kernel, initrd = ctx.distro.kernel_paths(ctx.root)
    disk.write_fstab(ctx.root, layout)
    cmdline = [*ctx.recipe.kernel.cmdline,
               *(a for a in ctx.kernel_args if a not in ctx.recipe.kernel.cmdline)]
    disk.write_grub_cfg(ctx.root, layout, kernel, initrd, " ".join(cmdline),
                        ctx.recipe.description or ctx.recipe.name)
    disk.make_raw(ctx.root, ctx.raw, layout, ctx.scratch)
    ctx.manifest["root_bytes"] = used


def convert_image(ctx: BuildContext) -> None:
    d = ctx.recipe.disk
    disk.convert(ctx.raw, ctx.image, d.format, d.compression)
    ctx.raw.unlink()


def offline_steps(recipe: Recipe, *, packages_step: bool) -> list[Step]:
    """The file-level middle of every build, on a root at `ctx.root` (a bootstrapped directory
    here; the Packer builder's stopped disk, mounted): one list, so the builders cannot drift.
    `packages_step`: run the shared `packages` script in the chroot (the Packer builder ran it in
    its build VM already)."""
    from ..build import Step
    from ..steps import rke2, stig

    return [
        Step("enter-chroot", enter_chroot),
        *([Step("packages", packages)] if packages_step else []),
        Step("distro-config", distro_config),
        Step("write-files", write_files),
        Step("configure-services", configure_services),
        *rke2.steps(recipe),
        *stig.steps_before_leaving_chroot(recipe),
        Step("leave-chroot", leave_chroot),
        Step("record-packages", record_packages),
        Step("seal", seal),
        Step("check-seal", check_seal),
    ]


def steps(recipe: Recipe) -> list[Step]:
    from ..build import Step
    from ..steps import rke2, stig

    return [
        Step("check-mirror", check_mirror),
        *([Step("fetch-inputs", rke2.fetch_inputs)] if recipe.rke2 or recipe.zarf else []),
        Step("bootstrap", bootstrap),
        *offline_steps(recipe, packages_step=True),
        Step("make-disk", make_disk),
        *stig.steps_after_disk(recipe),
        Step("convert-image", convert_image),
    ]
