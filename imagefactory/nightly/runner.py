"""`build --if-changed` / `build --all --if-changed`: run the plan.

For every recipe in plan order (dependencies first): skip it when its build key equals the newest
published one; otherwise build it (every build installs the security updates its sources offer:
see the rootfs builder's security suite and the Packer builder's `packer.update`), boot-test it,
publish it to the catalogue's `candidate` channel (the published manifest records the build key
and a changelog of the OS packages against the previous image) and, with `promote_on_green`,
promote it to `stable` when its tests and STIG gate passed. A recipe whose dependency failed is
not built. Two runners that built the same inputs cannot both publish: the catalogue refuses a
second version with the same build key, and the later runner reports the recipe as skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..build import build, published_base
from ..builders import inplace
from ..catalogue.stores import BlobStore
from ..catalogue.trust import Anchor, Keys
from ..config import FactoryConfig, SigningConfig
from ..errors import ImageFactoryError
from ..lock import LockFile
from ..recipes.load import RecipeBook
from ..recipes.located import LoadedRecipe
from ..store.local import LocalStore
from .plan import LatestManifest, Plan, catalogue_latest, plan
from .render import RunResult

log = logging.getLogger(__name__)
STABLE = "stable"


@dataclass(frozen=True)
class Publishing:
    store: BlobStore
    # Loaded only when something is to be built (a no-op run needs no signing key), and then
    # before the first build, so that a missing key fails in seconds, not after a build.
    keys: Callable[[], tuple[Ed25519PrivateKey, Ed25519PublicKey]]
    promote_on_green: bool = False
    signing: SigningConfig | None = None  # the TUF root keys, where this host has them
    # Write each rebuilt rootfs image's root over the newest published one's (`build --base`): a
    # site holding that one then needs about what changed, not 18 % of the image.
    base_on_published: bool = True


def green(manifest: dict[str, Any]) -> bool:
    """Tests passed and, with a STIG section, the gate passed."""
    tests_ok = (manifest.get("tests") or {}).get("ok") is True
    gate = (((manifest.get("stig") or {}).get("report") or {}).get("gate") or {})
    return tests_ok and (not manifest.get("stig") or gate.get("passed") is True)


def run_plan(book: RecipeBook, workdir: Path, names: list[str] | None, *, if_changed: bool,
             publishing: Publishing | None, config: FactoryConfig, local_store: LocalStore | None,
             skip_tests: bool = False, progress: Any = None,
             on_result: Callable[[RunResult], None] | None = None) -> tuple[Plan, list[RunResult]]:
    latest: LatestManifest = catalogue_latest(publishing.store) if publishing else (lambda _n: None)
    the_plan = plan(book, LockFile(book.directory), latest, names)
    results: list[RunResult] = []
    failed: set[str] = set()
    keys = publishing.keys() if publishing and any(
        e.action == "build" or (e.action == "skip" and not if_changed) for e in the_plan.entries) else None
    for e in the_plan.entries:
        start = time.monotonic()
        if e.action == "invalid":
            r = RunResult(e.recipe, "failed", tuple(e.reasons), error="the recipe does not load")
        elif e.action == "skip" and if_changed:
            r = RunResult(e.recipe, "skipped", tuple(e.reasons), e.key, (e.published or "").partition(":")[2])
        elif blocked := [d for d in e.needs if d in failed]:
            r = RunResult(e.recipe, "failed", tuple(e.reasons), e.key,
                          error=f"not built: {', '.join(blocked)} failed")
        else:
            log.info("building %s: %s", e.recipe, "; ".join(e.reasons) or "asked for")
            try:
                loaded = book.load(e.recipe)
                base = _base(loaded, e.published, publishing, keys, workdir)
                manifest = build(loaded, workdir, store=local_store, skip_tests=skip_tests,
                                 progress=progress, config=config, base=base)
                r = RunResult(e.recipe, "built", tuple(e.reasons), e.key, manifest["version"],
                              seconds=round(time.monotonic() - start, 1),
                              junit=str(Path(manifest["path"]) / "junit.xml"))
                if publishing is not None and keys is not None:
                    r = _publish(r, Path(manifest["path"]), manifest, publishing, *keys)
            except ImageFactoryError as err:
                r = RunResult(e.recipe, "failed", tuple(e.reasons), e.key, error=err.message,
                              seconds=round(time.monotonic() - start, 1))
        if r.status == "failed":
            failed.add(e.recipe)
        results.append(r)
        if on_result:
            on_result(r)
    return the_plan, results


def _base(loaded: LoadedRecipe, published: str | None, p: Publishing | None,
          keys: tuple[Ed25519PrivateKey, Ed25519PublicKey] | None, workdir: Path) -> inplace.Base | None:
    """The newest published image of the recipe as its rebuild's base, when it can be one; else
    None (a full mkfs), with the reason logged: never published, published without a file index
    (before this feature, or by the Packer builder), a changed disk layout."""
    if p is None or keys is None or not p.base_on_published or published is None \
            or loaded.recipe.builder != "rootfs":
        return None
    anchor = Anchor.from_config(p.signing, keys[1], workdir / "trust") if p.signing else \
        Anchor.single(keys[1], workdir / "trust")
    try:
        return published_base(loaded, p.store, published, anchor, workdir / "cache" / "bases")
    except ImageFactoryError as e:
        log.warning("%s: built without a base (a full mkfs): %s", loaded.recipe.name, e.message)
        return None


def _publish(r: RunResult, build_dir: Path, manifest: dict[str, Any], p: Publishing,
             private: Ed25519PrivateKey, public: Ed25519PublicKey) -> RunResult:
    from dataclasses import replace

    from ..catalogue.catalogue import AlreadyPublished, Catalogue
    from ..catalogue.publish import publish

    try:
        result = publish(build_dir, p.store, private, public, keys=Keys.from_config(p.signing, private))
    except AlreadyPublished as e:
        # Another runner published these exact inputs while we built: theirs stands.
        return replace(r, status="skipped", version=e.ref.partition(":")[2],
                       reasons=(*r.reasons, f"built, but {e.ref} with the same build key was published "
                                            "meanwhile (another runner)"))
    channels = tuple(result.channels)
    if p.promote_on_green and green(manifest):
        cat = Catalogue(p.store, Keys.from_config(p.signing, private))
        m = cat.promote(result.ref, STABLE, private, public)
        channels = tuple(m.channels)
    elif p.promote_on_green:
        log.warning("%s is not green (tests or STIG gate): not promoted to %s", result.ref, STABLE)
    raw, _ = Catalogue(p.store).read_manifest(*result.ref.split(":", 1))
    upgraded = len((raw.get("changelog") or {}).get("upgraded") or [])
    return replace(r, channels=channels, upgraded=upgraded)
