"""Loading recipe files: YAML with line numbers, `extends`, the merge rules, validation.

Merge rules (also in README.md, "Recipe merge rules"), applied parent first, child last:
- scalars: the child's value wins;
- lists: the child's items are appended to the parent's;
- maps: merged key by key, recursively; a map whose `type` differs from the parent's
  (e.g. `source`) replaces it whole;
- an explicit `null` resets the key to its default (removes what the parents set).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from ..errors import Problem, UserError, ValidationError
from .located import LoadedRecipe, Located, Path_, fmt_path
from .model import Recipe
from .validate import semantic_problems

RECIPE_NAME = re.compile(r"(?!.*\.\.)(?!.*\.ya?ml$)[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_RECIPE_BYTES = 1024**2
MAX_DEPTH = 64
MAX_VALUES = 100_000
# C0 controls but tab, newline and carriage return, and DEL: never in a recipe's text
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def decode_recipe(data: bytes, file: str) -> str:
    """The recipe's text: bounded in size, UTF-8, no control characters (each a file:line error)."""
    if len(data) > MAX_RECIPE_BYTES:
        raise ValidationError([Problem(file, None, "", f"larger than {MAX_RECIPE_BYTES // 1024} KiB, "
                                       "the most a recipe may be", "is this the right file?")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValidationError([Problem(file, line, "", f"not UTF-8 (byte 0x{data[e.start]:02x} at "
                                       f"offset {e.start})", "save the file as UTF-8")]) from None
    bad = CONTROL.search(text)
    if bad:
        line = text[:bad.start()].count("\n") + 1
        raise ValidationError([Problem(file, line, "", f"control character {bad.group()!r} in the text",
                                       "remove it (a recipe is plain text)")])
    return text


# libyaml when PyYAML has it: the pure-Python scanner is quadratic in flow nesting (a 1 KiB line
# of brackets took 3 s of CPU before the depth check could see it)
LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# what can open or close a flow collection, and what hides brackets from it (quoted scalars,
# comments); brackets inside plain scalars count too, which only errs towards refusing
FLOW_TOKENS = re.compile(r"""'(?:[^']|'')*'|"(?:[^"\\]|\\.)*"|(?:^|(?<=\s))#[^\n]*|[\[\]{}]|\n""", re.M)


def _check_flow_depth(text: str, file: str) -> None:
    """Flow collections (`[`, `{`) nested deeper than MAX_DEPTH, refused in one linear pass before
    the parser sees them: neither parser's cost nor its recursion grows with a hostile input."""
    depth, line = 0, 1
    for m in FLOW_TOKENS.finditer(text):
        t = m.group()
        if t in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ValidationError([Problem(file, line, "", f"nested more than {MAX_DEPTH} levels deep",
                                               "look for runaway brackets")])
        elif t in "]}":
            depth = max(depth - 1, 0)
        else:
            line += t.count("\n")


def parse_yaml(text: str, file: str) -> Located:
    """Parse YAML into plain data, recording each key's line; duplicate keys are errors. Nesting
    depth and the number of values (aliases expanded) are bounded: an alias bomb or a
    self-referencing alias is an error naming the line, not minutes of CPU and gigabytes."""
    _check_flow_depth(text, file)
    try:
        node = yaml.compose(text, Loader=LOADER)
    except RecursionError:
        raise ValidationError([Problem(file, None, "", f"nested deeper than YAML's parser can follow "
                                       f"(a recipe nests at most {MAX_DEPTH} levels)",
                                       "look for runaway brackets")]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise ValidationError(
            [Problem(file, line, "", f"invalid YAML: {e.problem or e}", "check indentation and quoting")]
        ) from None
    if node is None:
        raise ValidationError(
            [Problem(file, 1, "", "empty recipe", "a recipe needs at least 'os' and 'source'")])
    constructor = yaml.SafeLoader("")
    where: dict[Path_, tuple[str, int]] = {}
    problems: list[Problem] = []

    count = 0

    def convert(n: yaml.Node, path: Path_) -> Any:
        nonlocal count
        count += 1
        line = n.start_mark.line + 1
        if len(path) > MAX_DEPTH:
            raise ValidationError([Problem(file, line, fmt_path(path[:3]) + "...",
                                           f"nested more than {MAX_DEPTH} levels deep",
                                           "an alias that contains itself? (x: &a [*a])")])
        if count > MAX_VALUES:
            raise ValidationError([Problem(file, line, fmt_path(path), f"more than {MAX_VALUES} "
                                           "values once aliases are expanded",
                                           "an alias bomb? use fewer nested aliases")])
        where.setdefault(path, (file, line))
        if isinstance(n, yaml.MappingNode):
            out: dict[str, Any] = {}
            for k, v in n.value:
                line = k.start_mark.line + 1
                if not isinstance(k, yaml.ScalarNode):
                    problems.append(Problem(file, line, fmt_path(path), "a key must be a plain string"))
                    continue
                key = constructor.construct_object(k, deep=True)
                if not isinstance(key, str):
                    problems.append(Problem(file, line, fmt_path(path), f"key {key!r} is not a string"))
                    continue
                if key in out:
                    problems.append(Problem(file, line, fmt_path((*path, key)), "duplicate key",
                                            "remove one of the two"))
                    continue
                where[(*path, key)] = (file, line)
                out[key] = convert(v, (*path, key))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [convert(v, (*path, i)) for i, v in enumerate(n.value)]
        if n.tag == "tag:yaml.org,2002:int" and len(n.value) > 1 and n.value.startswith("0") \
                and n.value.isdigit():
            # YAML 1.1 reads 0644 as the octal 420; keep the text so `mode: 0644` means 0644.
            return n.value
        return constructor.construct_object(n, deep=True)

    data = convert(node, ())
    if problems:
        raise ValidationError(problems)
    if not isinstance(data, dict):
        raise ValidationError([Problem(file, 1, "", "a recipe must be a YAML mapping")])
    return Located(data, where)


def merge(parent: Located, child: Located) -> Located:
    """Merge `child` over `parent` with the rules in the module docstring."""
    where = dict(parent.where)
    own = dict(parent.own)

    def under(p: Path_, path: Path_) -> bool:
        return p[: len(path)] == path

    def take(src: Located, path: Path_) -> None:
        # what `src` says at and below `path`, where `src` says it
        where.update({p: loc for p, loc in src.where.items() if under(p, path)})
        own.update({p: o for p, o in src.own.items() if under(p, path)})

    def drop(path: Path_) -> None:
        for d in (where, own):
            for p in [p for p in d if under(p, path)]:
                del d[p]

    def go(a: Any, b: Any, path: Path_) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            if "type" in a and "type" in b and a["type"] != b["type"]:
                drop(path)
                take(child, path)
                return b
            out = dict(a)
            for k, v in b.items():
                if v is None:
                    out.pop(k, None)
                    drop((*path, k))
                elif k in out:
                    out[k] = go(out[k], v, (*path, k))
                else:
                    out[k] = v
                    take(child, (*path, k))
            return out
        if isinstance(a, list) and isinstance(b, list):
            for p in [p for p in where if under(p, path) and len(p) > len(path)]:
                del where[p]
            take(parent, path)  # the parent's items keep their lines and indexes
            for p, loc in child.where.items():
                if under(p, path) and len(p) > len(path) and isinstance(p[len(path)], int):
                    i = p[len(path)]
                    assert isinstance(i, int)
                    where[(*path, i + len(a), *p[len(path) + 1:])] = loc
            for i in range(len(b)):  # the child's items, as its own file numbers them
                own[(*path, i + len(a))] = child.own_path((*path, i))
            return a + b
        take(child, path)
        return b

    return Located(go(parent.data, child.data, ()), where, own)


class RecipeBook:
    """The recipes of one directory (`recipes/`): list, load with `extends`, validate."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.yaml"))

    def path_of(self, ref: str) -> Path:
        p = Path(ref)
        if p.suffix in (".yaml", ".yml") or os.sep in ref:
            if not p.is_file():
                raise UserError(f"{ref}: no such recipe file")
            return p
        path = self.directory / f"{ref}.yaml"
        if not path.is_file():
            close = difflib.get_close_matches(ref, self.names(), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see 'imagefactory recipes list'"
            raise UserError(f"{path}: no recipe named '{ref}'", hint=hint)
        return path

    def _read(self, path: Path) -> Located:
        try:
            with path.open("rb") as f:
                data = f.read(MAX_RECIPE_BYTES + 1)  # never the whole of a huge file
        except OSError as e:
            raise UserError(f"{path}: cannot read: {e.strerror}") from None
        return parse_yaml(decode_recipe(data, str(path)), str(path))

    def merged(self, ref: str) -> tuple[Located, list[Path]]:
        """Load `ref` and its `extends` chain, merged; raises on missing parents and cycles."""
        chain: list[Path] = []
        path = self.path_of(ref)
        layers: list[Located] = []
        while True:
            resolved = path.resolve()
            if resolved in [c.resolve() for c in chain]:
                names = " -> ".join(c.stem for c in [*chain, path])
                raise ValidationError([Problem(str(chain[-1]), layers[-1].where.get(("extends",), ("", 0))[1],
                                               "extends", f"cycle: {names}",
                                               "a recipe cannot extend itself, directly or not")])
            chain.append(path)
            layer = self._read(path)
            layers.append(layer)
            if "name" in layer.data:
                raise ValidationError([Problem(str(path), layer.where[("name",)][1], "name",
                                               "unknown key", "a recipe's name is its file name")])
            parent = layer.data.get("extends")
            if parent is None:
                break
            if not isinstance(parent, str) or not RECIPE_NAME.fullmatch(parent):
                # a name, never a path: `extends` cannot reach out of the recipe directory
                raise ValidationError([Problem(str(path), layer.where[("extends",)][1], "extends",
                                               f"{parent!r} is not a recipe name",
                                               "name a recipe in the same directory, without "
                                               "'/', '..' or '.yaml'")])
            parent_path = path.parent / f"{parent}.yaml"
            if not parent_path.is_file():
                close = difflib.get_close_matches(parent, self.names(), n=3)
                raise ValidationError([Problem(
                    str(path), layer.where[("extends",)][1], "extends",
                    f"recipe '{parent}' does not exist",
                    f"did you mean {', '.join(close)}?" if close else "see 'imagefactory recipes list'",
                )])
            path = parent_path
        result = layers[-1]
        for layer in reversed(layers[:-1]):
            result = merge(result, layer)
        result.data["extends"] = layers[0].data.get("extends")
        if result.data["extends"] is None:
            result.data.pop("extends")
        return result, chain

    def load(self, ref: str) -> LoadedRecipe:
        """Load, merge and validate; raises `ValidationError` with *all* problems."""
        located, chain = self.merged(ref)
        name = chain[0].stem
        data = {"name": name, **located.data}
        try:
            recipe = Recipe.model_validate(data)
        except PydanticValidationError as e:
            raise ValidationError(_problems(e, located, str(chain[0]))) from None
        loaded = LoadedRecipe(recipe, located.data, tuple(chain), chain[0].parent)
        problems = semantic_problems(loaded, located)
        if problems:
            raise ValidationError(problems)
        return loaded


def _problems(e: PydanticValidationError, located: Located, default_file: str) -> list[Problem]:
    out: list[Problem] = []
    for err in e.errors():
        loc: list[str | int] = [p for p in err["loc"] if isinstance(p, str | int)]
        # Discriminated unions put the tag into the location: source.mmdebstrap.suite.
        if len(loc) > 1 and loc[0] == "source" and loc[1] in ("mmdebstrap", "cloud-image"):
            del loc[1]
        path = tuple(loc)
        file, line = located.locate(path, default_file)
        msg = err["msg"].removeprefix("Value error, ")
        hint = None
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            hint = _key_hint(path)
        elif err["type"] == "missing":
            msg = "required key is missing"
            hint = "add it here or in a recipe this one extends"
        elif err["type"] == "union_tag_invalid" or err["type"] == "union_tag_not_found":
            hint = "source.type is 'mmdebstrap' or 'cloud-image'"
        value = err.get("input")
        if err["type"] not in ("extra_forbidden", "missing") and isinstance(value, str | int | float) \
                and str(value) not in msg:
            # the offending value itself (the key path is the one in the user's own file)
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            msg = f"{msg} (got {shown})"
        out.append(Problem(file, line, fmt_path(located.own_path(path)), msg, hint))
    return out


def _key_hint(path: Path_) -> str:
    """'valid keys here: ...' (with a did-you-mean) for an unknown key at `path`."""
    model: Any = Recipe
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        f = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if f is None:
            return "remove it"
        model = _inner_model(f.annotation)
        if model is None:
            return "remove it"
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return "remove it"
    valid = [k for k in model.model_fields if not (model is Recipe and k == "name")]
    close = difflib.get_close_matches(str(path[-1]), valid, n=1)
    lead = f"did you mean '{close[0]}'? " if close else ""
    return f"{lead}valid keys here: {', '.join(valid)}"


def _inner_model(annotation: Any) -> Any:
    """The model class inside e.g. `tuple[FileSpec, ...]` or a source union (first match)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    meta = getattr(annotation, "__metadata__", None)
    if meta is not None:
        return _inner_model(getattr(annotation, "__origin__", None))
    return None
