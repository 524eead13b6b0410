"""The suite files shipped with ttt-bench, and suite names resolved to them ('quick' -> suites/quick.toml)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ttt_bench.config import did_you_mean
from ttt_bench.sweep.schema import SuiteError


def shipped_folder() -> Path:
    """The folder of the suites shipped with ttt-bench: the package ttt_bench.suites in an installed wheel or an
    editable install (pyproject maps it onto the repository's suites/), else the checkout's suites/ (a
    `python -m ttt_bench` from the repository, not installed). The spec is only looked up, never executed: the
    folder also holds the asv benchmarks, which library code does not import."""
    spec = importlib.util.find_spec("ttt_bench.suites")
    if spec is not None and spec.submodule_search_locations:
        return Path(spec.submodule_search_locations[0])
    return Path(__file__).resolve().parents[2] / "suites"


def shipped_suites() -> list[Path]:
    """The suite files shipped with ttt-bench, and those under ./suites of the current folder."""
    folders = [shipped_folder(), Path(os.getcwd()) / "suites"]
    found = {path.resolve(): path for folder in folders if folder.is_dir() for path in sorted(folder.glob("*.toml"))}
    return sorted(found.values(), key=lambda p: p.name)


def resolve_suite_path(given: str) -> Path:
    """A path as given, or the name of a shipped suite ('quick' -> suites/quick.toml)."""
    path = Path(given)
    if path.exists() or path.suffix == ".toml":
        return path
    shipped = shipped_suites()
    match = next((suite for suite in shipped if suite.stem == given), None)
    if match is not None:
        return match
    names = [suite.stem for suite in shipped]
    raise SuiteError(f"{given}: no such suite file, nor a shipped suite of that name{did_you_mean(given, names, 1)}; "
                     f"shipped suites: {', '.join(names)}")
