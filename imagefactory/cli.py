"""The command line: a thin layer that parses arguments, calls the library and maps errors.

Exit codes: 0 ok, 1 build/test failure, 2 bad input, 130 interrupted. `--json` prints one JSON
document on stdout (logs go to stderr); `--debug` adds tracebacks and debug logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from .errors import ExitStatus, ImageFactoryError, UserError, ValidationError

DEFAULT_WORKDIR = Path("/var/lib/imagefactory")
STIG_CATALOGUES = ["ubuntu2204", "ubuntu2404", "slmicro5", "rke2"]  # those with a catalogue in stig/


class App:
    """What every command needs: parsed globals, consoles, paths."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = args.json
        self.debug: bool = args.debug
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.workdir = Path(args.workdir or os.environ.get("IMAGEFACTORY_WORKDIR") or DEFAULT_WORKDIR)
        self.recipes_dir = Path(args.recipes or os.environ.get("IMAGEFACTORY_RECIPES") or _default_recipes())

    def config(self) -> Any:
        from .config import load_config

        return load_config(self.args.config)

    def fetcher(self) -> Any:
        from .artifacts import Cache, Fetcher

        return Fetcher(Cache(self.workdir / "cache"), self.config())

    def lockfile(self) -> Any:
        from .lock import LockFile

        return LockFile(self.recipes_dir)

    def book(self) -> Any:
        from .recipes import RecipeBook

        return RecipeBook(self.recipes_dir)

    def store(self) -> Any:
        from .store.local import LocalStore

        return LocalStore(self.workdir / "store")

    def emit(self, data: Any, human: Callable[[], None]) -> None:
        if self.json:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        else:
            human()


def _default_recipes() -> Path:
    cwd = Path.cwd() / "recipes"
    if cwd.is_dir():
        return cwd
    return Path(__file__).resolve().parent.parent / "recipes"


# --- commands -----------------------------------------------------------------------------------


def cmd_build(app: App) -> int:
    from .build import build

    a = app.args
    if a.base and (a.all or a.if_changed or a.publish):
        raise UserError("build: --base names one earlier build of one recipe; not with --all, --if-changed "
                        "or --publish", hint="imagefactory build debian-12-base --base WORKDIR/builds/"
                                             "debian-12-base/VERSION")
    if a.all or a.if_changed or a.publish:
        return cmd_build_plan(app)
    if not a.recipe:
        raise UserError("build: name a recipe, or use --all", hint="imagefactory build debian-12-base")
    loaded = app.book().load(app.args.recipe)
    progress = _Progress(app) if not app.json else None
    try:
        manifest = build(loaded, app.workdir, store=None if app.args.no_store else app.store(),
                         skip_tests=app.args.skip_tests, progress=progress, config=app.config(),
                         base=_base(app, loaded) if a.base else None)
    finally:
        if progress:
            progress.close()
    summary = {
        "name": manifest["name"], "version": manifest["version"], "path": manifest["path"],
        "stored": manifest.get("stored"), "image": manifest["image"], "tests": manifest["tests"],
        "build_seconds": manifest["build_seconds"], "steps": manifest["steps"],
    }

    def human() -> None:
        img = manifest["image"]
        app.out.print(f"[bold green]built[/] {manifest['name']} {manifest['version']}")
        app.out.print(f"  image   {manifest['path']}/{img['file']} ({img['size'] / 1024**2:.0f} MiB, "
                      f"virtual {img['virtual_size'] / 1024**3:.1f} GiB)")
        app.out.print(f"  sha256  {img['sha256']}")
        t = manifest["tests"]
        if t.get("ok") is not None:
            app.out.print(f"  tests   {t['passed']} passed, {t['failed']} failed "
                          f"({t['accelerator']}, boot {t['boot_seconds']} s)")
        if manifest.get("stored"):
            app.out.print(f"  stored  {manifest['stored']}")

    app.emit(summary, human)
    return 0


