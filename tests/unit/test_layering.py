"""The build path's import layering, read from the source with `ast` (nothing is imported).

Layers, top to bottom: `build` (orchestration) -> `builders/*` -> `steps/*` -> `context` (build
state, `Step`, the services a builder may ask for) -> `distros/*`; `services` (store, catalogue,
proxy behind `context.BuildServices`) sits beside `build`. The build key (`buildkey`) sits below
both `build` and `nightly`. An import that points up, or an import moved into a function so that
a cycle does not fail at import time, is what these tests catch.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "imagefactory"
Scope = Literal["module", "type-checking", "function"]

# Modules where no imagefactory import may hide inside a function: the build path.
BUILD_PATH = ("imagefactory.build", "imagefactory.context", "imagefactory.services",
              "imagefactory.buildkey", "imagefactory.builders.*", "imagefactory.steps.*",
              "imagefactory.distros", "imagefactory.distros.*")

# importer pattern -> imported patterns it must never reach (in any scope). `X` and `X.*` both
# mean a package and everything in it.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # a builder knows its context and the steps it runs; the rest comes through ctx.services
    "imagefactory.builders.*": (
        "imagefactory.build", "imagefactory.services", "imagefactory.buildkey",
        "imagefactory.catalogue", "imagefactory.catalogue.*", "imagefactory.store", "imagefactory.store.*",
        "imagefactory.testing", "imagefactory.testing.*", "imagefactory.proxy",
        "imagefactory.cli", "imagefactory.cli_*", "imagefactory.nightly", "imagefactory.nightly.*"),
    "imagefactory.context": ("imagefactory.build", "imagefactory.services", "imagefactory.builders",
                             "imagefactory.builders.*", "imagefactory.steps", "imagefactory.steps.*"),
    "imagefactory.steps.*": ("imagefactory.build", "imagefactory.services", "imagefactory.builders",
                             "imagefactory.builders.*"),
    # Distro.configure takes a protocol, not the context: the context holds a Distro
    "imagefactory.distros*": ("imagefactory.build", "imagefactory.context", "imagefactory.services",
                              "imagefactory.builders", "imagefactory.builders.*",
                              "imagefactory.steps", "imagefactory.steps.*"),
    "imagefactory.build": ("imagefactory.nightly", "imagefactory.nightly.*"),
    "imagefactory.buildkey": ("imagefactory.build", "imagefactory.nightly", "imagefactory.nightly.*"),
}

# Cycles through `if TYPE_CHECKING:` imports inside `imagefactory/stig/`, which is being reworked
# elsewhere; listed so that no new cycle can join them. Remove an entry once its cycle is gone
# (the test says so).
KNOWN_CYCLES: dict[frozenset[str], str] = {
    frozenset({"imagefactory.stig.actions", "imagefactory.stig.catalogue"}):
        "actions names catalogue.Control under TYPE_CHECKING; catalogue imports actions",
    frozenset({"imagefactory.stig.checklist", "imagefactory.stig.report"}):
        "checklist names the report models under TYPE_CHECKING; report imports checklist",
}


@dataclass(frozen=True)
class Import:
    source: str
    target: str  # an imagefactory module (a package means its __init__)
    line: int
    scope: Scope

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: imports {self.target} ({self.scope})"


def module_names(package: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    def __init__(self, name: str, is_package: bool, modules: Mapping[str, Path], root: str) -> None:
        self.name, self.is_package, self.modules, self.root = name, is_package, modules, root
        self.found: list[Import] = []
        self.scope: Scope = "module"

    def _add(self, target: str, node: ast.stmt) -> None:
        if target in self.modules and target != self.name:
            self.found.append(Import(self.name, target, node.lineno, self.scope))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == self.root or alias.name.startswith(self.root + "."):
                self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.name.split(".") if self.is_package else self.name.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
        else:
            target = node.module or ""
        if not (target == self.root or target.startswith(self.root + ".")):
            return
        for alias in node.names:  # `from pkg import module` imports the module itself
            sub = f"{target}.{alias.name}"
            self._add(sub if sub in self.modules else target, node)

    def _nested(self, node: ast.AST, scope: Scope) -> None:
        outer, self.scope = self.scope, scope
        self.generic_visit(node)
        self.scope = outer

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node, "function")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._nested(node, "function")

    def visit_If(self, node: ast.If) -> None:
        if self.scope == "module" and _is_type_checking(node.test):
            self.scope = "type-checking"
            for stmt in node.body:
                self.visit(stmt)
            self.scope = "module"
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)


def scan(package: Path) -> list[Import]:
    """Every import of a module of `package` by a module of `package`."""
    modules = module_names(package)
    found: list[Import] = []
    for name, path in modules.items():
        c = _Collector(name, path.name == "__init__.py", modules, package.name)
        c.visit(ast.parse(path.read_text(), str(path)))
        found += c.found
    return found


def cycles(imports: Iterable[Import]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        graph.setdefault(i.source, set()).add(i.target)
        graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                out.append(frozenset([v, *comp]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def forbidden(imports: Iterable[Import], rules: Mapping[str, tuple[str, ...]]) -> list[str]:
    return [f"{i}: {i.source} may not depend on {i.target}" for i in imports
            for src, targets in rules.items()
            if fnmatch.fnmatchcase(i.source, src) and matches(i.target, targets)]


def deferred(imports: Iterable[Import], modules: Iterable[str]) -> list[str]:
    return [f"{i}: import it at the top of the module (a function-level import hides a cycle)"
            for i in imports if i.scope == "function" and matches(i.source, modules)]


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return scan(PACKAGE)


def test_no_import_cycles(imports: list[Import]) -> None:
    """Module-level imports, those under TYPE_CHECKING included, form no cycle."""
    found = set(cycles(i for i in imports if i.scope != "function"))
    new = [sorted(c) for c in found - KNOWN_CYCLES.keys()]
    gone = [sorted(c) for c in KNOWN_CYCLES.keys() - found]
    assert new == [], f"import cycles: {new}"
    assert gone == [], f"these cycles are gone: remove them from KNOWN_CYCLES: {gone}"


def test_build_path_has_no_cycle_even_through_function_imports(imports: list[Import]) -> None:
    bad = [sorted(c) for c in cycles(imports) if any(matches(m, BUILD_PATH) for m in c)]
    assert bad == []


def test_build_path_imports_at_module_level(imports: list[Import]) -> None:
    assert deferred(imports, BUILD_PATH) == []


def test_layers_point_down(imports: list[Import]) -> None:
    assert forbidden(imports, FORBIDDEN) == []


def test_build_imports_the_builders_at_top_level(imports: list[Import]) -> None:
    top = {i.target for i in imports if i.source == "imagefactory.build" and i.scope == "module"}
    assert {"imagefactory.builders.rootfs", "imagefactory.builders.packer", "imagefactory.context"} <= top


# --- the checker itself, on small packages written here --------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "imagefactory"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_checker_sees_type_checking_and_relative_cycles(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\n",
        "b.py": "from . import a\n",
        "sub/__init__.py": "from .c import Y\n",
        "sub/c.py": "from .. import a\nfrom ..sub import d\n",
        "sub/d.py": "import imagefactory.a\n",
    })
    found = scan(pkg)
    assert {(i.source.removeprefix("imagefactory."), i.target.removeprefix("imagefactory."), i.scope)
            for i in found} == {
        ("a", "b", "type-checking"), ("b", "a", "module"), ("sub", "sub.c", "module"),
        ("sub.c", "a", "module"), ("sub.c", "sub.d", "module"), ("sub.d", "a", "module"),
    }
    assert cycles(found) == [frozenset({"imagefactory.a", "imagefactory.b"})]


def test_checker_sees_function_imports_and_upward_imports(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "build.py": "def f() -> None:\n    from .builders import packer\n",
        "builders/__init__.py": "",
        "builders/packer.py": "from ..catalogue import x\nfrom .. import build\n",
        "catalogue.py": "x = 1\n",
    })
    found = scan(pkg)
    assert deferred(found, BUILD_PATH) == [
        "imagefactory.build:2: imports imagefactory.builders.packer (function): import it at the top of "
        "the module (a function-level import hides a cycle)"]
    assert len(forbidden(found, FORBIDDEN)) == 2
    assert cycles(i for i in found if i.scope != "function") == []
    assert cycles(found) == [frozenset({"imagefactory.build", "imagefactory.builders.packer"})]
