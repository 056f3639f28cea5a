"""`updates check`: what changed upstream since the lock, per recipe, with the reason.

Checked (network; nothing is written):
- `source`: an mmdebstrap source's `dists/<suite>/Release` (changed: new packages in the mirror);
  a cloud image's line in its SHA256SUMS (`checksum_url`; changed: a new image). A checksum
  pinned in the recipe never changes and is not fetched.
- `updates`, `security`: `dists/<codename>-updates|-security/Release` where builds install them
  (see `archive.pocket_suites`); changed: updates are available.
- `rke2`: the channel's current release (a new patch, or a new minor for a channel such as
  `latest`); a pinned `rke2.version` never changes and is not asked about.
- `zarf`: nothing. The recipe model takes only exact Zarf versions, which never change.
- `lock`: a recipe not locked yet, or whose rke2/zarf section changed since it was locked.

Each upstream document is fetched once per run, however many recipes share it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..archive import pocket_suites
from ..config import FactoryConfig
from ..errors import ImageFactoryError
from ..lock import (
    POCKETS,
    LockFile,
    describe_release,
    describe_source,
    input_key,
    resolve_rke2_version,
    resolve_source,
    source_matches,
)
from ..recipes.load import RecipeBook
from ..recipes.model import LocalImageSource, Recipe


@dataclass(frozen=True)
class Update:
    recipe: str
    input: str  # source, updates, security, rke2, lock
    old: str | None
    new: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckError:
    """An upstream that could not be asked (the other recipes are still checked)."""

    recipe: str
    input: str
    error: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_updates(cfg: FactoryConfig, book: RecipeBook, lock: LockFile, names: list[str] | None = None,
                  errors: list[CheckError] | None = None) -> list[Update]:
    """Updates for `names` (None: every recipe).

    Without `errors`, the first recipe that does not load or upstream that cannot be reached
    raises; with it, each failure is appended there and the remaining checks go on.
    """
    wanted = list(dict.fromkeys(names)) if names is not None else book.names()
    recipes: list[Recipe] = []
    for n in wanted:
        book.path_of(n)  # an unknown name is always bad input
        try:
            recipes.append(book.load(n).recipe)
        except ImageFactoryError as e:
            if errors is None:
                raise
            errors.append(CheckError(n, "recipe", str(e)))
    cache: dict[str, Any] = {}
    out: list[Update] = []
    for r in recipes:
        entry = lock.raw_entry(r.name)
        for part, check in (("source", _source), ("rke2", _rke2)):
            try:
                out += check(cfg, r, entry, cache)
            except ImageFactoryError as e:
                if errors is None:
                    raise
                errors.append(CheckError(r.name, part, str(e)))
        if entry is not None and (r.rke2 or r.zarf) and entry.get("key") != input_key(r):
            out.append(Update(r.name, "lock", None, None,
                              "rke2/zarf changed in the recipe since it was locked: run 'imagefactory lock "
                              f"update {r.name}'"))
    return out


def _source(cfg: FactoryConfig, r: Recipe, entry: dict[str, Any] | None,
            cache: dict[str, Any]) -> list[Update]:
    locked = (entry or {}).get("source")
    if isinstance(r.source, LocalImageSource) and not pocket_suites(r):
        return []  # a local image's identity is its recipe's build key: nothing upstream to ask
    # Pinned checksums and local images are not fetched here, only their pockets.
    now = resolve_source(cfg, r, cache)
    if not isinstance(locked, dict) or not source_matches(r, locked):
        why = "is not in the lock yet" if not isinstance(locked, dict) else "differs from the one locked"
        return [Update(r.name, "source", describe_source(locked if isinstance(locked, dict) else None),
                       describe_source(now), f"the recipe's base source {why}: run 'imagefactory lock update "
                                             f"{r.name}'")]
    out: list[Update] = []
    if locked.get("type") == "mmdebstrap" and locked.get("release_sha256") != now.get("release_sha256"):
        out.append(Update(r.name, "source", describe_source(locked), describe_source(now),
                          f"mirror Release changed: new packages in {now['mirror']} {now['suite']} "
                          f"(Date: {locked.get('date')} -> {now.get('date')})"))
    if locked.get("type") == "cloud-image" and locked.get("sha256") != now.get("sha256"):
        out.append(Update(r.name, "source", describe_source(locked), describe_source(now),
                          f"new cloud image: {now.get('checksum_url')} lists sha256 {now.get('sha256')} for "
                          f"{str(now.get('url')).rsplit('/', 1)[-1]}"))
    for pocket in POCKETS:
        old, new = locked.get(pocket) or {}, now.get(pocket) or {}
        if old.get("release_sha256") != new.get("release_sha256"):
            what = (f"{pocket} available" if new.get("release_sha256")
                    else f"the {pocket} suite is no longer served")
            out.append(Update(r.name, pocket, describe_release(old or None), describe_release(new or None),
                              f"{what}: {new.get('url') or old.get('url')} changed "
                              f"(Date: {old.get('date')} -> {new.get('date')})"))
    return out


def _rke2(cfg: FactoryConfig, r: Recipe, entry: dict[str, Any] | None, cache: dict[str, Any]) -> list[Update]:
    if r.rke2 is None or r.rke2.channel is None:
        return []  # a pinned version never changes
    key = f"channel {cfg.upstream.rke2_channels} {r.rke2.channel}"
    if key not in cache:
        cache[key] = resolve_rke2_version(cfg, r.rke2)
    new = str(cache[key])
    old = ((entry or {}).get("rke2") or {}).get("version")
    if old == new:
        return []
    if old is None:
        return [Update(r.name, "rke2", None, new, f"not locked yet: channel {r.rke2.channel} is at {new}")]
    kind = "patch" if _minor(old) == _minor(new) else "minor"
    return [Update(r.name, "rke2", old, new, f"new RKE2 {kind} release in channel {r.rke2.channel}: "
                                             f"{old} -> {new}")]


def _minor(version: str) -> str:
    return ".".join(version.lstrip("v").split(".")[:2])