def _base(app: App, loaded: Any) -> Any:
    """`--base`: an earlier build's directory (a path), or a published image of the recipe
    (`NAME@CHANNEL`, `NAME:VERSION`), pulled and verified from the catalogue store."""
    from .build import published_base
    from .cli_images import _anchor, _store

    value = app.args.base
    if "/" in value or Path(value).is_dir():
        return Path(value)
    if loaded.recipe.builder != "rootfs":
        raise UserError(f"--base: recipe {loaded.recipe.name} uses the {loaded.recipe.builder} builder",
                        hint="only the rootfs (mmdebstrap) builder writes its file system itself")
    return published_base(loaded, _store(app), value, _anchor(app), app.workdir / "cache" / "bases")


def cmd_build_plan(app: App) -> int:
    """`build --all|RECIPE --if-changed [--publish] [--promote-on-green]`: see nightly.runner."""
    from .cli_images import _private_key, _public_key, _store
    from .nightly.render import render_junit, render_summary
    from .nightly.runner import Publishing, run_plan

    a = app.args
    if a.all == bool(a.recipe):
        raise UserError("build: name one recipe or use --all (not both)")
    if a.promote_on_green and not (a.publish or a.if_changed):
        raise UserError("--promote-on-green needs --publish or --if-changed")
    publishing = Publishing(_store(app), lambda: (_private_key(app), _public_key(app)),
                            promote_on_green=a.promote_on_green, signing=app.config().signing,
                            base_on_published=not a.no_base) if a.publish or a.if_changed else None
    progress = _Progress(app) if not app.json else None

    def show(r: Any) -> None:
        if not app.json:
            colour = {"built": "green", "skipped": "cyan", "failed": "red"}[r.status]
            app.err.print(f"[bold {colour}]{r.status}[/] {r.recipe} {r.version or ''} {r.error or ''}")

    try:
        _plan, results = run_plan(app.book(), app.workdir, [a.recipe] if a.recipe else None,
                                  if_changed=a.if_changed, publishing=publishing, config=app.config(),
                                  local_store=None if a.no_store else app.store(), skip_tests=a.skip_tests,
                                  progress=progress, on_result=show)
    finally:
        if progress:
            progress.close()
    doc, markdown = render_summary(results)
    out = Path(a.summary) if a.summary else None
    if out is not None:
        from .fsutil import atomic_write

        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "summary.json", json.dumps(doc, indent=2) + "\n")
        atomic_write(out / "summary.md", markdown)
        atomic_write(out / "junit.xml", render_junit(results))
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as f:
            f.write(markdown)
    app.emit(doc, lambda: app.out.print(markdown))
    return 0 if doc["ok"] else 1


