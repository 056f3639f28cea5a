"""What every OS family provides to the builders and steps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Protocol

from ..recipes.model import MmdebstrapSource, Recipe
from ..run import Result


class ChrootRoot(Protocol):
    """What `Distro.configure` needs of a build: its root and a command in the root's chroot.
    The build context (`imagefactory.context.BuildContext`) is one; a protocol here keeps the
    distros below the context, which holds a `Distro`."""

    @property
    def root(self) -> Path: ...

    @property
    def recipe(self) -> Recipe: ...

    def in_root(self, argv: Sequence[str], check: bool = True,
                env: dict[str, str] | None = None) -> Result: ...


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
    # the kernel package when the recipe names none (kernel.package)
    kernel_package: ClassVar[str] = ""
    # release -> packages only that release needs (split out of others upstream)
    release_packages: ClassVar[dict[str, tuple[str, ...]]] = {}
    # packages an image of the family never ships (phoning home, nagging, snaps): purged when a
    # dependency pulls them in, refused in packages.install
    unwanted_packages: ClassVar[tuple[str, ...]] = ()
    # the archive keyring when the recipe names none (source.keyring)
    default_keyring: ClassVar[str | None] = None
    # EFI boot chain (disk.firmware uefi/hybrid): the packages with the distribution's signed
    # binaries, where those lie in the image (first existing candidate wins), and the directory
    # the signed GRUB reads its grub.cfg from (its built-in prefix, /EFI/<vendor>)
    efi_packages: ClassVar[tuple[str, ...]] = ()
    efi_shim: ClassVar[tuple[str, ...]] = ()
    efi_grub: ClassVar[tuple[str, ...]] = ()
    efi_mokmanager: ClassVar[tuple[str, ...]] = ()
    efi_vendor: ClassVar[str] = ""

    def packages(self, recipe: Recipe) -> tuple[str, ...]:
        """What a bootstrap of `recipe` installs besides the recipe's own packages."""
        return (*self.base_packages, recipe.kernel.package or self.kernel_package,
                *self.release_packages.get(recipe.os.release, ()),
                *(self.efi_packages if recipe.disk.uefi else ()), *self.feature_packages(recipe))

    def feature_packages(self, recipe: Recipe) -> tuple[str, ...]:
        """Packages recipe settings need (every builder installs them)."""
        return ()

    def keyring(self, recipe: Recipe) -> str | None:
        src = recipe.source
        if isinstance(src, MmdebstrapSource) and src.keyring:
            return src.keyring
        return self.default_keyring

    def package_mirrors(self, recipe: Recipe) -> tuple[str, ...]:
        if recipe.packer.package_mirrors is not None:
            return recipe.packer.package_mirrors
        mirrors = self.default_package_mirrors
        if isinstance(recipe.source, MmdebstrapSource):
            mirrors = (recipe.source.mirror, *mirrors)
        return mirrors

    def codename(self, release: str) -> str:
        return self.releases[release]

    def configure(self, ctx: ChrootRoot) -> None:
        """Family-specific configuration of the root, run in the chroot."""
        raise NotImplementedError

    def installed_packages(self, root: Path) -> list[tuple[str, str]]:
        """(name, version) of every installed package in `root`, sorted by name."""
        raise NotImplementedError

    def kernel_paths(self, root: Path) -> tuple[str, str]:
        """Paths (inside the image) of the kernel and initrd the bootloader boots."""
        raise NotImplementedError
