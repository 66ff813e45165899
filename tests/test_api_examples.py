"""The public entry points' docstring examples and the README's Python API section stay true.

Examples that are cheap (a small model with random teachers) run as doctests. Those that need
data, weights or a trained checkpoint are marked ``# doctest: +SKIP``; for them, and for the
README snippet, the imports are executed and every call of an imported function or class is
bound to its real signature, so a renamed function, module or keyword fails here.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

ENTRY_POINTS = [
    "pdd.models:create_model",
    "pdd.api:Detector",
    "pdd.training.runner:fit",
    "pdd.training.runner:test",
    "pdd.prediction.predict:predict",
    "pdd.benchmark.grid:run_benchmark",
    "pdd.export:export_onnx",
]
RUN_FOR_REAL = {"pdd.models:create_model", "pdd.api:Detector"}  # at least one example executes


def _entry(spec: str) -> Any:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _resolve(node: ast.expr, namespace: dict[str, Any]) -> Any:
    """The object a call's function names (``f``, ``module.f``, ``Class.method``), else None."""
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, namespace)
        return None if owner is None else getattr(owner, node.attr, _Missing(node))
    return None


class _Missing:
    def __init__(self, node: ast.Attribute) -> None:
        self.name = ast.unparse(node)


def check_calls(source: str) -> list[str]:
    """Run ``source``'s imports, then bind every call of an imported object to its signature."""
    tree = ast.parse(source)
    namespace: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            exec(compile(ast.Module([node], []), "<example>", "exec"), namespace)  # noqa: S102
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target = _resolve(node.func, namespace)
        if isinstance(target, _Missing):
            problems.append(f"{target.name}: no such attribute")
            continue
        if target is None or not callable(target) or any(isinstance(a, ast.Starred) for a in node.args):
            continue
        keywords = {k.arg: None for k in node.keywords if k.arg is not None}
        try:
            inspect.signature(target).bind(*[None] * len(node.args), **keywords)
        except TypeError as error:
            problems.append(f"{ast.unparse(node)[:80]}: {error}")
        except ValueError:  # builtins without a signature
            continue
    return problems


def _examples_source(obj: Any) -> str:
    """Every example line of ``obj``'s docstring, skipped ones included, as one program."""
    test = doctest.DocTestFinder(recurse=False).find(obj)[0]
    return "".join(example.source for example in test.examples)


@pytest.mark.parametrize("spec", ENTRY_POINTS)
def test_entry_point_has_an_example(spec: str) -> None:
    docstring = inspect.getdoc(_entry(spec)) or ""
    assert "Example:" in docstring and ">>>" in docstring, f"{spec}: no runnable example in its docstring"


@pytest.mark.parametrize("spec", ENTRY_POINTS)
def test_example_calls_match_the_real_signatures(spec: str) -> None:
    assert check_calls(_examples_source(_entry(spec))) == []


@pytest.mark.parametrize("spec", sorted(RUN_FOR_REAL))
def test_cheap_examples_run(spec: str) -> None:
    (test,) = doctest.DocTestFinder(recurse=False).find(_entry(spec), globs={})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test)
    ran = sum(1 for e in test.examples if not e.options.get(doctest.SKIP))
    assert result.failed == 0
    assert ran >= 3, f"{spec}: its example should run, not only be skipped"


def _readme_python_api() -> str:
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Python API\n(.*?)(?=^## )", text, re.DOTALL | re.MULTILINE)
    assert section, "README.md has no '## Python API' section"
    blocks = re.findall(r"```python\n(.*?)```", section.group(1), re.DOTALL)
    assert blocks, "the Python API section has no python code block"
    return "\n".join(blocks)


def test_readme_python_api_names_every_entry_point() -> None:
    source = _readme_python_api()
    for spec in ENTRY_POINTS:
        assert spec.split(":")[1] in source, f"README's Python API section does not show {spec}"


def test_readme_python_api_calls_match_the_real_signatures() -> None:
    assert check_calls(_readme_python_api()) == []


def test_the_call_check_finds_a_wrong_keyword_and_a_missing_function() -> None:
    problems = check_calls(
        "from pdd.training.options import FitOptions\nimport pdd.export\n"
        "FitOptions(data=1, out=2, learning_rate=3)\npdd.export.export_to_onnx(1)\n"
    )
    assert len(problems) == 2
    assert "learning_rate" in problems[0] or "learning_rate" in problems[1]
    assert any("export_to_onnx: no such attribute" in p for p in problems)