def cmd_test(app: App) -> int:
    import datetime as dt

    from .cli_stig import TEST_RECORD, test_stig
    from .fsutil import write_json
    from .recipes.model import Recipe
    from .testing.harness import run_suites

    image = app.store().resolve(app.args.image)
    manifest_path = image.parent / "manifest.json"
    if app.args.recipe:
        recipe = app.book().load(app.args.recipe).recipe
    elif manifest_path.is_file():
        recipe = Recipe.model_validate(json.loads(manifest_path.read_text())["recipe"]["merged"])
    else:
        raise UserError(f"{image}: no manifest.json next to it", hint="pass --recipe NAME")
    import shutil
    import tempfile

    (app.workdir / "tmp").mkdir(parents=True, exist_ok=True)
    # libvirt's qemu user must reach the overlays: a world-traversable scratch dir of this run
    scratch = Path(tempfile.mkdtemp(prefix="test-", dir=app.workdir / "tmp"))
    scratch.chmod(0o755)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d.%H%M%S")
    out = Path(app.args.output) if app.args.output else app.workdir / "tests" / f"{image.stem}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    junit = Path(app.args.junit) if app.args.junit else out / "junit.xml"
    with app.err.status(f"booting {recipe.tests.clones} clone(s) of {image.name} and testing"):
        try:
            results = run_suites(image, recipe, junit, scratch, scratch,
                                 stig_results=out / "stig-results.json")
        finally:
            # serial consoles go with the results (evidence of what the guests did), the rest goes
            for console in scratch.glob("console-*.log"):
                shutil.copyfile(console, out / console.name)
            shutil.rmtree(scratch, ignore_errors=True)
    data = results.as_dict() | {"image": str(image), "junit": str(junit), "output": str(out)}
    write_json(out / TEST_RECORD, {"image": {"path": str(image), "file": image.name},
                                   "recipe": {"merged": recipe.model_dump(mode="json")}, "tests": data})
    stig = test_stig(app, recipe, image, out)
    if stig is not None:
        data["stig"] = stig
    ok = results.ok and (stig is None or stig["gate"]["passed"])

    def human() -> None:
        colour = "green" if results.ok else "red"
        app.out.print(f"[bold {colour}]{'passed' if results.ok else 'FAILED'}[/] {image}: "
                      f"{results.passed} passed, {results.failed} failed, {results.errors} errors "
                      f"(boot {results.boot_seconds:.0f} s, tests {results.test_seconds:.0f} s)")
        for name in results.failures:
            app.out.print(f"  failed: {name}")
        if stig is not None:
            gate = stig["gate"]
            app.out.print(f"STIG gate {'[bold green]passed[/]' if gate['passed'] else '[bold red]FAILED[/]'}"
                          f" (report: {out}/stig-report.html)")
            for reason in gate["reasons"]:
                app.out.print(f"  {reason}", markup=False)

    app.emit(data, human)
    return 0 if ok else 1


def cmd_recipes_list(app: App) -> int:
    book = app.book()
    rows = []
    for name in book.names():
        try:
            r = book.load(name).recipe
            rows.append({"name": name, "os": f"{r.os.family} {r.os.release}", "builder": r.builder,
                         "extends": r.extends, "description": r.description, "valid": True})
        except ImageFactoryError as e:
            rows.append({"name": name, "valid": False, "error": str(e)})

    def human() -> None:
        t = Table("name", "os", "builder", "extends", "description")
        for row in rows:
            if row["valid"]:
                t.add_row(row["name"], row["os"], row["builder"], row["extends"] or "", row["description"])
            else:
                t.add_row(row["name"], "[red]invalid[/]", "", "", "run 'recipes validate'")
        app.out.print(t)

    app.emit(rows, human)
    return 0


def cmd_recipes_show(app: App) -> int:
    loaded = app.book().load(app.args.name)
    data = {"name": loaded.recipe.name, "files": [str(f) for f in loaded.files],
            "digest": loaded.digest, "recipe": loaded.recipe.model_dump(mode="json")}
    app.emit(data, lambda: app.out.print(yaml.safe_dump(data, sort_keys=False), end=""))
    return 0


def cmd_recipes_render(app: App) -> int:
    loaded = app.book().load(app.args.name)
    data = loaded.recipe.model_dump(mode="json", exclude={"name"})
    app.emit(data, lambda: app.out.print(
        f"# {loaded.recipe.name}: merged from {' <- '.join(str(f) for f in reversed(loaded.files))}\n"
        + yaml.safe_dump(data, sort_keys=False), end=""))
    return 0


