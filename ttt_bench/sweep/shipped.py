"""The suite files shipped with ttt-bench, and suite names resolved to them ('quick' -> suites/quick.toml)."""

from __future__ import annotations

import os
from pathlib import Path

from ttt_bench.sweep.schema import SuiteError


def shipped_suites() -> list[Path]:
    """The suite files shipped with ttt-bench (its checkout's suites/ folder), and those under ./suites."""
    folders = [Path(__file__).resolve().parents[2] / "suites", Path(os.getcwd()) / "suites"]
    found = {path.resolve(): path for folder in folders if folder.is_dir() for path in sorted(folder.glob("*.toml"))}
    return sorted(found.values(), key=lambda p: p.name)


def resolve_suite_path(given: str) -> Path:
    """A path as given, or the name of a shipped suite ('quick' -> suites/quick.toml)."""
    path = Path(given)
    if path.exists() or path.suffix == ".toml":
        return path
    for shipped in shipped_suites():
        if shipped.stem == given:
            return shipped
    names = ", ".join(p.stem for p in shipped_suites())
    raise SuiteError(f"{given}: no such suite file, nor a shipped suite of that name; shipped suites: {names}")
