"""A hostile or damaged results folder: an unreadable cell file is named in one warning line and skipped (a run moves
it to cells/_quarantine/ and measures its cell again; report and compare leave the folder alone, or with --strict
refuse it, exit 2); rows the store cannot encode become the cell's error rows and the sweep goes on; a full disk is
one line and exit 1 with the finished cells intact; stale temporary files go when a run takes the lock; files
honour the umask."""

from __future__ import annotations

import errno
import os
import stat

import pyarrow.parquet as pq
import pytest
from checks import write_suite
from test_compare import grid, write_set

from ttt_bench import results
from ttt_bench.cli import main
from ttt_bench.results import QUARANTINE_DIR, ResultStore, load_results
from ttt_bench.sweep import runner
from ttt_bench.sweep.cell import now_utc
from ttt_bench.sweep.parse import load_suite
from ttt_bench.sweep.progress import Progress

SUITE = """
    name = "hardening"
    layers = ["linear-attention-causal"]
    [grid]
    seq_len = [16, 32, 64]
    d_model = 16
    n_heads = 2
    [measure]
    repeats = 1
    min_time_s = 0.01
    threads = 1
"""
CORRUPTIONS = ("garbage", "truncated", "empty file", "no rows")


def corrupt(path, how: str) -> None:
    """Damage the cell file at `path` (an existing, good one) in one of the ways CORRUPTIONS names."""
    if how == "garbage":
        path.write_bytes(b"not a parquet file at all\n" * 40)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty file":
        path.write_bytes(b"")
    else:
        pq.write_table(results.SCHEMA.empty_table(), path)


class InstantWorker:
    """Stands in for the worker process (no spawn, no torch): every cell 'ok' at once, with `values` in its rows."""

    values: dict[str, object] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None

    def run(self, cell):
        return [{**cell.config_columns(), "measurement": measurement, "status": "ok", "message": "",
                 "started_at": now_utc(), "finished_at": now_utc(), "time_ms": 1.0, **self.values}
                for measurement in cell.measurements]


@pytest.fixture
def instant_runs(monkeypatch):
    monkeypatch.setattr(runner, "Worker", InstantWorker)
    monkeypatch.setattr(runner, "busy_machine_warning", lambda threads: None)
    monkeypatch.setattr(InstantWorker, "values", {})


@pytest.fixture
def finished_run(tmp_path, instant_runs, capsys):
    """A suite of three cells run into a folder: (suite file, folder)."""
    path, out = write_suite(tmp_path, SUITE), tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    return path, out


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_dry_run_names_the_file_once_plans_its_cell_and_moves_nothing(finished_run, capsys, how):
    path, out = finished_run
    damaged = sorted((out / "cells").glob("*.parquet"))[0]
    corrupt(damaged, how)
    assert main(["run", str(path), "--out", str(out), "--dry-run"]) == 0
    captured = capsys.readouterr()
    [warning] = warnings_in(captured.err)
    assert str(damaged) in warning and "Traceback" not in captured.err
    assert f"{damaged.stem}  run" in captured.out and "3 cells, 1 to run" in captured.err
    assert damaged.exists() and not (out / "cells" / QUARANTINE_DIR).exists()


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_run_quarantines_the_file_and_measures_its_cell_again(finished_run, capsys, how):
    path, out = finished_run
    damaged = sorted((out / "cells").glob("*.parquet"))[0]
    corrupt(damaged, how)
    damaged_bytes = damaged.read_bytes()
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    [warning] = warnings_in(captured.err)
    quarantined = out / "cells" / QUARANTINE_DIR / damaged.name
    assert str(damaged) in warning and str(quarantined) in warning and "Traceback" not in captured.err
    assert "ran 1 (1 ok)" in captured.out
    assert quarantined.read_bytes() == damaged_bytes  # kept as found, for whoever wants to look
    assert ResultStore(out).statuses() == dict.fromkeys(ResultStore(out).statuses(), "ok")
    assert len(ResultStore(out).statuses()) == 3 and load_results(out).config_hash.nunique() == 3


def test_a_second_quarantine_of_the_same_cell_keeps_the_first(finished_run, capsys):
    path, out = finished_run
    damaged = sorted((out / "cells").glob("*.parquet"))[0]
    for how in ("garbage", "empty file"):
        corrupt(damaged, how)
        assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    quarantine = out / "cells" / QUARANTINE_DIR
    assert {p.name for p in quarantine.iterdir()} == {damaged.name, f"{damaged.stem}.1.parquet"}
    assert (quarantine / damaged.name).read_bytes().startswith(b"not a parquet")


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_loading_skips_the_file_with_one_warning_and_leaves_the_folder_alone(tmp_path, capsys, how):
    folder = write_set(tmp_path / "a", grid())
    damaged = sorted((folder / "cells").glob("*.parquet"))[0]
    corrupt(damaged, how)
    before = sorted(p.name for p in (folder / "cells").iterdir())
    frame = load_results(folder)
    [warning] = warnings_in(capsys.readouterr().err)
    assert str(damaged) in warning and "--strict" in warning
    assert frame.config_hash.nunique() == len(grid()) - 1 and damaged.stem not in set(frame.config_hash)
    assert sorted(p.name for p in (folder / "cells").iterdir()) == before
    with pytest.raises(results.CorruptCellFileError, match=str(damaged)):
        load_results(folder, strict=True)


