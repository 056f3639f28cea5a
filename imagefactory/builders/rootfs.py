"""The rootfs builder: mmdebstrap a root, provision it in a chroot, seal it, make a disk.

No VM, no KVM, no loop devices: the disk is assembled from the root directory by
`builders.disk`. The build is the list `STEPS` below, run in order by `imagefactory.build`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from .. import archive, debcache, rootcache, templates
from ..artifacts import sha256_file
from ..chroot import Chroot
from ..context import BuildContext, Step
from ..errors import BuildError
from ..fsutil import resolve_in_root
from ..recipes.model import MmdebstrapSource, Recipe
from ..run import run
from ..steps import apparmor, rke2, scripts, stig
from ..steps import seal as sealing
from . import disk, efi, inplace

log = logging.getLogger(__name__)


def _source(ctx: BuildContext) -> MmdebstrapSource:
    src = ctx.recipe.source
    assert isinstance(src, MmdebstrapSource)  # validated: rootfs takes mmdebstrap sources
    return src


def check_mirror(ctx: BuildContext) -> None:
    """Fail fast, naming the recipe key, before minutes of work: the mirror serves the suite,
    its Release file verifies with the keyring, is the recipe's release and has its components.
    The `-updates` and `-security` pockets (`archive.pocket_suites`) are checked the same way;
    one the mirror does not serve (a partial site mirror) is left out with a warning, and the
    manifest says so."""
    src = _source(ctx)
    keyring = ctx.distro.keyring(ctx.recipe)
    key = "source.keyring" if src.keyring else f"source.keyring (default for {ctx.recipe.os.family})"
    codename = ctx.distro.codename(ctx.recipe.os.release)
    main = archive.verify(src.mirror, src.suite, keyring, key=key, required=True)
    assert main is not None
    archive.check_suite(main, codename, src.components)
    ctx.apt_suites = [main]
    ctx.manifest["source"] = {
        "type": "mmdebstrap", "mirror": src.mirror, "suite": src.suite,
        "components": list(src.components), "variant": src.variant, "keyring": keyring,
        "release_sha256": main.identity()["release_sha256"], "signed_by": main.signer,
    }
    for pocket, (base, suite) in archive.pocket_suites(ctx.recipe).items():
        found = archive.verify(base, suite, keyring, key=key, required=False)
        if found is None:
            log.warning("no %s pocket: %s/dists/%s is not served; the image gets no %s", pocket, base,
                        suite, "security updates" if pocket == "security" else "stable updates")
        else:
            archive.check_suite(found, codename, src.components)
            ctx.apt_suites.append(found)
        ctx.manifest["source"][pocket] = None if found is None else {
            k: v for k, v in found.identity().items() if k != "date"}


def bootstrap(ctx: BuildContext) -> None:
    src = _source(ctx)
    # Packages the STIG controls need (auditd, aide, ...) come with the bootstrap: one apt run.
    packages = sorted({*ctx.distro.packages(ctx.recipe), *ctx.recipe.packages.install,
                       *stig.packages(ctx.recipe)[1]})
    options = (
        "--mode=root", f"--variant={src.variant}",
        f"--components={','.join(src.components)}",
        f"--include={','.join(packages)}",
        '--aptopt=Acquire::Retries "3"',
    )
    keyring = ctx.distro.keyring(ctx.recipe)
    ring = _readable_keyring(ctx, Path(keyring)) if keyring else None
    mirrors = [src.mirror]
    for pocket in ("updates", "security"):
        # Updates in the same apt run as the release: the newest version of every package wins.
        found = ctx.manifest.get("source", {}).get(pocket)
        if found:
            mirrors.append(f"deb {found['mirror']} {found['suite']} {' '.join(src.components)}")
    ring_files = () if ring is None else tuple(sorted(ring.iterdir())) if ring.is_dir() else (ring,)
    # The time the disk will carry, for what the packages' scripts write too: initramfs-tools
    # clamps the initrd's file times to it and packs it reproducibly (otherwise every build's
    # initrd differs: 15 MB of a one-package nightly's 16 MB delta, benchmarks/delta_delivery.py).
    epoch = source_epoch(ctx)
    env = {"SOURCE_DATE_EPOCH": str(epoch)} if epoch is not None else None
    inputs = rootcache.Inputs(options, src.suite, tuple(mirrors), ring_files, tuple(ctx.apt_suites),
                              rootcache.tool_version(), epoch)
    cache = rootcache.RootCache(ctx.fetcher.cache.root / "roots") if ctx.fetcher.config.root_cache else None

    def mmdebstrap(extra: list[str]) -> None:
        hooks, reused = _package_cache(ctx)
        run(["mmdebstrap", *options, *([f"--keyring={ring}"] if ring else []), *hooks, *extra, src.suite,
             str(ctx.root), *mirrors], env=env)
        new = debcache.collect(ctx.scratch / "debs-out", ctx.fetcher.cache, reused)
        cached = ctx.manifest["source"]["package_cache"]
        cached.update({"downloaded_files": new.files, "downloaded_bytes": new.bytes})
        log.info("package cache: %d packages reused (%.1f MiB), %d downloaded (%.1f MiB)",
                 cached["reused_files"], cached["reused_bytes"] / 2**20, new.files, new.bytes / 2**20)

    done = rootcache.bootstrap(cache, ctx.recipe.name, inputs, ctx.root, ctx.scratch, src.variant, mmdebstrap)
    ctx.manifest["source"]["root_cache"] = {"enabled": cache is not None, "key": done.key, "hit": done.hit,
                                            "stored_bytes": done.stored}
    if done.hit:
        ctx.manifest["source"]["package_cache"] = dict.fromkeys(
            ("reused_files", "reused_bytes", "index_bytes", "downloaded_files", "downloaded_bytes"), 0)


def _package_cache(ctx: BuildContext) -> tuple[list[str], set[str]]:
    """mmdebstrap hooks that hand the bootstrap the packages earlier builds downloaded (each
    checked against the signed index, `debcache`) and take back what this one downloads; and
    the hashes of the packages handed in."""
    src = _source(ctx)
    cache = ctx.fetcher.cache
    staged, out = ctx.scratch / "debs-in", ctx.scratch / "debs-out"
    held = debcache.cached_hashes(cache)
    index = debcache.load_index(ctx.apt_suites, src.components, ctx.recipe.os.arch, cache, held) \
        if held else debcache.Index({}, 0)
    reused = debcache.stage(index, cache, staged)
    known = {index.hashes[p.name] for p in staged.iterdir()}
    ctx.manifest["source"]["package_cache"] = {
        "reused_files": reused.files, "reused_bytes": reused.bytes, "index_bytes": index.fetched_bytes}
    return debcache.hooks(staged, out, src.variant), known


def _readable_keyring(ctx: BuildContext, keyring: Path) -> Path:
    """A copy of `keyring` (file or directory) in the build's scratch space (0755): apt verifies
    the Release files as its sandbox user `_apt`, which cannot read a keyring under a private
    directory - a checkout in a 0700 temp dir failed with NO_PUBKEY though the key was there."""
    dest = ctx.scratch / "apt-keyring"
    dest.mkdir(mode=0o755, exist_ok=True)
    dest.chmod(0o755)
    if keyring.is_dir():
        files = sorted(p for p in keyring.iterdir() if p.suffix in (".gpg", ".asc") and p.is_file())
        out = dest / "trusted.gpg.d"
        out.mkdir(mode=0o755, exist_ok=True)
    else:
        files, out = [keyring], dest
    for f in files:
        copy = out / f.name
        shutil.copyfile(f, copy)
        copy.chmod(0o644)
    return out if keyring.is_dir() else out / keyring.name


def enter_chroot(ctx: BuildContext) -> None:
    ctx.chroot = ctx.stack.enter_context(Chroot(ctx.root))


def packages(ctx: BuildContext) -> None:
    """The shared `packages` step script (the Packer builder runs it in its build VM); here the
    installs came with the bootstrap, so it purges what the recipe removes and what the family
    never ships (a dependency may have pulled it in)."""
    remove = sorted({*ctx.recipe.packages.remove, *ctx.distro.unwanted_packages})
    script = scripts.packages_script(ctx.recipe, install=[], remove=remove)
    ctx.in_root(["bash", "-c", script.text], env={"IMAGEFACTORY_UPDATE": "0"})


def distro_config(ctx: BuildContext) -> None:
    ctx.distro.configure(ctx)


def write_files(ctx: BuildContext) -> None:
    env = templates.environment(ctx.loaded.directory)
    users = _ids(ctx.root / "etc/passwd")
    groups = _ids(ctx.root / "etc/group")
    for i, f in enumerate(ctx.recipe.files):
        if f.template is not None:
            try:
                text = templates.render(ctx.loaded.directory, f.template, ctx.recipe, env)
            except templates.TemplateProblem as e:
                raise BuildError(f"files[{i}].template: {e}") from None
        else:
            text = f.content or ""
        user, group = f.owner.split(":")
        if user not in users or group not in groups:
            raise BuildError(f"files[{i}].owner: '{f.owner}' does not exist in the image",
                             hint="create the user in a package or use an existing one")
        # Resolved as the image sees its own links (Debian's /var/run -> /run would otherwise
        # land on the build host's /run), the parent created inside the root.
        parent = resolve_in_root(ctx.root, os.path.dirname(f.path))
        parent.mkdir(parents=True, exist_ok=True)
        target = parent / os.path.basename(f.path)
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
    d = ctx.recipe.disk
    # Reproducible: identifiers from the recipe's name, times from the newest archive state the
    # build used (its verified Release files' Date; the lock pins them), else SOURCE_DATE_EPOCH.
    layout = disk.new_layout(d.size, table=d.table, bios=d.bios, uefi=d.uefi, seed=ctx.recipe.name)
    epoch = source_epoch(ctx)
    used = disk.root_size(ctx.root)
    # ext4 needs room for its metadata and the guest for its first boot: 25 % + 256 MiB.
    needed = int(used * 1.25) + 256 * 1024**2 + layout.overhead
    if needed > d.size:
        raise BuildError(
            f"disk.size {d.size / 1024**3:.1f} GiB is too small for a root of "
            f"{used / 1024**3:.2f} GiB", hint=f"set disk.size to at least {needed // 1024**3 + 1}GiB")
    kernel, initrd = ctx.distro.kernel_paths(ctx.root)
    boot_files = None
    description = layout.describe()
    if layout.uefi:
        boot_files = efi.find_boot_files(ctx.root, ctx.distro.efi_shim, ctx.distro.efi_grub,
                                         ctx.distro.efi_mokmanager)
        description["secure_boot"] = d.secure_boot
        if d.secure_boot:
            description["signers"] = efi.check_signed(boot_files, resolve_in_root(ctx.root, kernel))
    disk.write_fstab(ctx.root, layout)
    cmdline = [*ctx.recipe.kernel.cmdline,
               *(a for a in ctx.kernel_args if a not in ctx.recipe.kernel.cmdline)]
    disk.write_grub_cfg(ctx.root, layout, kernel, initrd, " ".join(cmdline),
                        ctx.recipe.description or ctx.recipe.name)
    # and into /etc/default/grub where the image has one (Ubuntu's grub2-common): an update-grub
    # run by a package inside the guest then keeps them
    disk.add_kernel_args(ctx.root, cmdline)
    base = ctx.base
    if base is not None:
        disk.to_raw(base.image, ctx.raw)
    files, in_place = disk.make_raw(ctx.root, ctx.raw, layout, ctx.scratch, boot_files, ctx.distro.efi_vendor,
                                    epoch, base=base.files if base is not None else None)
    ctx.manifest["root_bytes"] = used
    ctx.manifest["disk"] = {**description, "reproducible": {"seed": layout.seed, "epoch": epoch}}
    if files is not None:  # what the next build's --base starts from
        index = ctx.out_dir / inplace.INDEX_FILE
        inplace.save_index(files, index)
        ctx.manifest["disk"]["files_sha256"] = sha256_file(index)
    if base is not None:
        # The disk depends on its base as well as on its content: say which, and whether the
        # file system really was written in place (a tree debugfs cannot write gets a full mkfs).
        ctx.manifest["disk"]["base"] = {"version": base.version, "image_sha256": base.image_sha256,
                                        "in_place": in_place}


def source_epoch(ctx: BuildContext) -> int | None:
    """The time a build's disk carries: the newest of its verified Release files' dates, else
    $SOURCE_DATE_EPOCH, else None (real time)."""
    dates = [e for s in ctx.apt_suites if (e := s.epoch) is not None]
    if dates:
        return max(dates)
    env = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(env) if env.isdigit() else None


def convert_image(ctx: BuildContext) -> None:
    d = ctx.recipe.disk
    disk.convert(ctx.raw, ctx.image, d.format, d.compression)
    ctx.raw.unlink()


def offline_steps(recipe: Recipe, *, packages_step: bool) -> list[Step]:
    """The file-level middle of every build, on a root at `ctx.root` (a bootstrapped directory
    here; the Packer builder's stopped disk, mounted): one list, so the builders cannot drift.
    `packages_step`: run the shared `packages` script in the chroot (the Packer builder ran it in
    its build VM already)."""
    return [
        Step("enter-chroot", enter_chroot),
        *([Step("packages", packages)] if packages_step else []),
        Step("distro-config", distro_config),
        Step("write-files", write_files),
        Step("configure-services", configure_services),
        *rke2.steps(recipe),
        *stig.steps_before_leaving_chroot(recipe),
        *apparmor.steps(recipe),
        Step("leave-chroot", leave_chroot),
        Step("record-packages", record_packages),
        Step("seal", seal),
        Step("check-seal", check_seal),
    ]


def steps(recipe: Recipe) -> list[Step]:
    return [
        Step("check-mirror", check_mirror),
        *([Step("fetch-inputs", rke2.fetch_inputs)] if recipe.rke2 or recipe.zarf else []),
        Step("bootstrap", bootstrap),
        *offline_steps(recipe, packages_step=True),
        Step("make-disk", make_disk),
        *stig.steps_after_disk(recipe),
        Step("convert-image", convert_image),
    ]