def cmd_recipes_validate(app: App) -> int:
    import tempfile

    book = app.book()
    names = app.args.names or book.names()
    packer = bool(getattr(app.args, "packer", False))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="imagefactory-validate-") as tmp:
        for name in names:
            try:
                loaded = book.load(name)
                entry: dict[str, Any] = {"name": name, "valid": True, "digest": loaded.digest, "problems": []}
                if packer and loaded.recipe.builder == "packer":
                    from .builders.packer import validate_recipe

                    # The twin of a build's packer-template step: the same rendering, packer validate.
                    entry["problems"] = validate_recipe(loaded.recipe, Path(tmp))
                    entry["packer"] = "valid" if not entry["problems"] else "invalid"
                    entry["valid"] = not entry["problems"]
                results.append(entry)
            except ValidationError as e:
                results.append({"name": name, "valid": False, "problems": [str(p) for p in e.problems]})
            except UserError as e:
                results.append({"name": name, "valid": False, "problems": [str(e)]})
    bad = [r for r in results if not r["valid"]]

    def human() -> None:
        for r in results:
            if r["valid"]:
                note = " (packer validate: ok)" if r.get("packer") else ""
                app.out.print(f"[green]ok[/]      {r['name']}{note}")
            else:
                app.out.print(f"[red]invalid[/] {r['name']}")
                for p in r["problems"]:
                    app.err.print(p, markup=False)

    app.emit({"valid": not bad, "recipes": results}, human)
    return ExitStatus.USER_ERROR if bad else 0


def cmd_schema(app: App) -> int:
    from .recipes.model import recipe_json_schema

    sys.stdout.write(json.dumps(recipe_json_schema(), indent=2) + "\n")
    return 0


def _locked(app: App, name: str) -> tuple[Any, dict[str, Any]]:
    recipe = app.book().load(name).recipe
    return recipe, app.lockfile().entry(recipe)


def cmd_artifacts_fetch(app: App) -> int:
    from .artifacts import Artifact, cloud_image_artifact
    from .lock import needs_lock
    from .recipes.model import CloudImageSource

    recipe = app.book().load(app.args.recipe).recipe
    fetcher = app.fetcher()
    arts = [Artifact(**a) for a in app.lockfile().entry(recipe)["artifacts"]] if needs_lock(recipe) else []
    if isinstance(recipe.source, CloudImageSource):
        src = recipe.source
        arts.insert(0, cloud_image_artifact(src.url, src.checksum, src.checksum_url))
    if not arts:
        raise UserError(f"{recipe.name} has no external artifacts (mmdebstrap source, no rke2/zarf)")
    paths = {a.name: str(fetcher.get(a, recipe.name)) for a in arts}
    fetcher.verify_against_sums(arts, recipe.name)
    app.emit({"recipe": recipe.name, "artifacts": paths},
             lambda: app.out.print(f"{len(paths)} artifacts of {recipe.name} verified in "
                                   f"{app.workdir / 'cache'}"))
    return 0


def cmd_artifacts_export(app: App) -> int:
    from .artifacts import export_bundle
    from .hauler import export_hauler

    recipe, entry = _locked(app, app.args.recipe)
    out = Path(app.args.output)
    writer = export_hauler if app.args.format == "hauler" else export_bundle
    manifest = writer(app.fetcher(), recipe.name, entry, out)
    size = out.stat().st_size
    app.emit({"bundle": str(out), "size": size, "files": manifest["files"]},
             lambda: app.out.print(f"wrote {out} ({len(manifest['files'])} artifacts, "
                                   f"{size / 1024**2:.1f} MiB)"))
    return 0


def cmd_artifacts_import(app: App) -> int:
    from .artifacts import Cache, import_bundle
    from .hauler import import_hauler, is_hauler_layout

    def entry_for(name: str) -> dict[str, Any]:
        return dict(_locked(app, name)[1])

    source = Path(app.args.bundle)
    if is_hauler_layout(source):
        if not app.args.recipe:
            raise UserError(f"{source} is a Hauler store/haul, which names no recipe",
                            hint="give the recipe whose lock it is checked against: --recipe NAME")
        result = import_hauler(Cache(app.workdir / "cache"), source, app.args.recipe,
                               entry_for(app.args.recipe))
        app.emit(result, lambda: app.out.print(
            f"imported {len(result['files'])} verified artifacts for {result['recipe']} from Hauler"
            + (f"; still missing: {', '.join(result['missing'])}" if result["missing"] else "")))
        return 0
    manifest = import_bundle(Cache(app.workdir / "cache"), source, entry_for)
    app.emit({"recipe": manifest["recipe"], "files": manifest["files"]},
             lambda: app.out.print(f"imported {len(manifest['files'])} verified artifacts for "
                                   f"{manifest['recipe']}"))
    return 0


