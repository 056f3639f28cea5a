"""What every OS family provides to the builders and steps."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..build import BuildContext
    from ..recipes.model import Recipe


class Distro:
    """Base of the OS family modules. Pure data in class attributes, behaviour in methods."""

    family: ClassVar[str] = ""
    # release -> codename (the releases this family supports)
    releases: ClassVar[dict[str, str]] = {}
    # packages every image of the family needs to boot, get cloud-init data and be tested
    base_packages: ClassVar[tuple[str, ...]] = ()
    # source types the family can be built from, by builder
    builders: ClassVar[dict[str, tuple[str, ...]]] = {}
    # smallest disk that holds a base image of the family (bytes)
    min_disk: ClassVar[int] = 2 * 1024**3
    # cloud-init's default user on this family (tests log in as it)
    default_user: ClassVar[str] = "root"
    # INSTALL_RKE2_TAR_PREFIX: where RKE2's tarball goes (SLE Micro's /usr is read-only)
    rke2_prefix: ClassVar[str] = "/usr/local"
    # where the Zarf binary and its init package go (side by side: zarf looks beside itself)
    zarf_dir: ClassVar[str] = "/usr/local/bin"
    # apt/zypper state that must not ship in an image (relative to the root)
    package_caches: ClassVar[tuple[str, ...]] = ()
    # where a build VM may fetch packages through the host's allow-list proxy (URL prefixes)
    default_package_mirrors: ClassVar[tuple[str, ...]] = ()
    # the package manager the step scripts use (steps/scripts.py)
    package_manager: ClassVar[str] = "apt"

    def package_mirrors(self, recipe: Recipe) -> tuple[str, ...]:
        if recipe.packer.package_mirrors is not None:
            return recipe.packer.package_mirrors
        mirrors = self.default_package_mirrors
        from ..recipes.model import MmdebstrapSource

        if isinstance(recipe.source, MmdebstrapSource):
            mirrors = (recipe.source.mirror, *mirrors)
        return mirrors

    def codename(self, release: str) -> str:
        return self.releases[release]

    def configure(self, ctx: BuildContext) -> None:
        """Family-specific configuration of the root, run in the chroot."""
        raise NotImplementedError

    def installed_packages(self, root: Path) -> list[tuple[str, str]]:
        """(name, version) of every installed package in `root`, sorted by name."""
        raise NotImplementedError

    def kernel_paths(self, root: Path) -> tuple[str, str]:
        """Paths (inside the image) of the kernel and initrd the bootloader boots."""
        raise NotImplementedError