def test_report_skips_a_corrupt_file_and_with_strict_fails(tmp_path, capsys):
    from report_fixture import write_fixture_results

    folder = write_fixture_results(tmp_path / "results")
    damaged = sorted((folder / "cells").glob("*.parquet"))[0]
    corrupt(damaged, "truncated")
    assert main(["report", str(folder), "--strict"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and str(damaged) in captured.err and "Traceback" not in captured.err
    assert not (folder / "report").exists()
    assert main(["report", str(folder)]) == 0
    captured = capsys.readouterr()
    [warning] = warnings_in(captured.err)
    assert str(damaged) in warning and (folder / "report" / "report.md").exists()
    assert damaged.exists() and not (folder / "cells" / QUARANTINE_DIR).exists()


def test_compare_exits_2_only_with_strict_and_1_only_for_a_regression(tmp_path, capsys):
    a = write_set(tmp_path / "a", grid())
    b = write_set(tmp_path / "b", grid())
    damaged = sorted((b / "cells").glob("*.parquet"))[0]
    corrupt(damaged, "garbage")
    assert main(["compare", str(a), str(b)]) == 0  # the other cells agree: no regression
    captured = capsys.readouterr()
    [warning] = warnings_in(captured.err)
    assert str(damaged) in warning and "Traceback" not in captured.err
    assert main(["compare", str(a), str(b), "--strict"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and str(damaged) in captured.err

    slower = write_set(tmp_path / "slower", grid(**{"attention_256": {"time_ms": 100.0}}))
    corrupt(sorted((slower / "cells").glob("*.parquet"))[-1], "empty file")
    assert main(["compare", str(a), str(slower)]) == 1
    assert main(["compare", str(a), str(slower), "--strict"]) == 2


def test_compare_that_crashes_exits_2_not_1(tmp_path, capsys, monkeypatch):
    from ttt_bench.report import compare

    def crash(*args, **kwargs):
        raise RuntimeError("a bug in compare")

    monkeypatch.setattr(compare, "compare_results", crash)
    a = write_set(tmp_path / "a", grid())
    assert main(["compare", str(a), str(a)]) == 2
    assert "not a regression" in capsys.readouterr().err


def test_rows_the_store_cannot_encode_become_an_error_row_and_the_sweep_goes_on(tmp_path, instant_runs,
                                                                                 monkeypatch):
    cells = load_suite(write_suite(tmp_path, SUITE)).cells()
    store = ResultStore(tmp_path / "out")
    first_hash, measure = cells[0].config_hash, InstantWorker.run

    def run(self, cell):
        rows = measure(self, cell)
        return [{**row, "peak_bytes": 2**70} for row in rows] if cell.config_hash == first_hash else rows

    monkeypatch.setattr(InstantWorker, "run", run)
    statuses = runner.run_on_worker(cells, store, Progress(len(cells), enabled=False))
    assert statuses == ["error", "ok", "ok"]
    failed = store.read_cell(first_hash)
    assert set(failed.status) == {"error"} and failed.peak_bytes.isna().all()
    [message] = set(failed.message)
    assert message.startswith("its rows could not be stored: column peak_bytes (int64)") and "\n" not in message
    assert failed.layer.iloc[0] == cells[0].cell.layer and failed.seq_len.iloc[0] == cells[0].cell.seq_len


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_one_line_exit_1_and_keeps_the_finished_cells(tmp_path, instant_runs, monkeypatch, capsys,
                                                                      code):
    path, out = write_suite(tmp_path, SUITE), tmp_path / "out"
    write_table, cells_written = pq.write_table, []

    def fills_the_disk(table, file):
        if cells_written:
            file.write(b"PAR1 partial")
            raise OSError(code, os.strerror(code))
        cells_written.append(table)
        write_table(table, file)

    monkeypatch.setattr(results.pq, "write_table", fills_the_disk)
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    [line] = captured.err.splitlines()
    assert line.startswith(f"ttt-bench: error: {out / 'cells'}: the disk is full") and " MiB free" in line
    monkeypatch.undo()
    frame = load_results(out)
    assert len(frame) == cells_written[0].num_rows and set(frame.status) == {"ok"}  # the first cell, intact
    assert ResultStore(out).statuses() == {frame.config_hash.iloc[0]: "ok"} and not list((out / "cells").glob(".*"))


def test_stale_temporary_files_go_when_a_run_takes_the_lock(tmp_path):
    out = tmp_path / "out"
    store = ResultStore(out)
    store.write_cell("abc", [{"config_hash": "abc", "measurement": "forward", "status": "ok"}])
    store.write_run_files({"torch_version": "x"}, "name = 'x'\n")
    [run_dir] = (out / "runs").iterdir()
    stale = [out / "cells" / ".abc.parquet.k3j2_1.tmp", out / ".env.json.a8x.tmp", run_dir / ".suite.toml.zz9.tmp"]
    unrelated = [out / "notes.tmp", out / "cells" / ".keep", out / ".mine.tmp"]
    for file in stale + unrelated:
        file.write_bytes(b"left behind")
    with store.lock():
        assert not any(file.exists() for file in stale)
    assert all(file.exists() for file in unrelated)
    assert store.statuses() == {"abc": "ok"}


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        store = ResultStore(tmp_path)
        store.write_cell("abc", [{"config_hash": "abc", "measurement": "forward", "status": "ok"}])
        store.write_run_files({"torch_version": "x"}, "name = 'x'\n")
    finally:
        os.umask(previous)
    written = [tmp_path / "cells" / "abc.parquet", tmp_path / "env.json", tmp_path / "suite.toml"]
    assert [stat.S_IMODE(file.stat().st_mode) for file in written] == [mode] * len(written)
