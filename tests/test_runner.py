"""The sweep runner: tidy rows per cell and measurement, crash isolation (an exception, a segfault, a hang,
an out-of-memory cell), resuming after kill -9, --retry-failed and --retry-noisy, the run lock, progress and
--dry-run; rows that say how, where and in which run they were measured; a run with other [measure] settings
refused unless --add; the busy-machine warning; a run left with timeouts or errors exits 1 and says so last."""

import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import fields

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest
import torch
from checks import write_suite

from ttt_bench import results
from ttt_bench.cli import main
from ttt_bench.profile.measure import Cell
from ttt_bench.results import NOISY_SPREAD, ResultStore, StoredCell, load_results
from ttt_bench.sweep import runner
from ttt_bench.sweep.parse import load_suite
from ttt_bench.sweep.plan import DECODE_SETTINGS, PlannedCell
from ttt_bench.sweep.progress import Progress
from ttt_bench.sweep.runner import RunSummary, busy_machine_warning, needs_run, run_suite
from ttt_bench.sweep.schema import MeasureSettings

FAST_MEASURE = """
[measure]
repeats = 1
slow_repeats = 1
min_time_s = 0.001
threads = 1
count_flops_max_seq_len = 32
"""


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    """One sweep with a good layer around four that fail in different ways."""
    tmp_path = tmp_path_factory.mktemp("faulty")
    path = write_suite(tmp_path, """
        name = "faulty"
        imports = ["faulty_layers"]
        layers = ["linear-attention-causal", "faulty-raises", "faulty-segfaults", "faulty-hangs",
                  "faulty-allocates", "ttt-linear"]
        [grid]
        seq_len = [16, 32]
        d_model = 16
        n_heads = 2
        [[only]]
        layer = ["faulty-hangs", "faulty-segfaults"]
        seq_len = 16
    """ + FAST_MEASURE + """
        memory_budget_gib = 0.01
        timeout_s = 8
    """)
    out = tmp_path / "out"
    summary = run_suite(load_suite(path), out, show_progress=False)
    return path, out, summary


def test_failing_cells_are_recorded_and_the_others_finish(faulty_run):
    _, out, summary = faulty_run
    frame = load_results(out)
    status = frame.groupby(["variant", "seq_len"]).status.agg(set).map(lambda s: s.pop() if len(s) == 1 else s)
    assert status.to_dict() == {
        ("faulty-allocates", 16): "oom", ("faulty-allocates", 32): "oom",
        ("faulty-hangs", 16): "timeout",
        ("faulty-raises", 16): "error", ("faulty-raises", 32): "error",
        ("faulty-segfaults", 16): "error",
        ("linear-attention-causal", 16): "ok", ("linear-attention-causal", 32): "ok",
        ("ttt-linear", 16): "ok", ("ttt-linear", 32): "ok",
    }
    messages = frame.drop_duplicates("config_hash").set_index("variant").message
    assert "injected failure in forward" in messages["faulty-raises"].iloc[0]
    assert "SIGSEGV" in messages["faulty-segfaults"]
    assert "8 s" in messages["faulty-hangs"] and "timeout_s" in messages["faulty-hangs"]
    assert "budget" in messages["faulty-allocates"].iloc[0]
    assert summary.ran == summary.total == 10 and summary.failures == 6


def test_rows_are_tidy_with_config_hash_units_and_environment(faulty_run):
    _, out, _ = faulty_run
    frame = load_results(out)
    measurements = frame.groupby("config_hash").measurement.apply(lambda m: tuple(sorted(m)))
    assert set(measurements) == {("forward", "forward_backward")} and len(measurements) == 10
    ok = frame[frame.status == "ok"]
    for column in ("layer", "variant", "seq_len", "batch", "d_model", "n_heads", "dtype", "device", "seed", "suite",
                   "macs", "flops", "peak_bytes", "time_ms", "tokens_per_s", "git_commit", "torch_version"):
        assert ok[column].notna().all(), column
    assert (ok.flops == 2 * ok.macs).all() and (ok.macs_flop_counter == ok.macs).all()
    assert (ok.time_p20_ms <= ok.time_ms).all() and (ok.time_ms <= ok.time_p80_ms).all()
    forward = ok[ok.measurement == "forward"]
    assert (forward.macs_fvcore == forward.macs).all()
    assert (load_results(out).suite == "faulty").all()
    assert (out / "env.json").exists() and "faulty-raises" in (out / "suite.toml").read_text()


