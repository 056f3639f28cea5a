"""A build: a readable list of named steps, each logged with its duration.

`build()` takes a validated recipe and produces `<workdir>/builds/<recipe>/<build-id>/` with
`image.qcow2`, `manifest.json`, `build.log` and `junit.xml`, then adds the image to the local
store. Output appears under its final name only when every step, the boot test included, has
passed; on failure or Ctrl-C the chroot mounts, libvirt domains, scratch space and the partial
output are removed and the log is kept as `<build-id>.failed.log` next to the builds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__, distros
from .artifacts import Artifact, Cache, Fetcher
from .builders import inplace, packer, rootfs
from .builders.disk import detach_loops, virtual_size
from .buildkey import build_key_of
from .catalogue import trust
from .catalogue.catalogue import pull_base
from .catalogue.stores import BlobStore
from .chroot import unmount_all
from .config import FactoryConfig
from .context import BuildContext, Step
from .errors import BuildError, UserError
from .fsutil import digests, exclusive_lock, file_identity, write_json
from .interrupts import uninterrupted
from .lock import LockFile, check_entry, needs_lock
from .recipes.located import LoadedRecipe
from .recipes.model import Recipe
from .services import FactoryServices
from .steps import stig
from .store.local import LocalStore
from .testing.harness import check_test_host, run_suites

# BuildContext and Step live in `context` (below the builders); these names stay importable from
# here for the callers that know them as build.BuildContext, build.Step and build.build_key_of.
__all__ = ["BuildContext", "ProgressHook", "Step", "boot_test", "build", "build_key_of", "builder_steps",
           "checksum", "common_tail", "new_build_id"]

log = logging.getLogger(__name__)


def new_build_id() -> str:
    """Sortable, date-based, unique: 20261129.184512-3fa2."""
    now = dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%d.%H%M%S}-{secrets.token_hex(2)}"


def builder_steps(recipe: Recipe) -> list[Step]:
    if recipe.builder == "rootfs":
        return rootfs.steps(recipe)
    return packer.steps(recipe)


def checksum(ctx: BuildContext) -> None:
    sha256, sha512 = digests(ctx.image)
    ctx.manifest["image"] = {
        "file": ctx.image.name,
        "format": ctx.recipe.disk.format,
        "compression": ctx.recipe.disk.compression,
        "size": ctx.image.stat().st_size,
        "virtual_size": virtual_size(ctx.image),
        "sha256": sha256,
        "sha512": sha512,
    }
    ctx.image.chmod(0o644)  # libvirt's qemu user reads it through the test overlays
    # publish reads the image once more to upload it; it hashes it again only if it changed since
    ctx.manifest["image"]["identity"] = file_identity(ctx.image)


def boot_test(ctx: BuildContext) -> None:
    if ctx.skip_tests:
        ctx.manifest["tests"] = {"ok": None, "skipped": "--skip-tests"}
        return
    results = run_suites(ctx.image, ctx.recipe, ctx.out_dir / "junit.xml", ctx.scratch, ctx.scratch,
                         stig_results=ctx.out_dir / stig.BOOTED_RESULTS)
    for console in sorted(ctx.scratch.glob("console-*.log")):
        log.debug("serial console of clone %s:\n%s", console.stem, console.read_text(errors="replace"))
    ctx.manifest["tests"] = results.as_dict() | {"junit": "junit.xml"}
    problems: list[str] = []
    if not results.ok:
        problems.append(f"boot test failed: {results.failed} failed, {results.errors} errors, "
                        f"{results.passed} passed\n  " + "\n  ".join(results.failures))
    if ctx.recipe.stig is not None and (ctx.out_dir / stig.BOOTED_RESULTS).is_file():
        # The report is written even when tests failed: it is the evidence for what failed.
        report, gate = stig.report(ctx.recipe, ctx.loaded.directory, ctx.manifest,
                                   stig.load_scans(ctx.out_dir), ctx.out_dir)
        ctx.manifest.setdefault("stig", {})["report"] = report.summary()
        if not gate.passed:
            problems.append(str(stig.gate_error(gate)))
    elif ctx.recipe.stig is not None:
        problems.append("the stig suite wrote no results")
    if problems:
        raise BuildError("\n".join(problems),
                         hint="see junit.xml, stig-report.html and the serial console in the failed "
                              "build log")


def common_tail() -> list[Step]:
    return [Step("checksum", checksum), Step("boot-test", boot_test)]


def _manifest_head(ctx: BuildContext) -> dict[str, Any]:
    r = ctx.recipe
    return {
        "schema": 1,
        "name": r.name,
        "version": ctx.build_id,
        "build_id": ctx.build_id,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "imagefactory_version": __version__,
        "builder": r.builder,
        "os": r.os.model_dump(mode="json"),
        "inputs": ctx.lock_entry or None,
        "recipe": {
            "name": r.name,
            "digest": ctx.loaded.digest,
            "files": [str(p) for p in ctx.loaded.files],
            "merged": r.model_dump(mode="json"),
        },
    }


ProgressHook = Callable[[str, str, float | None], None]


def published_base(loaded: LoadedRecipe, store: BlobStore, ref: str, anchor: trust.Anchor,
                   cache: Path) -> inplace.Base:
    """A published image of the recipe as the base of its next build (`build --base NAME@CHANNEL`,
    and the nightly's default): image and file index pulled and verified through the catalogue's
    signed metadata, then checked like a build directory."""
    recipe = loaded.recipe
    img, image, index = pull_base(store, ref, anchor, cache)
    m = img.manifest
    disk = m.disk or {}
    return inplace.checked_base(f"--base {ref}", recipe.name, recipe.disk.model_dump(mode="json"), m.name,
                                m.version, disk.get("seed"), disk.get("files_sha256"),
                                disk.get("settings") or {}, index, image, m.image.sha256)


def build(
    loaded: LoadedRecipe,
    workdir: Path,
    *,
    store: LocalStore | None = None,
    skip_tests: bool = False,
    progress: ProgressHook | None = None,
    config: FactoryConfig | None = None,
    base: Path | inplace.Base | None = None,
) -> dict[str, Any]:
    """Build, test and store one recipe; return its manifest. With `base` (an earlier build's
    directory of the same recipe) the root file system is written in place over the base's, so
    that the new disk differs from it by about what changed (`builders.inplace`)."""
    recipe = loaded.recipe
    distro = distros.get(recipe.os.family)
    steps = [*builder_steps(recipe), *common_tail()]
    config = config or FactoryConfig()
    # Inputs come from the lock only; a missing or stale lock fails before any work starts.
    lock_entry: dict[str, Any] = {}
    if needs_lock(recipe):
        lock_entry = LockFile(loaded.directory).entry(recipe)
        check_entry(recipe, lock_entry)
    base_build = base if isinstance(base, inplace.Base) else None
    if base is not None:
        if recipe.builder != "rootfs":
            raise UserError(f"--base: recipe {recipe.name} uses the {recipe.builder} builder",
                            hint="only the rootfs (mmdebstrap) builder writes its file system itself")
        if isinstance(base, Path):
            base_build = inplace.load_base(base, recipe.name, recipe.disk.model_dump(mode="json"))
    if not skip_tests:
        # A boot test that cannot run (no OVMF for a UEFI clone) fails now, not after the build.
        check_test_host(recipe)
    key = build_key_of(loaded)
    builds = workdir / "builds" / recipe.name
    build_id = new_build_id()
    final = builds / build_id
    partial = builds / f"{build_id}.partial"
    scratch = workdir / "tmp" / build_id
    with exclusive_lock(workdir / "locks" / f"{recipe.name}.lock", f"a build of {recipe.name}"):
        partial.mkdir(parents=True)
        partial.chmod(0o755)
        scratch.mkdir(parents=True)
        scratch.chmod(0o755)
        handler = _file_log(partial / "build.log")
        ok = False
        try:
            with contextlib.ExitStack() as stack:
                ctx = BuildContext(loaded, distro, workdir, build_id, partial, scratch, stack,
                                   Fetcher(Cache(workdir / "cache"), config),
                                   FactoryServices(workdir, config),
                                   skip_tests=skip_tests,
                                   lock_entry=lock_entry,
                                   locked=[Artifact(**a) for a in lock_entry.get("artifacts", [])],
                                   base=base_build)
                ctx.manifest.update(_manifest_head(ctx))
                if key is not None:
                    # What the nightly plan compares: every input named and hashed (buildkey).
                    ctx.manifest["build_key"] = key
                log.info("build %s of %s (%d steps)", build_id, recipe.name, len(steps))
                for step in steps:
                    _run_step(ctx, step, progress)
                ctx.manifest["steps"] = ctx.timings
                ctx.manifest["build_seconds"] = round(sum(t["seconds"] for t in ctx.timings), 1)
                write_json(partial / "manifest.json", ctx.manifest)
            ok = True
        finally:
            logging.getLogger("imagefactory").removeHandler(handler)
            handler.close()
            with uninterrupted():
                unmount_all(scratch)  # belt and braces: nothing may stay mounted
                if recipe.builder == "packer":
                    detach_loops(scratch)
                shutil.rmtree(scratch, ignore_errors=True)
            if not ok:
                failed_log = builds / f"{build_id}.failed.log"
                with contextlib.suppress(OSError):
                    shutil.move(str(partial / "build.log"), failed_log)
                for report in ("stig-report.json", "stig-report.html"):  # the evidence of a failed gate
                    if (partial / report).is_file():
                        shutil.move(str(partial / report), builds / f"{build_id}.failed.{report}")
                shutil.rmtree(partial, ignore_errors=True)
        os.rename(partial, final)
    manifest = ctx.manifest
    manifest["path"] = str(final)
    if store is not None:
        manifest["stored"] = store.add(final)
    return manifest


def _run_step(ctx: BuildContext, step: Step, progress: ProgressHook | None) -> None:
    if progress:
        progress(step.name, "start", None)
    log.info("==> %s", step.name)
    start = time.monotonic()
    try:
        step.run(ctx)
    except BaseException:
        if progress:
            progress(step.name, "failed", time.monotonic() - start)
        log.error("step %s failed after %.1f s", step.name, time.monotonic() - start)
        raise
    took = time.monotonic() - start
    ctx.timings.append({"name": step.name, "seconds": round(took, 2)})
    log.info("<== %s (%.1f s)", step.name, took)
    if progress:
        progress(step.name, "done", took)


def _file_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("imagefactory")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return handler
