"""The shape of the package: one direction of imports between the stages, no cycles, a shallow import graph,
and the generated references in docs/ equal to the declarations they come from."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

from ttt_bench import results
from ttt_bench.sweep import schema

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ttt_bench"
MAX_LEVELS = 10
# What each stage may import (besides itself). The report reads results (and profile's fits), never the run stack.
FOUNDATION = "foundation"  # errors, config, results: the vocabulary every stage shares
ALLOWED = {
    FOUNDATION: set(),
    "layers": {FOUNDATION},
    "profile": {FOUNDATION, "layers"},
    "layer_check": {FOUNDATION, "layers", "profile"},  # the layer contract, run by the tests and `ttt-bench check`
    "training": {FOUNDATION, "layers", "profile"},
    "sweep": {FOUNDATION, "layers", "profile", "training"},
    "report": {FOUNDATION, "layers", "profile"},
    "regression": {FOUNDATION, "layers", "profile", "training", "sweep", "report"},
    "cli": {FOUNDATION, "layers", "profile", "layer_check", "training", "sweep", "report", "regression"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("errors", "config", "results"):
        return FOUNDATION
    return "cli" if parts[1] in ("cli", "__main__") else parts[1]


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str) -> set[str]:
    """The ttt_bench modules `module` imports anywhere in its body (a lazy import in a function counts too);
    `from package import name` counts as the submodule when `name` is one."""
    known = modules()
    found = set()
    for node in ast.walk(ast.parse(known[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ttt_bench"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return found - {module}


@functools.cache
def graph() -> dict[str, set[str]]:
    return {module: imports_of(module) for module in modules()}


def test_the_walk_sees_the_whole_package():
    assert {"ttt_bench.results", "ttt_bench.sweep.runner", "ttt_bench.report.build", "ttt_bench.cli"} <= set(graph())
    assert "ttt_bench.results" in graph()["ttt_bench.report.build"]
    assert "ttt_bench.sweep.runner" in graph()["ttt_bench.cli"]  # a lazy import inside a function


def levels(edges: dict[str, set[str]]) -> dict[str, int]:
    """Per node, 1 + the most levels below it (a node stands above everything it imports); fails on a cycle."""
    depth: dict[str, int] = {}
    visiting: list[str] = []

    def level(node: str) -> int:
        if node in visiting:
            cycle = visiting[visiting.index(node):] + [node]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if node not in depth:
            visiting.append(node)
            depth[node] = 1 + max((level(child) for child in edges[node]), default=0)
            visiting.pop()
        return depth[node]

    for node in edges:
        level(node)
    return depth


def unit(module: str) -> str:
    """The top-level module or stage package a module belongs to: ttt_bench.layers.ttt.layer -> ttt_bench.layers."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_modules():
    levels(graph())


def test_the_stages_stand_at_most_ten_levels_high():
    units: dict[str, set[str]] = {}
    for module, imported in graph().items():
        units.setdefault(unit(module), set()).update(unit(i) for i in imported if unit(i) != unit(module))
    depth = levels(units)
    tallest = max(depth, key=depth.get)
    assert depth[tallest] <= MAX_LEVELS, f"{tallest} stands {depth[tallest]} levels high"
    assert depth["ttt_bench.errors"] == 1 and depth["ttt_bench.cli"] > depth["ttt_bench.sweep"]


def test_each_stage_imports_only_the_stages_below_it():
    wrong = [f"{module} imports {imported}" for module, imported_set in graph().items() for imported in imported_set
             if stage(imported) != stage(module) and stage(imported) not in ALLOWED[stage(module)]]
    assert not wrong, "\n".join(wrong)


def test_the_report_never_reaches_the_run_stack_even_indirectly():
    edges = graph()
    reached, frontier = set(), [m for m in edges if stage(m) == "report"]
    while frontier:
        module = frontier.pop()
        for child in edges[module] - reached:
            reached.add(child)
            frontier.append(child)
    assert not {m for m in reached if stage(m) in ("sweep", "training", "regression")}


def test_the_checks_catch_a_forbidden_import_and_a_cycle():
    """A report module that imported the runner would be named: the check above can fail."""
    fake = dict(graph())
    fake["ttt_bench.report.figures"] = fake["ttt_bench.report.figures"] | {"ttt_bench.sweep.runner"}
    wrong = [m for m, imported in fake.items() for i in imported
             if stage(i) != stage(m) and stage(i) not in ALLOWED[stage(m)]]
    assert wrong == ["ttt_bench.report.figures"]
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        levels({"a": {"b"}, "b": {"a"}})


@pytest.mark.parametrize(("doc", "generate"), [("suite-keys.md", schema.reference_markdown),
                                               ("result-columns.md", results.columns_reference)])
def test_generated_references_match_the_declarations(doc, generate):
    command = {"suite-keys.md": "python -m ttt_bench.sweep.schema", "result-columns.md": "python -m ttt_bench.results"}
    assert (ROOT / "docs" / doc).read_text() == generate(), f"regenerate it: {command[doc]} > docs/{doc}"