def cmd_stig_list(app: App) -> int:
    from .stig.catalogue import load_catalogue

    cat = load_catalogue(app.args.benchmark)
    rows: list[dict[str, Any]] = [
            {"id": rule.stig_id, "vuln_id": rule.vuln_id, "rule_id": rule.rule_id, "cat": rule.cat,
             "title": rule.title, "phase": c.phase if c else None,
             "applies_to": list(c.applies_to) if c else [], "automated": bool(c and c.automated)}
            for rule, c in cat.all_rules()]
    if app.args.family:
        rows = [r for r in rows if app.args.family in r["applies_to"]]

    def human() -> None:
        t = Table("STIG id", "CAT", "phase", "title")
        for r in rows:
            t.add_row(r["id"], "I" * r["cat"], r["phase"] or "[dim]manual / not automated[/]",
                      r["title"][:90])
        app.out.print(t)
        app.out.print(f"{cat.benchmark.title} {cat.benchmark.release_info}: {len(rows)} rules, "
                      f"{sum(r['automated'] for r in rows)} automated")

    app.emit({"benchmark": app.args.benchmark, "rules": rows}, human)
    return 0


def cmd_stig_show(app: App) -> int:
    from .stig.catalogue import load_catalogue

    found = next(((n, c) for n in STIG_CATALOGUES if app.args.id in (c := load_catalogue(n)).benchmark.rules),
                 None)
    if found is None:
        raise UserError(f"{app.args.id}: no such STIG id in the shipped benchmarks",
                        hint="see 'imagefactory stig list --benchmark NAME'")
    name, cat = found
    rule, control = cat.benchmark.rules[app.args.id], cat.get(app.args.id)
    data = {"benchmark": name, "id": rule.stig_id, "vuln_id": rule.vuln_id, "rule_id": rule.rule_id,
            "cat": rule.cat, "title": rule.title, "check_content": rule.check_content,
            "fixtext": rule.fixtext, "ccis": list(rule.ccis),
            "catalogue": control.spec.model_dump(mode="json") if control else None}
    app.emit(data, lambda: app.out.print(yaml.safe_dump(data, sort_keys=False, width=100), end="",
                                         markup=False))
    return 0


# --- plumbing -----------------------------------------------------------------------------------


