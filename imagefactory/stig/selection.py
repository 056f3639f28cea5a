"""What a recipe's `stig:` section selects: catalogues, targets, tailoring and waiver files.

One place turns the recipe into `Selected` benchmarks, so the build step, the booted suite, the
report and `stig report IMAGE` all agree on what was asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .actions import Tailoring
from .catalogue import Catalogue, load_catalogue

if TYPE_CHECKING:
    from ..recipes.model import Recipe
    from .waivers import WaiverSet


@dataclass(frozen=True)
class Selected:
    catalogue: Catalogue
    target: str  # OS family, or RKE2 role for the rke2 benchmark
    tailoring: Tailoring

    @property
    def benchmark(self) -> str:
        return self.catalogue.name

    def to_json(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "target": self.target,
                "tailoring": self.tailoring.model_dump(mode="json")}


def selections(recipe: Recipe) -> list[Selected]:
    """The recipe's benchmarks in order (OS first), each with its target and tailoring."""
    if recipe.stig is None:
        return []
    t = recipe.stig.tailoring
    tailoring = Tailoring(disable=dict(t.disable), enable=t.enable, values=dict(t.values))
    out = []
    for name in dict.fromkeys(recipe.stig.benchmarks):
        target = recipe.stig.rke2_role if name == "rke2" else recipe.os.family
        out.append(Selected(load_catalogue(name), target, tailoring))
    return out


def selection_from_json(data: dict[str, Any]) -> Selected:
    return Selected(load_catalogue(data["benchmark"]), data["target"],
                    Tailoring.model_validate(data["tailoring"]))


def resolve_waiver_path(name: str, recipe_dir: Path) -> Path:
    """A shipped waiver set by bare name (`stig/waivers/<name>.yaml`), else a path relative to the
    recipe directory."""
    from .waivers import default_waiver_path

    if "/" not in name and not name.endswith((".yaml", ".yml")):
        return default_waiver_path(name)
    p = recipe_dir / name
    # the model refuses '/x' and '..'; a symlink out of the recipe directory is refused here
    if not os.path.realpath(p).startswith(os.path.realpath(recipe_dir) + os.sep):
        raise UserError(f"stig.waivers: '{name}' leads out of the recipe directory {recipe_dir}",
                        hint="keep waiver files inside the recipe directory")
    return p


def recipe_waivers(recipe: Recipe, recipe_dir: Path) -> WaiverSet:
    """All waiver files of the recipe merged (validated against the selected catalogues)."""
    from .waivers import WaiverSet, load_waivers, validate_waivers

    sets = [load_waivers(resolve_waiver_path(n, recipe_dir)) for n in (recipe.stig.waivers if recipe.stig
                                                                          else ())]
    merged = WaiverSet.merge(*sets) if sets else WaiverSet.merge()
    validate_waivers(merged, [s.catalogue for s in selections(recipe)])
    return merged
