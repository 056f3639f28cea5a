"""The nightly plan: which recipes rebuild and why, which are skipped, in dependency order.

A recipe is skipped when its build key equals the `build_key` recorded in the newest published
(non-revoked) manifest of that recipe (`raw["inputs"]["build_key"]`) and none of its inputs is
unknown. It is rebuilt when it was never published, the manifest predates build keys, the key
differs (the reasons name each changed input when the manifest also records
`inputs.build_inputs`), or an input is unknown. A recipe's key includes the keys of what it
depends on (`extends` parent, `local-image` base), so a dependency whose inputs changed rebuilds
its dependants too, reported as "parent X rebuilds" (and ordered after it). A dependency that
rebuilds with an unchanged key (never published, say) does not force its dependants: their
inputs are the same, and `build --if-changed` of one recipe gives the same answer as the plan.
Recipes that do not load are listed as `invalid` with their problems, so one broken recipe does
not stop the others; their dependants fail to load as well.

Order: dependencies first (a parent before its children), then by name. `stage` is the
dependency depth among the rebuilt recipes (0: depends on nothing rebuilt here), for CI systems
that cannot express dependencies inside one matrix (GitHub Actions).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..buildkey import BuildKey, KeyMaker
from ..errors import ImageFactoryError, UserError, ValidationError
from ..lock import LockFile
from ..recipes.load import RecipeBook

Action = Literal["build", "skip", "invalid"]
LatestManifest = Callable[[str], dict[str, Any] | None]
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PlanEntry:
    recipe: str
    action: Action
    reasons: list[str]
    key: str | None = None  # None for an invalid recipe
    parent: str | None = None  # the `extends` parent
    needs: list[str] = field(default_factory=list)  # recipes rebuilt in this plan that this one waits for
    stage: int = 0
    published: str | None = None  # NAME:VERSION of the manifest compared against
    inputs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "action": self.action, "reasons": self.reasons, "key": self.key,
                "parent": self.parent, "needs": self.needs, "stage": self.stage,
                "published": self.published, "inputs": self.inputs}


@dataclass(frozen=True)
class Plan:
    entries: list[PlanEntry]

    def names(self, action: Action) -> list[str]:
        return [e.recipe for e in self.entries if e.action == action]

    @property
    def build(self) -> list[str]:
        return self.names("build")

    def entry(self, name: str) -> PlanEntry | None:
        return next((e for e in self.entries if e.recipe == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"entries": [e.to_json() for e in self.entries], "build": self.build,
                "skip": self.names("skip"), "invalid": self.names("invalid")}


def short(value: Any) -> str:
    """A value for people: sha256 hex runs cut to 12 characters."""
    return _HEX.sub(lambda m: m.group(0)[:12], str(value))


def changed_inputs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`name: old -> new` for every input that differs (added and removed ones too)."""
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            out.append(f"{k}: {short(old.get(k, 'none'))} -> {short(new.get(k, 'none'))}")
    return out


def _recorded(raw: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None, str]:
    inputs = raw.get("inputs") if isinstance(raw.get("inputs"), dict) else {}
    assert isinstance(inputs, dict)
    key = inputs.get("build_key")
    recorded = inputs.get("build_inputs")
    ref = f"{raw.get('name')}:{raw.get('version')}"
    return (str(key) if key else None), (recorded if isinstance(recorded, dict) else None), ref


def decide(bk: BuildKey, latest: dict[str, Any] | None,
           rebuilt_deps: Sequence[str] = ()) -> tuple[Action, list[str], str | None]:
    """(action, reasons, published ref) for one recipe; see the module docstring.

    `build --if-changed` of one recipe is `decide(build_key(...), latest(name))`: the same answer
    as the plan's, because a dependency that rebuilds only orders and explains (its key is an
    input, so a changed dependency changes this key too).
    """
    # A dependency's unknown inputs are said as "parent X rebuilds" when X is in the plan.
    covered = {i for i, dep in (("parent", bk.parent), ("base-image", bk.base_image)) if dep in rebuilt_deps}
    reasons = [f"{name} unknown: {why}" for name, why in sorted(bk.unknown.items()) if name not in covered]
    ref = None
    if latest is None:
        reasons.append("never published")
    else:
        key, recorded, ref = _recorded(latest)
        if key is None:
            reasons.append(f"{ref} records no build key (published before build keys)")
        elif key != bk.key:
            changes = changed_inputs(recorded, bk.inputs) if recorded is not None else []
            reasons += changes or [f"build key changed: {short(key)} -> {short(bk.key)} (see {ref})"]
    if not reasons and not bk.unknown:
        return "skip", [f"up to date: {ref} has build key {short(bk.key)}"], ref
    deps = [f"parent {d} rebuilds" if d == bk.parent else f"base image {d} rebuilds" for d in rebuilt_deps]
    return "build", deps + reasons, ref


def plan(book: RecipeBook, lock: LockFile, catalogue_latest: LatestManifest,
         names: list[str] | None = None) -> Plan:
    """The plan for `names` (None: every recipe in the book); see the module docstring."""
    wanted = list(dict.fromkeys(names)) if names is not None else book.names()
    for n in wanted:
        book.path_of(n)  # an unknown name is bad input (exit 2), not an invalid recipe
    maker = KeyMaker(book, lock)
    keys: dict[str, BuildKey] = {}
    invalid: dict[str, list[str]] = {}
    for n in wanted:
        try:
            keys[n] = maker.key(n)
        except ValidationError as e:
            invalid[n] = [str(p) for p in e.problems]
        except ImageFactoryError as e:
            invalid[n] = [str(e)]
    order = _order(wanted, keys)
    entries: dict[str, PlanEntry] = {}
    for n in order:
        if n in invalid:
            entries[n] = PlanEntry(n, "invalid", invalid[n])
            continue
        bk = keys[n]
        rebuilt = [d for d in bk.depends if d in entries and entries[d].action == "build"]
        action, reasons, ref = decide(bk, catalogue_latest(n), rebuilt)
        stage = 1 + max((entries[d].stage for d in rebuilt), default=-1)
        entries[n] = PlanEntry(n, action, reasons, bk.key, bk.parent, rebuilt if action == "build" else [],
                               stage if action == "build" else 0, ref, bk.inputs)
    return Plan([entries[n] for n in order])


def _order(wanted: list[str], keys: dict[str, BuildKey]) -> list[str]:
    """Dependencies first, then by name (Kahn's algorithm over the wanted recipes)."""
    deps = {n: [d for d in keys[n].depends if d in wanted] if n in keys else [] for n in wanted}
    done: list[str] = []
    pending = sorted(wanted)
    while pending:
        ready = [n for n in pending if all(d in done for d in deps[n])]
        if not ready:  # KeyMaker refuses cycles, so this is a bug, not bad input
            raise UserError(f"cannot order recipes: {', '.join(pending)} depend on each other")
        done.append(ready[0])
        pending.remove(ready[0])
    return done


def catalogue_latest(store: Any) -> LatestManifest:
    """A `LatestManifest` over a catalogue store: the newest non-revoked version's raw manifest.

    The index is read once (a plan asks for every recipe); manifests are not signature-checked:
    a plan only decides whether to build, it never hands an image to a consumer.
    """
    from ..catalogue.catalogue import Catalogue

    cat = Catalogue(store)
    images = cat.index().get("images", {})

    def latest(name: str) -> dict[str, Any] | None:
        usable = [v for v in images.get(name, []) if not v.get("revoked")]
        if not usable:
            return None
        version = str(max(usable, key=lambda v: str(v["version"]))["version"])
        raw, _ = cat.read_manifest(name, version)
        return raw

    return latest