class _Progress:
    """Step-by-step progress on stderr: a spinner with elapsed time for the running step."""

    def __init__(self, app: App) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = app.err
        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                            console=app.err, transient=True)
        self.bar.start()
        self.task: Any = None

    def __call__(self, step: str, state: str, seconds: float | None) -> None:
        if state == "start":
            self.task = self.bar.add_task(step)
            return
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        mark = "[green]✓[/]" if state == "done" else "[red]✗[/]"
        self.console.print(f"{mark} {step} ({seconds or 0:.1f} s)")

    def close(self) -> None:
        self.bar.stop()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imagefactory", description="Golden VM image factory")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--debug", action="store_true", help="tracebacks and debug logs")
    p.add_argument("--workdir", help=f"builds, store and scratch space (default {DEFAULT_WORKDIR}, "
                   "or $IMAGEFACTORY_WORKDIR)")
    p.add_argument("--recipes", help="recipe directory (default ./recipes, or $IMAGEFACTORY_RECIPES)")
    p.add_argument("--config", help="factory configuration (default $IMAGEFACTORY_CONFIG or "
                   "./imagefactory.yaml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("build", help="build, boot-test and store an image from a recipe")
    b.add_argument("recipe", nargs="?", help="recipe name or path to a recipe file")
    b.add_argument("--skip-tests", action="store_true", help="no boot test (the image is marked untested)")
    b.add_argument("--no-store", action="store_true", help="do not add the image to the local store")
    b.add_argument("--base", metavar="BUILD_DIR|REF", help="write the root file system in place over an "
                   "earlier build's - a build directory (WORKDIR/builds/NAME/VERSION) or a published image "
                   "(NAME@CHANNEL, NAME:VERSION; from --store): a disk that differs from it by what changed, "
                   "so a site holding it needs a small delta (rootfs builder)")
    b.add_argument("--no-base", action="store_true", help="with --if-changed/--publish: a full mkfs for "
                   "every image, not its root written over the newest published one's")
    b.add_argument("--all", action="store_true", help="every recipe, in dependency order (with --if-changed: "
                   "the nightly)")
    b.add_argument("--if-changed", action="store_true", help="skip recipes whose build key equals the newest "
                   "published one; build, test and publish the rest (to 'candidate')")
    b.add_argument("--publish", action="store_true", help="publish what was built (implied by --if-changed)")
    b.add_argument("--promote-on-green", action="store_true",
                   help="promote published images whose tests and STIG gate passed to 'stable'")
    b.add_argument("--store", metavar="NAME", help="catalogue store compared against and published to")
    b.add_argument("--summary", metavar="DIR", help="write summary.json, summary.md and junit.xml of the run "
                   "here (also appended to $GITHUB_STEP_SUMMARY when set)")
    b.set_defaults(func=cmd_build)

    t = sub.add_parser("test", help="boot an image under libvirt and run its test suites")
    t.add_argument("image", help="store reference (name or name:version), build dir or image file")
    t.add_argument("--recipe", help="recipe whose tests to run (default: the image's own)")
    t.add_argument("--junit", help="write JUnit XML here (default: in the output directory)")
    t.add_argument("-o", "--output", help="results directory (default WORKDIR/tests/IMAGE-TIME): junit.xml, "
                   "test.json, STIG results, report and checklists")
    t.set_defaults(func=cmd_test)

    r = sub.add_parser("recipes", help="list, show, render and validate recipes")
    rs = r.add_subparsers(dest="recipes_command", required=True, metavar="ACTION")
    rs.add_parser("list", help="all recipes").set_defaults(func=cmd_recipes_list)
    s = rs.add_parser("show", help="a recipe, validated, with its files and digest")
    s.add_argument("name")
    s.set_defaults(func=cmd_recipes_show)
    s = rs.add_parser("render", help="the merged recipe (extends applied, defaults filled in)")
    s.add_argument("name")
    s.set_defaults(func=cmd_recipes_render)
    s = rs.add_parser("validate", help="validate recipes (all by default); exit 2 if any is invalid")
    s.add_argument("names", nargs="*")
    s.add_argument("--packer", action="store_true",
                   help="also render the Packer template of packer-built recipes and run 'packer validate'")
    s.set_defaults(func=cmd_recipes_validate)
    v = sub.add_parser("validate",
                       help="validate recipes and run 'packer validate' on every packer-built one")
    v.add_argument("names", nargs="*")
    v.set_defaults(func=cmd_recipes_validate, packer=True)

    sub.add_parser("schema", help="JSON Schema of the recipe format").set_defaults(func=cmd_schema)

    a = sub.add_parser("artifacts", help="external build inputs: fetch, export and import bundles")
    asub = a.add_subparsers(dest="artifacts_command", required=True, metavar="ACTION")
    s = asub.add_parser("fetch", help="download and verify a recipe's locked artifacts into the cache")
    s.add_argument("recipe")
    s.set_defaults(func=cmd_artifacts_fetch)
    s = asub.add_parser("export", help="write an air-gap bundle of a recipe's artifacts")
    s.add_argument("recipe")
    s.add_argument("-o", "--output", required=True, help="bundle file (tar; a haul: .tar.zst)")
    s.add_argument("--format", choices=("bundle", "hauler"), default="bundle",
                   help="bundle: imagefactory's own; hauler: a haul for `hauler store load`")
    s.set_defaults(func=cmd_artifacts_export)
    s = asub.add_parser("import", help="verify a bundle (or a Hauler store/haul) against the lock and "
                        "add it to the cache")
    s.add_argument("bundle", help="an imagefactory bundle, a Hauler haul (.tar.zst) or store directory")
    s.add_argument("--recipe", help="for Hauler content: the recipe whose locked artifacts to take")
    s.set_defaults(func=cmd_artifacts_import)

    st = sub.add_parser("stig", help="the STIG catalogue (DISA benchmarks joined with our fixes)")
    sts = st.add_subparsers(dest="stig_command", required=True, metavar="ACTION")
    s = sts.add_parser("list", help="every rule of a benchmark with how the factory handles it")
    s.add_argument("--benchmark", default="ubuntu2204", choices=STIG_CATALOGUES)
    s.add_argument("--family", help="only controls applying to this OS family (or RKE2 role)")
    s.set_defaults(func=cmd_stig_list)
    s = sts.add_parser("show", help="one rule: DISA text plus the catalogue entry")
    s.add_argument("id", help="STIG id, e.g. UBTU-22-255040")
    s.set_defaults(func=cmd_stig_show)
    from .cli_stig import add_parsers

    add_parsers(sts, lambda parser, func: parser.set_defaults(func=func))

    from .cli_images import add_parsers as add_image_parsers

    add_image_parsers(sub)  # publish, keys, images
    from .cli_clusters import add_parsers as add_cluster_parsers

    add_cluster_parsers(sub)  # harvester, cluster
    from .cli_nightly import add_parsers as add_nightly_parsers

    add_nightly_parsers(sub)  # updates check, plan, lock update (with base sources)
    from .cli_sites import add_parsers as add_site_parsers

    add_site_parsers(sub)  # site add|list|show|remove|plan|export|ack|init|import
    from .cli_trust import add_parsers as add_trust_parsers

    add_trust_parsers(sub)  # trust status|init|refresh|rotate
    return p


def _setup_logging(app: App) -> None:
    level = logging.DEBUG if app.debug else (logging.WARNING if app.json else logging.INFO)
    handler: logging.Handler
    if app.err.is_terminal:
        handler = RichHandler(console=app.err, show_path=False, show_time=False, markup=False,
                              rich_tracebacks=False)
    else:  # CI logs: one unwrapped line per record
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.setLevel(level)
    logger = logging.getLogger("imagefactory")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    # paramiko logs every refused connection while a guest boots; that is expected, not news.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (CI cancelling a job) takes the same cleanup path as Ctrl-C.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    app = App(args)
    _setup_logging(app)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = int(args.func(app))
    except ImageFactoryError as e:
        if app.debug:
            traceback.print_exc()
        _report(app, e)
        code = int(e.exit_status)
    except KeyboardInterrupt:
        app.err.print("[red]interrupted[/]: cleaned up, nothing was stored")
        code = int(ExitStatus.INTERRUPTED)
    return code


def _report(app: App, e: ImageFactoryError) -> None:
    if app.json:
        problems = [str(p) for p in e.problems] if isinstance(e, ValidationError) else [str(e)]
        sys.stdout.write(json.dumps({"error": type(e).__name__, "problems": problems}, indent=2) + "\n")
    if isinstance(e, ValidationError):
        for p in e.problems:
            app.err.print(f"error: {p}", markup=False)
    else:
        app.err.print(f"error: {e.message}", markup=False)
        if e.hint:
            app.err.print(f"hint: {e.hint}", markup=False)


if __name__ == "__main__":
    sys.exit(main())
