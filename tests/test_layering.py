"""The package's import layering: no import circles, and no module imports from a higher layer.

Every ``import``/``from ... import`` of a ``pdd`` module is read from the source (``ast``), at
module level and inside functions alike (a lazy import is still a dependency; only the
``if TYPE_CHECKING:`` block, which never runs, is left out). ``LAYERS`` below is the declared
order, lowest first; docs/architecture.md says why it is so. A module may import modules of its
own unit (the same row of ``LAYERS``) and of lower layers, never a higher layer, never a sibling
unit of the same layer. ``ALLOWED`` lists the exceptions, each with its reason.

The package root ``pdd/__init__.py`` is the public facade (top layer) but imports nothing when
loaded (PEP 562 ``__getattr__``); ``from pdd import __version__`` therefore depends on the root's
constant alone and counts as an import of the base layer (checked below).
"""

from __future__ import annotations

import ast
import graphlib
import importlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first. One row = one layer; a row's units (module-name prefixes) are siblings.
LAYERS: list[tuple[str, ...]] = [
    ("pdd.errors", "pdd.__version__"),
    ("pdd.fileio", "pdd.cache_root", "pdd.csv_cells", "pdd.pickle_refusal", "pdd.conv_backend", "pdd.finite_output",
     "pdd.allocator", "pdd.winograd"),
    ("pdd.packed_convs",),
    ("pdd.config",),
    ("pdd.data", "pdd.teachers"),
    ("pdd.models",),
    ("pdd.runs",),
    ("pdd.report",),
    ("pdd.evaluation",),
    ("pdd.training", "pdd.prediction", "pdd.export"),
    ("pdd.api", "pdd.integrations"),
    ("pdd.benchmark",),
    ("pdd.cli", "pdd"),
]

# (importer, imported) pairs allowed against the order, with the reason. Keep it short.
ALLOWED: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    """Every module under src/pdd by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((SRC / "pdd").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk_runtime(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` without ``if TYPE_CHECKING:`` bodies (never executed)."""
    for child in ast.iter_child_nodes(node):
        if _is_type_checking_block(child):
            yield from (n for orelse in child.orelse for n in [orelse, *_walk_runtime(orelse)])
            continue
        yield child
        yield from _walk_runtime(child)


def _root_attribute(name: str) -> str:
    """What ``from pdd import name`` / ``pdd.name`` depends on."""
    if f"pdd.{name}" in MODULES:
        return f"pdd.{name}"
    if name == "__version__":
        return "pdd.__version__"
    value = getattr(importlib.import_module("pdd"), name)  # the facade's lazy re-exports
    return value.__module__


def _package_of(module: str) -> str:
    """The package whose name a relative import starts from."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def imports_of(module: str, tree: ast.Module) -> set[str]:
    """The pdd modules ``module`` imports (the module itself when ``from pkg import name`` names an
    attribute, the submodule when it names one)."""
    targets: set[str] = set()
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "pdd":
                    targets |= _root_attributes_used(tree)
                elif alias.name.startswith("pdd."):
                    targets.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(module).split(".")
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base == "pdd":
                targets |= {_root_attribute(alias.name) for alias in node.names}
            elif base.startswith("pdd."):
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    targets.discard(module)
    return targets


def _root_attributes_used(tree: ast.Module) -> set[str]:
    """``import pdd``: the attributes read as ``pdd.<name>``."""
    return {
        _root_attribute(node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pdd"
    }


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(name, ast.parse(path.read_text(encoding="utf-8"))) for name, path in MODULES.items()}


def unit_of(module: str) -> tuple[int, str]:
    """(layer number, unit) of a module: the longest declared prefix that contains it."""
    best: tuple[int, str] | None = None
    for number, units in enumerate(LAYERS):
        for unit in units:
            inside = module == unit or (unit != "pdd" and module.startswith(unit + "."))  # "pdd": the root alone
            if inside and (best is None or len(unit) > len(best[1])):
                best = (number, unit)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and docs/architecture.md)")
    return best


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for importer, targets in sorted(graph.items()):
        layer, unit = unit_of(importer)
        for target in sorted(targets):
            target_layer, target_unit = unit_of(target)
            if target_unit == unit or target_layer < layer or (importer, target) in ALLOWED:
                continue
            how = "a sibling" if target_layer == layer else "a higher layer"
            found.append(f"{importer} ({unit}) imports {target} ({target_unit}): {how}")
    return found


def circles(graph: dict[str, set[str]]) -> list[str]:
    """One circle per run of ``graphlib`` until none is left (each found circle's edge is cut)."""
    graph = {k: set(v) for k, v in graph.items()}
    found = []
    while True:
        try:
            graphlib.TopologicalSorter(graph).prepare()
            return found
        except graphlib.CycleError as error:
            cycle = error.args[1][::-1]  # graphlib lists it importer-last; now each imports the next
            found.append(" -> ".join(cycle))
            graph[cycle[0]].discard(cycle[1])


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        unit_of(module)


def test_the_root_imports_nothing_when_loaded() -> None:
    """Why ``from pdd import __version__`` counts as the base layer: the facade's imports are lazy."""
    tree = ast.parse(MODULES["pdd"].read_text(encoding="utf-8"))
    module_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all((n.module if isinstance(n, ast.ImportFrom) else "") in ("__future__", "typing") for n in module_level)


def test_no_import_circles() -> None:
    assert circles(import_graph()) == []


def test_no_import_from_a_higher_layer() -> None:
    assert violations(import_graph()) == []


@pytest.mark.parametrize(
    ("module", "source", "problem"),
    [
        ("pdd.runs.lock", "from pdd.training.runner import fit", "a higher layer"),
        ("pdd.training.runner", "from pdd.prediction import predict", "a sibling"),
        ("pdd.data.sample", "def f():\n    from pdd.models import create_model", "a higher layer"),
        ("pdd.errors", "import pdd\npdd.create_model", "a higher layer"),
    ],
)
def test_the_check_finds_a_bad_import(module: str, source: str, problem: str) -> None:
    graph = import_graph()
    graph[module] = graph[module] | imports_of(module, ast.parse(source))
    assert any(v.startswith(f"{module} ") and v.endswith(problem) for v in violations(graph))


def test_the_check_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    (circle,) = circles(graph)
    names = circle.split(" -> ")
    assert names[0] == names[-1] and set(names) == {"a", "b", "c"}
    assert all(after in graph[before] for before, after in itertools.pairwise(names))  # each imports the next


def test_type_checking_imports_are_not_counted() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pdd.cli import main\n")
    assert imports_of("pdd.errors", tree) == set()
