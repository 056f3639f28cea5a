"""The mutable state of one build and the named steps that act on it.

This module sits below the steps (`imagefactory.steps`) and the builders
(`imagefactory.builders`), which sit below `imagefactory.build`: it imports none of them. What a
builder needs from the rest of the factory (the local store, the signed catalogue, the package
proxy) it gets through `BuildContext.services`, an object `build` creates; so a builder depends
only on its context and the steps it runs, never on the layers above it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from .archive import Suite
from .artifacts import Artifact, Fetcher
from .chroot import Chroot
from .distros.base import Distro
from .errors import BuildError
from .recipes.located import LoadedRecipe
from .recipes.model import Recipe
from .run import Result


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[BuildContext], None]


@dataclass(frozen=True)
class BaseImage:
    """A `local-image` base, its file verified against its manifest's sha256."""

    path: Path
    version: str
    sha256: str
    origin: Literal["store", "catalogue"]  # this host's build store, or pulled from the catalogue


class ProxyPort(Protocol):
    """A running package proxy: the port it listens on at 127.0.0.1."""

    @property
    def port(self) -> int: ...


class BuildServices(Protocol):
    """What a builder may ask of the factory beyond its recipe. `build` provides the real one
    (`imagefactory.services.FactoryServices`); a test can pass a stand-in."""

    def base_image(self, ref: str) -> BaseImage:
        """The image a `local-image` source names (`NAME[:VERSION]`): this host's store first,
        then the signed catalogue; raises UserError when neither has it."""
        ...

    def package_proxy(self, allow: tuple[str, ...]) -> contextlib.AbstractContextManager[ProxyPort]:
        """An allow-list HTTP proxy on 127.0.0.1 for the URL prefixes in `allow`, serving while
        the context is open."""
        ...


@dataclass
class BuildContext:
    """Mutable state of one build (the recipe itself is frozen)."""

    loaded: LoadedRecipe
    distro: Distro
    workdir: Path
    build_id: str
    out_dir: Path  # `<build-id>.partial` until the build succeeds
    scratch: Path
    stack: contextlib.ExitStack
    fetcher: Fetcher
    services: BuildServices
    manifest: dict[str, Any] = field(default_factory=dict)
    timings: list[dict[str, Any]] = field(default_factory=list)
    chroot: Chroot | None = None
    skip_tests: bool = False
    lock_entry: dict[str, Any] = field(default_factory=dict)
    locked: list[Artifact] = field(default_factory=list)
    kernel_args: list[str] = field(default_factory=list)  # added by steps (STIG), after the recipe's
    apt_suites: list[Suite] = field(default_factory=list)  # verified Release files (rootfs builder)
    # Packer builder state (builders/packer.py)
    packer_source: tuple[Path, str] = (Path(), "")  # verified base image, its sha256
    packer: Any = None  # (Packer, Rendered)
    packer_output: Path = Path()
    disk_handle: Any = None  # builders.disk.OpenedImage
    base: Any = None  # builders.inplace.Base: the earlier build whose file system this one edits

    @property
    def recipe(self) -> Recipe:
        return self.loaded.recipe

    @property
    def root(self) -> Path:
        return self.scratch / "root"

    @property
    def raw(self) -> Path:
        return self.scratch / "disk.raw"

    @property
    def image(self) -> Path:
        return self.out_dir / f"image.{self.recipe.disk.format}"

    def in_root(self, argv: Sequence[str], check: bool = True,
                env: dict[str, str] | None = None) -> Result:
        if self.chroot is None:
            raise BuildError("internal: a chroot command ran outside enter-chroot/leave-chroot")
        return self.chroot.run(argv, check=check, env=env)
