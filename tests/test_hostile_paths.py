"""Names from suites and results folders never reach a path unsanitised (issue 17, item 1): a suite's name is a slug,
a path derived from a name stays inside its folder, and a report deletes only the files it wrote itself."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from report_fixture import ENV, write_fixture_results

from ttt_bench.cli import main
from ttt_bench.config import SLUG_PATTERN, path_inside, slug_of
from ttt_bench.errors import ConfigError
from ttt_bench.report.build import build_report
from ttt_bench.report.manifest import MANIFEST
from ttt_bench.results import ResultStore, load_results
from ttt_bench.sweep.parse import load_suite
from ttt_bench.sweep.schema import SuiteError

HOSTILE = "../../victim"


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (links not followed), with its bytes: what a command wrote or deleted shows up."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file() and not path.is_symlink()}


def write_suite(path: Path, name: str | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    named = f"name = {json.dumps(name)}\n" if name is not None else ""
    path.write_text(f'{named}layers = ["ttt-linear"]\n[grid]\nseq_len = [64]\n'
                    '[measure]\nrepeats = 1\nmin_time_s = 0.01\nthreads = 1\n')
    return path


@pytest.mark.parametrize("command", ["run", "oom"])
def test_a_suite_name_leading_out_of_results_is_refused_and_nothing_is_written(tmp_path, monkeypatch, capsys,
                                                                               command):
    suite = write_suite(tmp_path / "suites" / "bad.toml", "../../../x")
    work = tmp_path / "work" / "deep"  # results/../../../x from here would be tmp_path/x
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = tree(tmp_path)
    assert main([command, str(suite)]) == 2
    error = capsys.readouterr().err
    assert "key 'name'" in error and "'../../../x'" in error and SLUG_PATTERN.pattern in error
    assert len(error.strip().splitlines()) == 1
    assert tree(tmp_path) == before and not (tmp_path / "x").exists() and not (work / "results").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", ".hidden", "-flag", "with space", "", "x" * 101,
                                  "caf\u00e9", "a\\b"])
def test_a_suite_name_must_be_a_slug(tmp_path, name):
    with pytest.raises(SuiteError, match=r"key 'name'.*not allowed.*no '/'"):
        load_suite(write_suite(tmp_path / "s.toml", name))


@pytest.mark.parametrize("name", ["quick", "cpu-quick_2.0", "A1", "x" * 100])
def test_slugs_are_accepted(tmp_path, name):
    assert load_suite(write_suite(tmp_path / "s.toml", name)).name == name


def test_a_file_name_that_is_no_slug_needs_an_explicit_name(tmp_path):
    path = write_suite(tmp_path / "my suite.toml", None)
    with pytest.raises(SuiteError, match=r"'name' is missing and the file's name 'my suite' .* set 'name'"):
        load_suite(path)
    assert load_suite(write_suite(tmp_path / "mine.toml", None)).name == "mine"


def test_path_inside_refuses_dot_dot_absolute_and_links_out(tmp_path):
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    assert path_inside(base, "a", "b.png") == base / "a" / "b.png"
    (base / "link").symlink_to(outside, target_is_directory=True)
    for parts in (("..", "outside"), (str(outside),), ("link",), ("link", "f.png")):
        with pytest.raises(ConfigError, match="outside"):
            path_inside(base, *parts)


def test_slug_of_keeps_a_name_from_a_file_one_folder_name():
    assert slug_of(HOSTILE, "results") == "victim"
    assert slug_of("../..", "results") == "results"
    assert all(SLUG_PATTERN.fullmatch(slug_of(text, "r")) for text in ("a/b\\c d", "\u00e9t\u00e9", "x" * 500, "-."))


@pytest.fixture(scope="module")
def profile_rows(tmp_path_factory) -> list[tuple[str, list[dict]]]:
    """The fixture's finished profiling cells, whose rows a test rewrites (a results folder someone sent)."""
    frame = load_results(write_fixture_results(tmp_path_factory.mktemp("fixture")))
    profile = frame[(frame["measurement"] != "train") & (frame["status"] == "ok")
                    & frame["variant"].isin(["attention-sdpa-causal", "ttt-linear"])]
    return [(str(config_hash), rows.to_dict("records")) for config_hash, rows in profile.groupby("config_hash")]


