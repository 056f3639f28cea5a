"""AppArmor's compiled policy, cached in the image for the kernel the image boots.

At every boot `apparmor.service` (`/lib/apparmor/apparmor.systemd` -> `rc.apparmor.functions`)
runs `apparmor_parser --write-cache --replace -- /etc/apparmor.d`. The parser loads a profile
from `/var/cache/apparmor/<hash>.0/` when a compiled copy there is newer than the profile and
everything it includes, and compiles it otherwise (apparmor_parser(8): --cache-loc,
--skip-read-cache). `<hash>` is taken over the running kernel's AppArmor feature set
(/sys/kernel/security/apparmor/features). Ubuntu 24.04's apparmor ships ~90 profiles (the
unprivileged-userns ones); compiling them at first boot took 214 s of a TCG guest's only vCPU
and held cloud-init-local back until it was done (measured, README "Boot tests").

The build host's kernel is not the image's, so the feature sets of the kernels we ship are kept
here (`apparmor_features/<family>-<kernel series>`, flattened as `aa-features-abi -x` writes
them, captured from a booted guest of that kernel). When the image's kernel has one, this step
compiles the whole policy in the chroot for that feature set (`--kernel-features`,
`--skip-kernel-load`), with the image's own parser. When the guest's kernel turns out to differ
(a kernel update that changed the feature set), the parser misses the cache and compiles as it
would have anyway: never wrong, only slower. The booted `recipe` suite checks that the shipped
cache was used. A kernel without a known feature set gets no cache and the build says so.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..context import BuildContext, Step
from ..fsutil import in_root, write_in_root
from ..recipes.model import Recipe

log = logging.getLogger(__name__)

FEATURES_DIR = Path(__file__).resolve().parent.parent / "apparmor_features"
CACHE = "/var/cache/apparmor"
STAGED = "/tmp/imagefactory-apparmor-features"  # the feature set, for the parser in the chroot
PARSER = "sbin/apparmor_parser"  # /usr/sbin on merged /usr, reached through the /sbin link
# Ubuntu's 6.8.0-90-generic, Debian's 6.1.0-41-amd64: the ABI number changes with every update,
# the AppArmor feature set with the kernel series.
_RELEASE = re.compile(r"^(?P<version>\d+\.\d+\.\d+)-\d+(?:\.\d+)?-(?P<flavour>[a-z0-9]+)$")


def series(release: str) -> str | None:
    """`6.8.0-90-generic` -> `6.8.0-generic`; None for a release of another shape."""
    m = _RELEASE.match(release)
    return f"{m['version']}-{m['flavour']}" if m else None


def features_for(family: str, release: str) -> Path | None:
    """The captured feature set of the kernel `release` of `family`, if we have one."""
    s = series(release)
    path = FEATURES_DIR / f"{family}-{s}" if s else None
    return path if path is not None and path.is_file() else None


def image_kernel(root: Path) -> str | None:
    """The newest kernel release in the image (`/boot/vmlinuz-<release>`), as the disk boots it."""
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in in_root(root, "boot").glob("vmlinuz-*"))
    return kernels[-1] if kernels else None


def cache_dirs(root: Path) -> list[str]:
    cache = in_root(root, CACHE.lstrip("/"))
    return sorted(p.name for p in cache.iterdir() if p.is_dir()) if cache.is_dir() else []


def apparmor_cache(ctx: BuildContext) -> None:
    ctx.manifest["apparmor_cache"] = None
    if not in_root(ctx.root, PARSER).exists():
        return  # no AppArmor in this image
    kernel = image_kernel(ctx.root)
    features = features_for(ctx.recipe.os.family, kernel) if kernel else None
    if features is None:
        log.info("no AppArmor feature set known for kernel %s of %s: the guest compiles its policy at "
                 "first boot", kernel, ctx.recipe.os.family)
        return
    staged = write_in_root(ctx.root, STAGED, features.read_bytes())
    try:
        ctx.in_root(["apparmor_parser", "--skip-kernel-load", "--write-cache", "--quiet",
                     "--cache-loc", CACHE, "--kernel-features", STAGED, "--", "/etc/apparmor.d"])
    finally:
        staged.unlink()
    # One directory per feature set: a Packer build VM that booted this kernel left the same one.
    cache = in_root(ctx.root, CACHE.lstrip("/"))
    dirs = {d: len(list((cache / d).iterdir())) for d in cache_dirs(ctx.root)}
    ctx.manifest["apparmor_cache"] = {"kernel": kernel, "features": features.name, "directories": dirs}
    log.info("AppArmor policy compiled for %s (%s): %s", kernel, features.name,
             ", ".join(f"{n} profiles in {CACHE}/{d}" for d, n in dirs.items()))


def steps(recipe: Recipe) -> list[Step]:
    """Last in the chroot: after every step that may add or change a profile (a newer profile
    than its cached copy is compiled again at boot)."""
    return [Step("apparmor-cache", apparmor_cache)] if recipe.os.family in ("ubuntu", "debian") else []
