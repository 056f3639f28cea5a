"""Build keys: every input of an image, named and hashed, and one sha256 over all of them.

`build` records a recipe's key in its build manifest (`build_key_of`) and the nightly plan
(`imagefactory.nightly`) compares it with the published one; this module sits below both and
imports neither.

The inputs of recipe NAME (`BuildKey.inputs`, flat: input name -> version or hash):

- `imagefactory`: the imagefactory version (`IMAGEFACTORY_VERSION`);
- `recipe`: the merged-recipe digest (`LoadedRecipe.digest`: every key after `extends`);
- `packages`: a digest of `packages.install`/`remove` (also in `recipe`; named so that a plan says
  "packages" rather than only "recipe");
- `templates`: a digest of the template files the recipe renders (their text is not in `recipe`);
- `source`: the base as locked (`lock.resolve_source`): the suite's Release sha256 + Date for
  mmdebstrap, the image's sha256 for a cloud image; `updates`, `security`: the Release of each
  pocket the build adds (`archive.pocket_suites`);
- `base-image`: the build key of the recipe a `local-image` source names (its newest image is
  the base), or the pinned `NAME:VERSION`;
- `rke2`, `zarf`: the locked version and a digest of the locked artifacts (name + sha256);
- `stig:<benchmark>`: the benchmark release (e.g. V2R8) and the sha256 of the catalogue, the
  DISA XCCDF and, with OpenSCAP, the ComplianceAsCode mapping; `waivers:<name>`: each waiver file;
- `zarf-verify-key`: the sha256 of the recipe's `zarf.verify.key` (baked; it decides what deploys);
- `parent`: the build key of the `extends` parent, so that a parent's change changes every child.

An input whose identity is not known (no lock entry, a stale one, a source locked by an older
imagefactory) is recorded as "unknown" and listed in `BuildKey.unknown` with the reason: such a
key never counts as unchanged, the plan always rebuilds it. Computing keys never touches the
network: it reads the recipes, the lock and local files only.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .archive import pocket_suites
from .errors import UserError
from .lock import LockFile, input_key
from .recipes.load import RecipeBook
from .recipes.located import LoadedRecipe
from .recipes.model import CloudImageSource, LocalImageSource, Recipe
from .stig.cac import MAPPED_BENCHMARKS, mapping_path
from .stig.catalogue import catalogue_dir
from .stig.selection import resolve_waiver_path
from .stig.xccdf import benchmark_path, load_benchmark

UNKNOWN = "unknown"
# The imagefactory version in every build key: a new release rebuilds every image. Read at call
# time (`_factory_version`), so it can be replaced here (tests, a build that wants to include a
# git commit).
IMAGEFACTORY_VERSION: str = __version__


@dataclass(frozen=True)
class BuildKey:
    """The build key of one recipe (see the module docstring)."""

    recipe: str
    key: str  # sha256 hex of the canonical JSON of `inputs`
    inputs: dict[str, Any]
    unknown: dict[str, str] = field(default_factory=dict)  # input -> why it is unknown
    parent: str | None = None  # the `extends` parent
    base_image: str | None = None  # the recipe a local-image source is built from
    depends: tuple[str, ...] = ()  # recipes whose keys are inputs: parent, local-image base

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "key": self.key, "inputs": self.inputs, "unknown": self.unknown,
                "parent": self.parent, "base_image": self.base_image, "depends": list(self.depends)}


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    return _sha256_bytes(path.read_bytes())


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _factory_version() -> str:
    # The module global at call time, not a copy bound at import: it may be replaced.
    return IMAGEFACTORY_VERSION


def local_image_recipe(recipe: Recipe, book: RecipeBook) -> str | None:
    """The recipe a `local-image` source is built from (unpinned NAME of a recipe here), else None."""
    src = recipe.source
    if isinstance(src, LocalImageSource) and ":" not in src.image and src.image in book.names():
        return src.image
    return None


class KeyMaker:
    """Computes build keys with a memo (a plan asks for a parent's key once per child)."""

    def __init__(self, book: RecipeBook, lock: LockFile) -> None:
        self.book = book
        self.lock = lock
        self._keys: dict[str, BuildKey] = {}
        self._loaded: dict[str, LoadedRecipe] = {}
        self._busy: list[str] = []

    def loaded(self, name: str) -> LoadedRecipe:
        if name not in self._loaded:
            self._loaded[name] = self.book.load(name)
        return self._loaded[name]

    def key(self, name: str) -> BuildKey:
        if name in self._keys:
            return self._keys[name]
        if name in self._busy:
            chain = " -> ".join([*self._busy[self._busy.index(name):], name])
            raise UserError(f"recipes depend on each other: {chain}",
                            hint="a local-image source cannot name the recipe itself or a child of it")
        self._busy.append(name)
        try:
            result = self._compute(self.loaded(name))
        finally:
            self._busy.pop()
        self._keys[name] = result
        return result

    def _compute(self, loaded: LoadedRecipe) -> BuildKey:
        r = loaded.recipe
        inputs: dict[str, Any] = {"imagefactory": _factory_version(), "recipe": loaded.digest,
                                  "packages": _sha256_bytes(_canonical(r.packages.model_dump(mode="json")))}
        unknown: dict[str, str] = {}
        templates = {f.template: _sha256_file(loaded.directory / f.template)
                     for f in r.files if f.template is not None}
        if templates:
            inputs["templates"] = _sha256_bytes(_canonical(templates))
        if r.zarf is not None and r.zarf.verify is not None:
            # the key is baked and decides what first boot deploys: a new key is a new image
            key_file = loaded.directory / r.zarf.verify.key
            if key_file.is_file():
                inputs["zarf-verify-key"] = _sha256_file(key_file)
            else:
                unknown["zarf-verify-key"] = f"{r.zarf.verify.key} is missing"
        depends: list[str] = []
        self._source(loaded, inputs, unknown, depends)
        self._locked(r, inputs, unknown)
        self._stig(loaded, inputs)
        if r.extends:
            parent = self.key(r.extends)
            inputs["parent"] = parent.key
            if parent.unknown:
                unknown["parent"] = f"{r.extends} has unknown inputs: {', '.join(sorted(parent.unknown))}"
            depends.insert(0, r.extends)
        key = _sha256_bytes(_canonical(inputs))
        return BuildKey(r.name, key, inputs, unknown, r.extends, local_image_recipe(r, self.book),
                        tuple(dict.fromkeys(depends)))

    def _source(self, loaded: LoadedRecipe, inputs: dict[str, Any], unknown: dict[str, str],
                depends: list[str]) -> None:
        r = loaded.recipe
        src = r.source
        if isinstance(src, LocalImageSource):
            base = local_image_recipe(r, self.book)
            if base is not None:
                dep = self.key(base)
                inputs["base-image"] = dep.key
                if dep.unknown:
                    unknown["base-image"] = f"{base} has unknown inputs: {', '.join(sorted(dep.unknown))}"
                depends.append(base)
            elif ":" in src.image:
                inputs["base-image"] = src.image  # a pinned version never changes
            else:
                inputs["base-image"] = UNKNOWN
                unknown["base-image"] = f"local image {src.image} is not built from a recipe here"
        locked = self.lock.source(r)
        hint = f"run 'imagefactory lock update {r.name}'"
        if locked is None:
            if isinstance(src, CloudImageSource) and src.checksum is not None:
                inputs["source"] = src.checksum  # pinned in the recipe: known without a lock
            elif not isinstance(src, LocalImageSource):
                inputs["source"] = UNKNOWN
                unknown["source"] = f"not in the lock; {hint}"
            for pocket in pocket_suites(r):
                inputs[pocket] = UNKNOWN
                unknown[pocket] = f"not in the lock; {hint}"
            return
        if locked["type"] == "mmdebstrap":
            inputs["source"] = _release_value(locked)
        elif locked["type"] == "cloud-image":
            sha = locked.get("sha256")
            inputs["source"] = f"sha256:{sha}" if sha else locked.get("checksum")
        for pocket in pocket_suites(r):
            entry = locked.get(pocket)
            if isinstance(entry, dict):
                inputs[pocket] = _release_value(entry)
            elif pocket not in locked:  # a lock written before this pocket was tracked
                inputs[pocket] = UNKNOWN
                unknown[pocket] = f"not in the lock; {hint}"

    def _locked(self, r: Recipe, inputs: dict[str, Any], unknown: dict[str, str]) -> None:
        if r.rke2 is None and r.zarf is None:
            return
        entry = self.lock.raw_entry(r.name)
        why = None
        if entry is None:
            why = f"no lock entry; run 'imagefactory lock update {r.name}'"
        elif entry.get("key") != input_key(r):
            why = f"the lock entry is stale (rke2/zarf changed); run 'imagefactory lock update {r.name}'"
        for part, roles in (("rke2", ("rke2-",)), ("zarf", ("zarf-",))):
            if getattr(r, part) is None:
                continue
            if entry is None or why is not None:
                inputs[part] = UNKNOWN
                unknown[part] = str(why)
                continue
            arts = sorted(f"{a['name']}:{a['sha256']}" for a in entry.get("artifacts", [])
                          if str(a.get("role", "")).startswith(roles))
            version = (entry.get(part) or {}).get("version", UNKNOWN)
            inputs[part] = f"{version} artifacts:{_sha256_bytes(_canonical(arts))}"

    def _stig(self, loaded: LoadedRecipe, inputs: dict[str, Any]) -> None:
        r = loaded.recipe
        if r.stig is None:
            return
        for name in dict.fromkeys(r.stig.benchmarks):
            bench = load_benchmark(name)
            release = re.search(r"Release:\s*(\S+)", bench.release_info)  # e.g. V2R8 for people
            parts = [f"V{bench.version}R{release.group(1) if release else '?'}",
                     f"catalogue:{_sha256_file(catalogue_dir() / f'{name}.yaml')}",
                     f"xccdf:{_sha256_file(benchmark_path(name))}"]
            if r.stig.openscap and name in MAPPED_BENCHMARKS and mapping_path(name).is_file():
                parts.append(f"cac:{_sha256_file(mapping_path(name))}")
            inputs[f"stig:{name}"] = " ".join(parts)
        for w in r.stig.waivers:
            inputs[f"waivers:{w}"] = f"sha256:{_sha256_file(resolve_waiver_path(w, loaded.directory))}"


def _release_value(rel: dict[str, Any]) -> str:
    if rel.get("release_sha256") is None:
        return f"{rel.get('suite')}: not served"
    return f"sha256:{rel['release_sha256']} ({rel.get('date') or 'no Date'})"


def build_key(book: RecipeBook, lock: LockFile, name: str) -> BuildKey:
    """The build key of recipe `name` (its parents' keys included); raises on an invalid recipe."""
    return KeyMaker(book, lock).key(name)


def build_key_of(loaded: LoadedRecipe) -> dict[str, Any] | None:
    """The build key of a recipe in its recipe directory (None for a recipe file elsewhere), as
    `build` records it in the manifest."""
    book = RecipeBook(loaded.directory)
    if loaded.recipe.name not in book.names():
        return None
    return build_key(book, LockFile(loaded.directory), loaded.recipe.name).to_json()
