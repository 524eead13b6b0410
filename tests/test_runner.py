"""The sweep runner: tidy rows per cell and measurement, crash isolation (an exception, a segfault, a hang,
an out-of-memory cell), resuming after kill -9, --retry-failed, the run lock, progress and --dry-run."""

import signal
import subprocess
import sys
import time

import duckdb
import pandas as pd
import pyarrow.dataset
import pytest
import torch
from checks import write_suite

from ttt_bench import results
from ttt_bench.cli import main
from ttt_bench.results import ResultStore, load_results
from ttt_bench.sweep.parse import load_suite
from ttt_bench.sweep.runner import run_suite

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
    assert "suites:" in out and "quick" in out and "44 cells" in out and "OOM frontier" in out


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
