"""What a build may ask of the rest of the factory, behind `context.BuildServices`.

`build` creates one `FactoryServices` per build and puts it on the context; the builders call it
instead of importing the store, the catalogue or the proxy themselves, which keeps them below
those layers (and lets a test hand a builder a stand-in).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .artifacts import Cache
from .catalogue.catalogue import Catalogue, pull_cached
from .catalogue.signing import PUBLIC_KEY_ENV, load_public_key
from .catalogue.stores import open_store
from .catalogue.trust import Anchor
from .config import FactoryConfig
from .context import BaseImage
from .errors import BuildError, UserError
from .fsutil import digests
from .proxy import PackageProxy
from .store.local import LocalStore

log = logging.getLogger(__name__)


class FactoryServices:
    """The local build store under `workdir`, the catalogue of `config` and the package proxy."""

    def __init__(self, workdir: Path, config: FactoryConfig) -> None:
        self.workdir = workdir
        self.config = config

    def base_image(self, ref: str) -> BaseImage:
        try:
            path = LocalStore(self.workdir / "store").resolve(ref)
        except UserError as missing:
            # Built on another CI runner: take it from the catalogue (signature-verified).
            return self._from_catalogue(ref, missing)
        manifest = json.loads((path.parent / "manifest.json").read_text())
        sha256 = str(manifest["image"]["sha256"])
        if digests(path)[0] != sha256:
            raise BuildError(f"{path}: does not match the sha256 in its manifest",
                             hint="the stored image was modified; rebuild it")
        return BaseImage(path, manifest["version"], sha256, "store")

    def _from_catalogue(self, ref: str, missing: UserError) -> BaseImage:
        """A `local-image` base that is not in this host's build store, pulled from the default
        catalogue store (the nightly builds a parent and its children on different runners).
        Needs the signing public key; the file lands in WORKDIR/cache/images/<sha256> and is
        reused."""
        cfg = self.config
        if not (cfg.signing.public_key or os.environ.get(PUBLIC_KEY_ENV)):
            raise UserError(missing.message, hint=f"{missing.hint}; or configure signing.public_key so "
                            "that it can come from the catalogue") from None
        store = open_store(cfg, self.workdir)
        public = load_public_key(cfg.signing.public_key)
        anchor = Anchor.from_config(cfg.signing, public, self.workdir / "trust")
        try:
            Catalogue(store).resolve(ref)
        except UserError:
            raise UserError(missing.message, hint=f"{missing.hint}; it is not in the catalogue "
                            f"({store.describe()}) either: build or publish it first") from None
        img, dest = pull_cached(store, ref, anchor, self.workdir / "cache" / "images")
        m = img.manifest
        log.info("base image %s from the catalogue %s", m.ref, store.describe())
        return BaseImage(dest, m.version, m.image.sha256, "catalogue")

    def package_proxy(self, allow: tuple[str, ...]) -> PackageProxy:
        return PackageProxy(allow, Cache(self.workdir / "cache"))