def test_rows_carry_the_memory_budget_and_the_measured_matmul_ceiling(faulty_run):
    _, out, _ = faulty_run
    frame = load_results(out)
    assert (frame.dropna(subset=["macs"]).memory_budget_bytes == int(0.01 * 2**30)).all()
    ok = frame[frame.status == "ok"]
    # Measured once per worker, dtype and thread count (a crash replaces the worker, which measures again),
    # not once per cell.
    assert (ok.matmul_tflops_per_s > 0).all() and ok.matmul_tflops_per_s.nunique() < ok.config_hash.nunique()
    assert frame[frame.status != "ok"].matmul_tflops_per_s.isna().all()


def test_rerun_skips_finished_cells_and_retry_failed_reruns_only_failures(faulty_run, tmp_path):
    path, out, _ = faulty_run
    store = ResultStore(out)
    before = store.modification_times()
    summary = run_suite(load_suite(path), out, show_progress=False)
    assert summary.ran == 0 and summary.already_done == 10 and store.modification_times() == before

    # Retry only the cheap failures: without the hang and the segfault (and with their cells gone from the grid).
    retry_path = write_suite(tmp_path, path.read_text().replace('"faulty-segfaults", "faulty-hangs",', ""))
    summary = run_suite(load_suite(retry_path), out, retry_failed=True, show_progress=False)
    after = store.modification_times()
    statuses = store.statuses()
    rerun = {h for h in after if after[h] != before[h]}
    assert summary.ran == 4 and {statuses[h] for h in rerun} == {"error", "oom"}
    assert all(statuses[h] == "ok" for h in set(after) - rerun if statuses[h] == "ok")
    frame = load_results(out)
    assert frame.groupby(["config_hash", "measurement"]).size().eq(1).all()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, capsys):
    path = write_suite(tmp_path, """
        layers = ["linear-attention-causal"]
        [grid]
        seq_len = [16]
        d_model = 16
        n_heads = 2
    """ + FAST_MEASURE)
    out = tmp_path / "out"
    with ResultStore(out).lock():
        assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "another ttt-bench run" in err and str(out) in err and "Traceback" not in err
    assert not (out / "cells").exists()


def test_kill_9_then_rerun_leaves_every_cell_once_and_loses_nothing(tmp_path):
    path = write_suite(tmp_path, """
        layers = ["linear-attention-causal", "fast-weights"]
        [grid]
        seq_len = [32, 64, 96, 128, 160, 192]
        d_model = 16
        n_heads = 2
        [measure]
        repeats = 3
        min_time_s = 0.3
        threads = 1
        count_flops_max_seq_len = 0
    """)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ttt_bench.cli", "run", str(path), "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = ResultStore(out)
    deadline = time.monotonic() + 120
    while len(store.statuses()) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # the run itself; its worker sees the pipe close and exits
    process.wait()
    assert process.returncode == -signal.SIGKILL
    finished_before = {h: store.read_cell(h) for h in store.statuses()}
    assert 3 <= len(finished_before) < 12, "the kill should land mid-sweep"

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(finished_before)} already done" in rerun.stdout
    frame = load_results(out)
    assert frame.config_hash.nunique() == 12 and len(frame) == 24
    assert (frame.status == "ok").all()
    for config_hash, rows in finished_before.items():
        pd.testing.assert_frame_equal(store.read_cell(config_hash), rows)