def write_results(folder: Path, cells: list[tuple[str, list[dict]]], **overrides) -> Path:
    store = ResultStore(folder)
    for config_hash, rows in cells:
        store.write_cell(config_hash, [{**row, **overrides} for row in rows])
    return folder


def victim_folder(root: Path) -> Path:
    """A folder with a report of its own: what a hostile results folder must not overwrite or delete."""
    (root / "figures").mkdir(parents=True)
    for name in ("report.md", "report.html", "figures/time-vs-seq-len.png", "figures/time-vs-seq-len.svg",
                 f"figures/{MANIFEST}"):
        (root / name).write_text(f"the victim's {name}")
    return root


def test_a_results_folder_naming_its_suite_out_of_it_writes_and_deletes_nothing_outside(tmp_path, monkeypatch,
                                                                                       capsys, profile_rows):
    victim = victim_folder(tmp_path / "victim")
    (victim / MANIFEST).write_text(json.dumps({"files": ["report.md", "figures/time-vs-seq-len.png"]}))
    sent = tmp_path / "sent"
    results = write_results(sent / "results", profile_rows, suite=HOSTILE)
    ResultStore(results).write_run_files(ENV, f'name = "{HOSTILE}"\n')
    monkeypatch.chdir(sent)  # where ../victim and reports/<name> would land
    before = tree(tmp_path)
    assert main(["report", "results"]) == 0
    out = capsys.readouterr().out
    assert "--out reports/cpu-victim" in out
    after = tree(tmp_path)
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    assert changed and all(name.startswith(os.path.join("sent", "results", "report", "")) for name in changed)
    assert tree(victim) == {name.removeprefix(f"victim{os.sep}"): data for name, data in before.items()
                            if name.startswith(f"victim{os.sep}")}


def test_a_report_folder_linked_out_of_the_results_folder_is_refused(tmp_path, monkeypatch, capsys, profile_rows):
    victim = victim_folder(tmp_path / "victim")
    results = write_results(tmp_path / "sent" / "results", profile_rows)
    (results / "report").symlink_to(victim, target_is_directory=True)
    before = tree(tmp_path)
    assert main(["report", str(results)]) == 2
    assert "outside" in capsys.readouterr().err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("listed", ["../../../victim/figures/time-vs-seq-len.png", "figures/link.png"])
def test_a_manifest_listing_a_file_outside_the_report_folder_deletes_nothing(tmp_path, capsys, profile_rows, listed):
    victim = victim_folder(tmp_path / "victim")
    results = write_results(tmp_path / "sent" / "results", profile_rows)
    (results / "report" / "figures").mkdir(parents=True)
    (results / "report" / "figures" / "link.png").symlink_to(victim / "figures" / "time-vs-seq-len.png")
    (results / "report" / MANIFEST).write_text(json.dumps({"files": [listed]}))
    before = tree(tmp_path)
    assert main(["report", str(results)]) == 2
    error = capsys.readouterr().err
    assert MANIFEST in error and "outside" in error
    assert tree(tmp_path) == before


def test_a_rebuilt_report_keeps_the_users_files_and_drops_only_its_own_stale_figures(tmp_path, profile_rows):
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "notes.png").write_bytes(b"the user's own figure")
    (out / "NOTES.md").write_text("the user's notes")
    build_report([write_results(tmp_path / "with-memory", profile_rows)], out)
    assert (out / "figures" / "notes.png").read_bytes() == b"the user's own figure"
    assert (out / "figures" / "memory-vs-seq-len.png").exists()
    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert "figures/notes.png" not in listed and "figures/memory-vs-seq-len.svg" in listed
    # The same cells without memory measurements: the memory figure is no longer drawn.
    build_report([write_results(tmp_path / "time-only", profile_rows, peak_bytes=None)], out)
    assert not (out / "figures" / "memory-vs-seq-len.png").exists()
    assert (out / "figures" / "time-vs-seq-len.png").exists()
    assert (out / "figures" / "notes.png").read_bytes() == b"the user's own figure"
    assert (out / "NOTES.md").read_text() == "the user's notes"
    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(listed) == sorted(str(path.relative_to(out).as_posix()) for path in out.rglob("*")
                                    if path.is_file() and path.name not in ("notes.png", "NOTES.md", MANIFEST))
