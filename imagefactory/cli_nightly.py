"""CLI commands of the nightly rebuilds: `updates check`, `plan` and `lock update`.

Thin: the work is in `imagefactory.nightly` and `imagefactory.lock`.

- `updates check [--exit-code] [RECIPE...]`: what changed upstream since the lock. Exit 0 with
  the list (possibly empty); with `--exit-code`, 3 when there are updates (for CI rules); 1 when
  an upstream could not be asked (the other recipes are still checked and listed).
- `plan (--all | RECIPE...) [--format text|json|gitlab|github] [--store NAME]`: which recipes
  rebuild and why, against the newest published manifests in the catalogue store. `--all` is
  every recipe in the recipes directory. Exit 0 whenever a plan was made: recipes that do not
  load are in it as `invalid` (a failing job in the CI formats), so one broken recipe does not
  stop the others' builds.
- `lock update [RECIPE...]` (replaces the RKE2/Zarf-only command registered in `cli.py`): every
  recipe by default, each entry with its base `source` identity too; shows the diff. A base
  source that cannot be reached is a warning (the locked one is kept when it is for the same
  source), RKE2/Zarf failures are errors as before.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from .errors import ExitStatus, UserError

if TYPE_CHECKING:
    from .cli import App

UPDATES_AVAILABLE = 3  # `updates check --exit-code`: distinct from 1 (failure) and 2 (bad input)
FORMATS = ("text", "json", "gitlab", "github")


def cmd_updates_check(app: App) -> int:
    from .nightly import CheckError, check_updates

    errors: list[CheckError] = []
    updates = check_updates(app.config(), app.book(), app.lockfile(), app.args.names or None, errors)
    data = {"updates": [u.to_json() for u in updates], "errors": [e.to_json() for e in errors],
            "lock": str(app.lockfile().path)}

    def human() -> None:
        if not updates:
            app.out.print("no updates since the lock")
        for u in updates:
            app.out.print(f"{u.recipe} {u.input}: {u.reason}", markup=False)
            if (u.old is not None or u.new is not None) and f"{u.old} -> {u.new}" not in u.reason:
                app.out.print(f"  {u.old} -> {u.new}", markup=False)

    app.emit(data, human)
    for e in errors:
        app.err.print(f"error: {e.recipe} {e.input}: {e.error}", markup=False)
    if errors:
        return int(ExitStatus.FAILED)
    return UPDATES_AVAILABLE if updates and app.args.exit_code else 0


def cmd_plan(app: App) -> int:
    from .catalogue.stores import open_store
    from .nightly import catalogue_latest, plan, render_github, render_gitlab, render_text

    a = app.args
    if a.all == bool(a.names):
        raise UserError("name the recipes to plan, or pass --all (not both)",
                        hint="imagefactory plan --all --format gitlab > child.yml")
    store = open_store(app.config(), app.workdir, a.store)
    result = plan(app.book(), app.lockfile(), catalogue_latest(store), None if a.all else a.names)
    fmt = a.format or ("json" if app.json else "text")
    if fmt == "gitlab":
        sys.stdout.write(render_gitlab(result))
    elif fmt == "github":
        sys.stdout.write(render_github(result))
    elif fmt == "json":
        sys.stdout.write(json.dumps({**result.to_json(), "store": store.describe()}, indent=2) + "\n")
    else:
        app.out.print(render_text(result), end="", markup=False, highlight=False)
    return 0


def cmd_lock_update(app: App) -> int:
    from .lock import diff, resolve_entry

    book, lockfile, cfg = app.book(), app.lockfile(), app.config()
    names = app.args.names or book.names()
    recipes = [book.load(n).recipe for n in names]
    cache: dict[str, Any] = {}  # a Release or SHA256SUMS shared by several recipes is fetched once
    entries: dict[str, dict[str, Any]] = {}
    warnings: dict[str, list[str]] = {}
    for r in recipes:
        entry, warns = resolve_entry(cfg, r, lockfile.raw_entry(r.name), cache)
        entries[r.name] = entry
        if warns:
            warnings[r.name] = warns
    old = lockfile.update(entries)
    changes = {n: diff(old.get(n), e) for n, e in entries.items()}

    def human() -> None:
        for name, lines in changes.items():
            app.out.print(f"[bold]{name}[/]: " + ("unchanged" if not lines else ""))
            for line in lines:
                app.out.print(f"  {line}", markup=False)
        app.out.print(f"wrote {lockfile.path}")

    app.emit({"lock": str(lockfile.path), "changes": changes, "warnings": warnings}, human)
    for name, warns in warnings.items():
        for w in warns:
            app.err.print(f"warning: {name}: {w}", markup=False)
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `updates`, `plan` and the nightly `lock update` on the top-level subparsers."""
    u = sub.add_parser("updates", help="what changed upstream since the lock (new images, packages, RKE2)")
    us = u.add_subparsers(dest="updates_command", required=True, metavar="ACTION")
    s = us.add_parser("check", help="check the recipes' inputs against upstream (network; writes nothing)")
    s.add_argument("names", nargs="*", metavar="RECIPE", help="default: every recipe")
    s.add_argument("--exit-code", action="store_true",
                   help=f"exit {UPDATES_AVAILABLE} when there are updates (CI rules), 0 when there are none")
    s.set_defaults(func=cmd_updates_check)

    p = sub.add_parser("plan", help="which recipes rebuild and why (build keys vs the published catalogue)")
    p.add_argument("names", nargs="*", metavar="RECIPE")
    p.add_argument("--all", action="store_true", help="every recipe in the recipes directory")
    p.add_argument("--format", choices=FORMATS,
                   help="text (default), json (default with --json), gitlab (child pipeline YAML), "
                        "github (strategy.matrix JSON)")
    p.add_argument("--store", help="catalogue store holding the published manifests (default as for publish)")
    p.set_defaults(func=cmd_plan)

    lk = sub.add_parser("lock", help="the input lock (recipes/imagefactory.lock)")
    lks = lk.add_subparsers(dest="lock_command", required=True, metavar="ACTION")
    s = lks.add_parser("update", help="resolve channels, record artifact hashes and base-source identities "
                       "(network)")
    s.add_argument("names", nargs="*", metavar="RECIPE", help="default: every recipe")
    s.set_defaults(func=cmd_lock_update)