def test_progress_lines_and_dry_run(tmp_path, capsys):
    path = write_suite(tmp_path, """
        layers = ["linear-attention-causal", "attention-naive-causal"]
        [grid]
        seq_len = [16, 64]
        d_model = 16
        n_heads = 2
    """ + FAST_MEASURE + """
        [[exclude]]
        layer = "attention-naive*"
        seq_len = 64
        reason = "kept small"
    """)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count(" run ") == 4 and "skipped: kept small" in captured.out
    assert "4 cells, 4 to run" in captured.err and not out.exists()

    assert main(["run", str(path), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert len(lines) == 4 and lines[0].startswith("[1/4] linear-attention-causal N=16")
    assert all("failures 0" in line and "ETA" in line for line in lines)
    assert "skipped" in lines[-1] and "3 ok, 1 skipped" in captured.out

    assert main(["run", str(path), "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("done (") == 4

    # Without the rule, the cell it skipped is due to run; the others stay done.
    path.write_text(path.read_text().split("[[exclude]]")[0])
    assert main(["run", str(path), "--out", str(out), "--dry-run"]) == 0
    plan = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in plan] == ["done", "done", "done", "run"] and "N=64" in plan[-1]


def test_ls_lists_the_shipped_suites(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "suites:" in out and "quick" in out and "60 cells" in out and "OOM frontier" in out


def test_an_unavailable_device_is_refused_before_anything_is_written(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    path = write_suite(tmp_path, """
        layers = ["linear-attention"]
        [grid]
        seq_len = [16]
        device = "cuda"
    """)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    assert "'cuda' is not available here" in capsys.readouterr().err and not out.exists()



def test_a_results_folder_is_read_directly_by_pyarrow_duckdb_and_pandas(faulty_run):
    """Every cell file has the one schema of ttt_bench.results, so readers that expect one schema per folder
    (a pyarrow dataset, DuckDB's glob, pandas on the folder) read it as it is."""
    _, out, _ = faulty_run
    cells = out / "cells"
    frame = load_results(out)
    table = pyarrow.dataset.dataset(cells, format="parquet").to_table()
    assert [(f.name, f.type) for f in table.schema] == [(f.name, f.type) for f in results.SCHEMA]
    assert table.num_rows == len(frame) and set(table.column("status").to_pylist()) >= {"ok", "oom", "timeout"}
    counts = dict(duckdb.sql(f"select status, count(*) from read_parquet('{cells}/*.parquet') group by status")
                  .fetchall())
    assert counts == frame.status.value_counts().to_dict()
    typed = duckdb.sql(f"select typeof(started_at), typeof(seq_len), typeof(peak_bytes) "
                       f"from read_parquet('{cells}/*.parquet') limit 1").fetchall()[0]
    assert typed == ("TIMESTAMP WITH TIME ZONE", "BIGINT", "BIGINT")
    assert len(pd.read_parquet(cells)) == len(frame)


TINY = """
    name = "tiny"
    layers = ["linear-attention-causal"]
    [grid]
    seq_len = [16, 32]
    d_model = 16
    n_heads = 2
    [measure]
    repeats = 3
    slow_repeats = 1
    min_time_s = 0.001
    threads = 1
    count_flops_max_seq_len = 0
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished run of two cells, through the CLI; tests that change the folder work on a copy."""
    tmp_path = tmp_path_factory.mktemp("tiny")
    path = write_suite(tmp_path, TINY)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    return path, out


def copy_of(out, tmp_path):
    shutil.copytree(out, tmp_path / "out")
    return tmp_path / "out"


def test_rows_say_how_where_and_in_which_run_they_were_measured(tiny_run):
    path, out = tiny_run
    frame = load_results(out)
    assert len(frame) == 4 and frame.measure_settings.nunique() == 1
    text = frame.measure_settings.iloc[0]
    settings = json.loads(text)
    assert text == json.dumps(settings, sort_keys=True)
    # The decode settings shape decode rows only, and these cells do not decode.
    assert set(settings) == {f.name for f in fields(MeasureSettings)} - {"timeout_s", *DECODE_SETTINGS}
    as_set = {"repeats": 3, "slow_repeats": 1, "min_time_s": 0.001, "threads": 1, "count_flops_max_seq_len": 0}
    assert {key: settings[key] for key in as_set} == as_set and settings["memory_budget_gib"] is None

    assert (frame.time_spread == frame.time_p80_ms / frame.time_p20_ms).all() and (frame.time_spread >= 1).all()
    assert frame.noisy.tolist() == (frame.time_spread > NOISY_SPREAD).tolist()
    assert (frame.cpus_available == len(os.sched_getaffinity(0))).all()
    assert frame.load_average.notna().all() and (frame.load_average >= 0).all()

    runs = list((out / "runs").iterdir())
    assert len(runs) == 1 and set(frame.run_id) == {runs[0].name}
    assert (runs[0] / "suite.toml").read_text() == path.read_text() == (out / "suite.toml").read_text()
    env = json.loads((runs[0] / "env.json").read_text())
    assert env == json.loads((out / "env.json").read_text())
    assert env["cpus_available"] == len(os.sched_getaffinity(0)) and env["load_average"] >= 0


def test_a_run_with_other_measure_settings_is_refused_unless_added(tiny_run, tmp_path, capsys, monkeypatch):
    path, fixture_out = tiny_run
    out = copy_of(fixture_out, tmp_path)
    store = ResultStore(out)
    before = store.modification_times()
    other = write_suite(tmp_path, TINY.replace("threads = 1", "threads = 2").replace("[16, 32]", "[16]"),
                        "other.toml")
    for dry_run in ([], ["--dry-run"]):
        assert main(["run", str(other), "--out", str(out), "--quiet", *dry_run]) == 2
        err = capsys.readouterr().err
        assert "threads 1 -> 2" in err and "--add" in err and "--out" in err and "repeats" not in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert store.modification_times() == before and len(list((out / "runs").iterdir())) == 1

    # More lengths with the same settings are not a blend.
    longer = write_suite(tmp_path, TINY.replace("[16, 32]", "[16, 32, 48]"), "longer.toml")
    assert main(["run", str(longer), "--out", str(out), "--dry-run"]) == 0
    assert "3 cells, 1 to run" in capsys.readouterr().err

    monkeypatch.setattr(runner, "cpus_available", lambda: 2)
    monkeypatch.setattr(runner, "load_average", lambda: 1.6)
    assert main(["run", str(other), "--out", str(out), "--quiet", "--add"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "threads = 2" in warnings[0] and "load average 1.60" in warnings[0]
    assert "threads = 1 or run on an idle machine" in warnings[0]

    frame = load_results(out)
    threads = frame.measure_settings.map(lambda text: json.loads(text)["threads"])
    assert frame.groupby(threads).config_hash.nunique().to_dict() == {1: 2, 2: 1}
    first, second = sorted(p.name for p in (out / "runs").iterdir())
    assert set(frame.run_id[threads == 1]) == {first} and set(frame.run_id[threads == 2]) == {second}
    assert (out / "runs" / first / "suite.toml").read_text() == path.read_text()
    assert (out / "runs" / second / "suite.toml").read_text() == other.read_text() == (out / "suite.toml").read_text()
    # Either series now resumes without --add.
    assert main(["run", str(path), "--out", str(out), "--dry-run"]) == 0


def test_cells_of_unknown_settings_and_of_the_other_kind(tiny_run, tmp_path, capsys):
    """A folder from before rows recorded their settings: its cells count as the suite's when their config
    hash is the suite's, else as unknown. Training cells do not bar a profiling run, nor the other way."""
    path, fixture_out = tiny_run
    out = copy_of(fixture_out, tmp_path)
    for file in (out / "cells").glob("*.parquet"):
        pq.write_table(pq.read_table(file).drop_columns(["measure_settings"]).replace_schema_metadata(None), file)
    assert {cell.measure_settings for cell in ResultStore(out).stored_cells().values()} == {None}
    assert main(["run", str(path), "--out", str(out), "--dry-run"]) == 0
    other = write_suite(tmp_path, TINY.replace("threads = 1", "threads = 2"), "other.toml")
    assert main(["run", str(other), "--out", str(out), "--dry-run"]) == 2
    assert "2 cells of unknown settings (written before ttt-bench recorded them)" in capsys.readouterr().err
    assert main(["run", str(other), "--out", str(out), "--dry-run", "--add"]) == 0

    trained = tmp_path / "trained"
    ResultStore(trained).write_cell("0123456789abcdef", [
        {"measurement": "train", "status": "ok", "measure_settings": json.dumps({"threads": 4})}])
    assert main(["run", str(other), "--out", str(trained), "--dry-run"]) == 0


def test_retry_noisy_reruns_exactly_the_cells_with_a_noisy_row(tiny_run, tmp_path, capsys):
    path, fixture_out = tiny_run
    out = copy_of(fixture_out, tmp_path)
    store = ResultStore(out)
    noisy_hash, steady_hash = sorted(store.statuses())
    # Both cells' flags are set here, not left to the timer: tiny calls on a busy machine may really be noisy.
    for config_hash in (noisy_hash, steady_hash):
        file = out / "cells" / f"{config_hash}.parquet"
        table = pq.read_table(file)
        marked = [config_hash == noisy_hash and m == "forward" for m in table.column("measurement").to_pylist()]
        pq.write_table(table.set_column(table.schema.get_field_index("noisy"), "noisy", pa.array(marked)), file)

    assert main(["run", str(path), "--out", str(out), "--dry-run"]) == 0
    captured = capsys.readouterr()
    plan = dict(line.split("  ", 1) for line in captured.out.splitlines())
    assert plan[noisy_hash].startswith("done (ok, noisy)") and plan[steady_hash].startswith("done (ok) ")
    assert "2 cells, 0 to run; 1 done but noisy (--retry-noisy reruns them)" in captured.err
    assert main(["run", str(path), "--out", str(out), "--dry-run", "--retry-noisy", "--retry-failed"]) == 0
    captured = capsys.readouterr()
    plan = dict(line.split("  ", 1) for line in captured.out.splitlines())
    assert plan[noisy_hash].startswith("run (ok, noisy)") and plan[steady_hash].startswith("done (ok) ")
    assert "2 cells, 1 to run" in captured.err

    before = store.modification_times()
    assert main(["run", str(path), "--out", str(out), "--quiet", "--retry-noisy"]) == 0
    assert "ran 1 (1 ok)" in capsys.readouterr().out
    after = store.modification_times()
    assert {h for h in after if after[h] != before[h]} == {noisy_hash}


def test_retry_failed_and_retry_noisy_combine():
    cell = PlannedCell(Cell("linear-attention", 16), "linear-attention", MeasureSettings(), ("time",))
    stored = {status: StoredCell(status, "forward", "{}", noisy) for status, noisy in
              (("ok", False), ("timeout", False), ("oom", False), ("diverged", False))}
    noisy = StoredCell("ok", "forward", "{}", True)
    runs = {(failed, noisy_too): [needs_run(cell, s, failed, noisy_too) for s in (*stored.values(), noisy)]
            for failed in (False, True) for noisy_too in (False, True)}
    assert runs == {(False, False): [False, False, False, False, False],
                    (True, False): [False, True, True, False, False],
                    (False, True): [False, False, False, False, True],
                    (True, True): [False, True, True, False, True]}
    assert needs_run(cell, None, False)


@pytest.mark.parametrize("cpus, load, threads, warns", [
    (2, 1.6, 2, True),  # one whole task running: 1 core free
    (2, 0.6, 2, False),  # a fraction left by a job that just ended is not a busy core
    (2, 2.5, 2, True),  # no core free: at least 1 is offered
    (16, 3.2, 13, False),
    (16, 4.1, 13, True),
    (2, None, 8, False),  # no load average on this OS: nothing to say
    (2, 1.6, None, True),  # unset: torch's default (2)
])
def test_the_busy_machine_warning(monkeypatch, cpus, load, threads, warns):
    monkeypatch.setattr(runner, "cpus_available", lambda: cpus)
    monkeypatch.setattr(runner, "load_average", lambda: load)
    monkeypatch.setattr(runner.torch, "get_num_threads", lambda: 2)  # torch's default here; other tests change it
    warning = busy_machine_warning(threads)
    assert (warning is not None) == warns
    if warns:
        free = max(1, cpus - math.floor(load))
        assert f"threads = {threads or torch.get_num_threads()}" in warning and f"free, {free} ({cpus} CPUs" in warning
        assert f"load average {load:.2f}" in warning and f"threads = {free} or run on an idle machine" in warning
        assert ("torch's default" in warning) == (threads is None)


def test_a_run_left_with_timeouts_or_errors_says_so_last_and_exits_1(faulty_run, capsys):
    path, out, _ = faulty_run
    statuses = Counter(ResultStore(out).statuses().values())
    assert statuses["timeout"] and statuses["error"] and statuses["oom"]
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert "ran 0" in lines[0]
    total = sum(statuses.values())
    assert (f"{statuses['error'] + statuses['timeout']} of {total} cells gave no result "
            f"({statuses['error']} error, {statuses['timeout']} timeout)") in lines[-1]
    assert "--retry-failed" in lines[-1] and "timeout_s" in lines[-1] and "fewer threads" in lines[-1]


def test_oom_skipped_and_diverged_are_results_error_and_timeout_are_not():
    answered = RunSummary(total=4, already_done=0, ran=4, statuses={},
                          suite_statuses={"ok": 1, "oom": 1, "skipped": 1, "diverged": 1})
    assert answered.unfinished == {}
    unanswered = RunSummary(total=4, already_done=0, ran=4, statuses={},
                            suite_statuses={"ok": 1, "timeout": 2, "error": 1})
    assert unanswered.unfinished == {"error": 1, "timeout": 2}


def test_progress_counts_diverged_cells_as_failures():
    stream = io.StringIO()
    progress = Progress(4, stream=stream)
    for status in ("ok", "diverged", "skipped", "oom"):
        progress.finish("cell", status, 0.1)
    counts = [line.split("failures ")[1].split(";")[0] for line in stream.getvalue().splitlines()]
    assert counts == ["0", "1", "1", "2"]
