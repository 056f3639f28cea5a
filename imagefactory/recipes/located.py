"""Recipe data with where each part came from (for errors that point into the user's own file),
and a loaded recipe with the files it was made from."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import Recipe

Path_ = tuple[str | int, ...]


@dataclass
class Located:
    """Plain YAML data plus where every key came from: path -> (file, line). `own` maps a merged
    path to the same item's path in the file that wrote it, where the two differ: a child's list
    items follow its parents' (`tests.suites[3]` of the merge is `tests.suites[1]` in the file)."""

    data: Any
    where: dict[Path_, tuple[str, int]] = field(default_factory=dict)
    own: dict[Path_, Path_] = field(default_factory=dict)

    def locate(self, path: Path_, default_file: str) -> tuple[str, int | None]:
        return locate(self.where, path, default_file)

    def own_path(self, path: Path_) -> Path_:
        for n in range(len(path), 0, -1):
            if path[:n] in self.own:
                return self.own[path[:n]] + path[n:]
        return path


def locate(where: dict[Path_, tuple[str, int]], path: Path_, default_file: str) -> tuple[str, int | None]:
    """(file, line) of `path`, or of its nearest located parent."""
    for n in range(len(path), -1, -1):
        if path[:n] in where:
            return where[path[:n]]
    return default_file, None


def fmt_path(path: Path_) -> str:
    """`tests.suites[1]`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe plus what it was made from."""

    recipe: Recipe
    merged: dict[str, Any]
    files: tuple[Path, ...]  # the chain, child first
    directory: Path

    @property
    def digest(self) -> str:
        """sha256 of the merged recipe (canonical JSON): changes whenever the recipe does."""
        blob = json.dumps(self.recipe.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()
