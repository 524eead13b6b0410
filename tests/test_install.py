"""ttt-bench installed as a user installs it: a wheel built from this checkout, installed into a fresh venv and
run from an empty folder, must carry every module and the shipped suites; an editable install and a bare
checkout (`python -m ttt_bench`, not installed) must find the repository's suites/.

The venv has no system site-packages (the main environment's editable ttt_bench would shadow the wheel); it
reaches torch, pandas and the rest through a .pth file naming the main site-packages folders. A .pth line only
adds a folder to sys.path; the .pth files inside that folder (the editable install's finder) are not run, and
each test asserts that the ttt_bench it ran is the one it installed.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ttt_bench import __version__
from ttt_bench.sweep.parse import load_suite

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "suites").glob("*.toml"))
# Not part of a source tree as a fresh clone has it; build outputs left here would leak into the wheel.
NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "results", "reports", ".asv",
                                    ".hypothesis", ".pytest_cache", ".ruff_cache", ".benchmarks", ".venv", "venv")
WHERE = "import ttt_bench; from ttt_bench.sweep.shipped import shipped_folder; print(ttt_bench.__file__); " \
        "print(shipped_folder())"


def run(command: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | env
    return subprocess.run([str(part) for part in command], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=300, check=False)


def succeeds(command: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    done = run(command, cwd, **env)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the checkout without build outputs, so what is built is what a clone would build."""
    copy = tmp_path_factory.mktemp("source") / "ttt-bench"
    shutil.copytree(ROOT, copy, ignore=NOT_SOURCE)
    return copy


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    succeeds([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
              "--wheel-dir", out, source], cwd=out)
    (built,) = out.glob("ttt_bench-*.whl")
    return built


def fresh_venv(folder: Path) -> Path:
    """A venv without system site-packages and without pip (the main environment's pip installs into it)."""
    succeeds([sys.executable, "-m", "venv", "--without-pip", folder], cwd=folder.parent)
    return folder / "bin" / "python"


def install(python: Path, wheel: Path) -> None:
    succeeds([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel],
             cwd=wheel.parent)


def reach_main_dependencies(python: Path) -> None:
    """After installing (so pip never sees the main environment's ttt-bench): torch and the rest from the main
    site-packages, through a .pth line."""
    venv_site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], python.parent)
    (Path(venv_site.stdout.strip()) / "main-site-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")


def test_the_wheel_holds_every_module_and_every_shipped_suite_and_claims_python_3_11(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "ttt_bench").rglob("*.py")}
    assert modules - names == set()  # a package missing from pyproject's list would be missing here
    assert {f"ttt_bench/suites/{path.name}" for path in SHIPPED} <= names
    (metadata,) = [name for name in names if name.endswith(".dist-info/METADATA")]
    fields = email.parser.Parser().parsestr(zipfile.ZipFile(wheel).read(metadata).decode())
    assert fields["Requires-Python"] == ">=3.11"
    assert fields["Version"] == __version__


def test_a_wheel_in_a_fresh_venv_lists_and_plans_the_shipped_suites_from_an_empty_folder(wheel, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    install(python, wheel)
    reach_main_dependencies(python)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ttt_bench = python.parent / "ttt-bench"

    module_file, suites_folder = succeeds([python, "-c", WHERE], elsewhere).stdout.split()
    assert Path(module_file).is_relative_to(tmp_path / "venv")  # the wheel's, not the main environment's
    assert Path(suites_folder).is_relative_to(tmp_path / "venv")

    assert succeeds([ttt_bench, "--version"], elsewhere).stdout == f"ttt-bench {__version__}\n"

    listing = succeeds([ttt_bench, "ls"], elsewhere).stdout
    suites = listing.split("\nsuites:\n")[1].splitlines()
    assert sorted(line.split()[0] for line in suites) == sorted(path.stem for path in SHIPPED)
    assert [line for line in suites if " invalid " in line] == []

    quick = load_suite(ROOT / "suites" / "quick.toml").cells()
    plan = succeeds([ttt_bench, "run", "quick", "--dry-run"], elsewhere)
    assert [line.split()[0] for line in plan.stdout.splitlines()] == [cell.config_hash for cell in quick]
    assert f"{len(quick)} cells, {len(quick)} to run" in plan.stderr
    assert list(elsewhere.iterdir()) == []  # a dry run writes nothing


def test_an_editable_install_and_a_bare_checkout_find_the_checkouts_suites(source, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bare = fresh_venv(tmp_path / "bare")
    reach_main_dependencies(bare)
    module_file, suites_folder = succeeds([bare, "-c", WHERE], elsewhere, PYTHONPATH=str(source)).stdout.split()
    assert Path(module_file).is_relative_to(source) and Path(suites_folder) == source / "suites"

    editable = fresh_venv(tmp_path / "editable")
    # The hook `pip install --editable` calls, run here: pip would run it inside the venv, which has no setuptools.
    build = f"import setuptools.build_meta as backend; backend.build_editable({str(tmp_path)!r})"
    succeeds([sys.executable, "-c", build], cwd=source)
    (editable_wheel,) = tmp_path.glob("ttt_bench-*.whl")
    install(editable, editable_wheel)
    reach_main_dependencies(editable)
    module_file, suites_folder = succeeds([editable, "-c", WHERE], elsewhere).stdout.split()
    assert Path(module_file).is_relative_to(source) and Path(suites_folder) == source / "suites"
    assert "quick" in succeeds([editable.parent / "ttt-bench", "ls"], elsewhere).stdout.split("\nsuites:\n")[1]
