"""The asv regression benchmarks and their CI gate: the suite grid as asv parameters, the benchmark classes
against `ttt-bench run`'s own measurements, asv's result files read as rows, and the gate's verdicts."""

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from checks import write_suite

from ttt_bench import layers
from ttt_bench.cli import main
from ttt_bench.errors import ConfigError
from ttt_bench.profile.measure import Cell, measure_cell
from ttt_bench.regression.asv_results import find_result_file, load_asv_results
from ttt_bench.regression.benchmark_grid import benchmark_grid
from ttt_bench.regression.gate import TIME_FACTOR, gate_thresholds, refresh_baseline, run_gate
from ttt_bench.sweep.schema import SuiteError

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ---- the grid ----------------------------------------------------------------------------------------------


def test_the_regression_grid_enrols_every_registered_layer():
    grid = benchmark_grid(ROOT / "suites/regression.toml")
    assert grid.param_names == ("variant", "seq_len")
    # Every registered layer, and the checkpointed TTT-MLP scan under its own label.
    assert list(grid.params[0]) == [*layers.names(), "ttt-mlp-checkpoint4"] and grid.params[1] == (256, 1024)
    assert grid.cell("ttt-mlp", 1024).cell.layer == "ttt-mlp"
    assert grid.cell("ttt-mlp-checkpoint4", 1024).cell.overrides == {"checkpoint_group": 4}
    with pytest.raises(NotImplementedError, match=r"seq_len=1024: not in suite 'regression' \(its \[\[only\]\]"):
        grid.cell("ttt-mlp-primal", 1024)
    training = benchmark_grid(ROOT / "suites/regression-accuracy.toml")
    assert training.param_names == ("task", "variant", "seq_len") and list(training.params[1]) == layers.names()
    with pytest.raises(NotImplementedError, match="excluded by suite 'regression-accuracy': trains the same model"):
        training.cell("digits", "ttt-linear-primal", 64)
    gpu = benchmark_grid(ROOT / "suites/regression-gpu.toml")
    assert list(gpu.params[0]) == layers.names() and gpu.cell("ttt-mlp", 16384).cell.device == "cuda"


def test_a_grid_varying_another_axis_is_refused(tmp_path):
    path = write_suite(tmp_path, """
        layers = ["ttt-linear"]
        [grid]
        seq_len = [64]
        dtype = ["float32", "bfloat16"]
        """)
    with pytest.raises(SuiteError, match=r"varies only the layers, tasks and seq_len; it also varies grid.dtype = "
                                         r"\['float32', 'bfloat16'\]"):
        benchmark_grid(path)


# ---- the benchmark classes ---------------------------------------------------------------------------------


@pytest.fixture
def benchmarks(tmp_path, monkeypatch):
    """suites/benchmarks.py over a two-layer grid and a three-step training run."""
    monkeypatch.setenv("TTT_BENCH_ASV_SUITE", str(write_suite(tmp_path, """
        layers = ["ttt-linear", "attention-naive-causal"]
        [grid]
        seq_len = [64, 128]
        d_model = 32
        n_heads = 2
        [measure]
        threads = 1
        [[exclude]]
        layer = "attention-naive*"
        seq_len = { gt = 64 }
        reason = "the scores do not fit"
        """, "profile.toml")))
    monkeypatch.setenv("TTT_BENCH_ASV_ACCURACY_SUITE", str(write_suite(tmp_path, """
        metrics = ["accuracy"]
        layers = ["linear-attention"]
        tasks = ["digits"]
        [grid]
        seq_len = 16
        batch = 16
        d_model = 16
        n_heads = 2
        [measure]
        threads = 1
        [model]
        n_layers = 1
        [train]
        steps = 3
        warmup_steps = 1
        eval_examples = 64
        """, "accuracy.toml")))
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("suites.benchmarks", None)
    module = importlib.import_module("suites.benchmarks")
    yield module
    sys.modules.pop("suites.benchmarks", None)


def test_the_layer_benchmarks_measure_what_ttt_bench_run_measures(benchmarks):
    bench = benchmarks.Layer()
    bench.setup("ttt-linear", 128)
    row = measure_cell(Cell("ttt-linear", 128, d_model=32, n_heads=2), metrics=("flops", "memory"))
    assert bench.track_flops_forward() == 2 * row["fwd_macs_flop_counter"]
    assert bench.track_flops_forward_backward() == 2 * row["fwd_bwd_macs_flop_counter"]
    assert bench.track_peak_bytes_forward() == row["fwd_peak_bytes"]
    assert bench.track_peak_bytes_forward_backward() == row["fwd_bwd_peak_bytes"]
    bench.time_forward_backward()
    assert bench.work.x.grad is not None  # the timed call did run backward
    assert "2 per multiply-add" in benchmarks.Layer.track_flops_forward.unit
    with pytest.raises(NotImplementedError, match="excluded by suite .*: the scores do not fit"):
        bench.setup("attention-naive-causal", 128)
    with pytest.raises(NotImplementedError, match="the CUDA peak needs a CUDA device"):
        benchmarks.CudaMemory().setup("ttt-linear", 64)


def test_the_training_benchmark_tracks_a_repeatable_run(benchmarks):
    bench = benchmarks.Training()
    rows = bench.setup_cache()
    key = ("digits", "linear-attention", 16)
    bench.setup(rows, *key)
    accuracy, loss = bench.track_accuracy(rows, *key), bench.track_eval_loss(rows, *key)
    assert 0 <= accuracy <= 1 and math.isfinite(loss) and loss > 0
    again = bench.setup_cache()
    assert (again[key]["accuracy"], again[key]["eval_loss_nats"]) == (accuracy, loss)
    rows[key] = {**rows[key], "status": "diverged", "message": "the training loss became nan at step 2"}
    with pytest.raises(RuntimeError, match="diverged: the training loss became nan"):
        bench.setup(rows, *key)


def test_asv_finds_the_benchmarks():
    result = subprocess.run(["asv", "check", "--python=same"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No problems found" in result.stdout


# ---- asv result files and the gate -------------------------------------------------------------------------

VARIANTS = ["'ttt-linear'", "'ttt-mlp'"]
LENGTHS = ["256", "1024"]


def asv_result(tmp_path, name="run", cpu="test cpu", time_s=None, flops=None, accuracy=None, **overrides):
    """An asv 0.6 result file (its real layout) for a 2 x 2 layer grid and one training cell."""
    columns = ["result", "params", "version", "started_at", "duration"]

    def entry(values, params):
        return [values, params, "0" * 64, 0, 1.0]

    grid = [VARIANTS, LENGTHS]
    results = {
        "benchmarks.Layer.time_forward": entry(time_s or [0.001, 0.004, 0.002, float("nan")], grid),
        "benchmarks.Layer.track_flops_forward": entry(flops or [100, 400, 200, float("nan")], grid),
        "benchmarks.CudaMemory.track_cuda_peak_bytes_forward": entry([float("nan")] * 4, grid),
        "benchmarks.Training.track_accuracy": entry(accuracy or [0.5], [["'digits'"], ["'ttt-linear'"], ["64"]]),
        "benchmarks.Other.time_unrelated": entry([1.0], []),
    }
    for benchmark, values in overrides.items():
        results[f"benchmarks.Layer.{benchmark}"][0] = values
    data = {"commit_hash": COMMIT, "env_name": "existing", "date": 0, "params": {"cpu": cpu, "machine": "m"},
            "python": "3.11", "requirements": {}, "env_vars": {}, "result_columns": columns, "results": results,
            "durations": {}, "version": 2}
    path = tmp_path / "results" / name / f"{COMMIT[:8]}-existing-py.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_an_asv_result_file_becomes_rows_with_statuses(tmp_path):
    rows = load_asv_results(asv_result(tmp_path, time_forward=[0.001, None, 0.002, float("nan")]))
    time = rows[rows.benchmark == "benchmarks.Layer.time_forward"].set_index(["variant", "seq_len"])
    assert time.loc[("ttt-linear", 256), "time_ms"] == pytest.approx(1.0)  # seconds -> ms
    assert time.status.to_dict() == {("ttt-linear", 256): "ok", ("ttt-linear", 1024): "error",
                                     ("ttt-mlp", 256): "ok", ("ttt-mlp", 1024): "skipped"}
    assert "asv benchmark failed" in time.loc[("ttt-linear", 1024), "message"]
    assert not rows.benchmark.str.contains("CudaMemory|unrelated").any()  # skipped everywhere / not ours
    training = rows[rows.measurement == "train"].iloc[0]
    assert (training.task, training.variant, training.seq_len, training.accuracy) == ("digits", "ttt-linear", 64, 0.5)
    assert find_result_file(tmp_path / "results", COMMIT) == asv_result(tmp_path)


def test_result_files_that_cannot_be_read_are_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="bad.json: not an asv result file"):
        load_asv_results(bad)
    with pytest.raises(ConfigError, match="no asv result for commit 01234567; results are saved only with"):
        find_result_file(tmp_path, COMMIT)


def gate(tmp_path, capsys, **current):
    """The gate's exit status and document: the baseline as asv_result writes it, this run with `current`."""
    baseline = tmp_path / "baseline.json"
    asv_result(tmp_path, "baseline").replace(baseline)
    asv_result(tmp_path, "current", **current)
    return run_gate(baseline, tmp_path / "results", COMMIT), capsys.readouterr().out


def test_the_gate_passes_an_unchanged_run(tmp_path, capsys):
    code, out = gate(tmp_path, capsys)
    assert code == 0 and "**0 regressions, 0 improvements" in out


def test_one_extra_flop_fails_the_gate_with_a_table_of_what_moved(tmp_path, capsys):
    code, out = gate(tmp_path, capsys, track_flops_forward=[100, 401, 200, float("nan")])
    assert code == 1 and "**1 regression," in out
    assert "2 rows unchanged, not shown:" in out and "Every row: N (tokens) 1024; measurement forward" in out
    assert "| ttt-linear | **400** | **401** | **1.002** | **regression** |" in out


def test_timings_count_only_beyond_the_wide_factor_on_the_same_cpu(tmp_path, capsys):
    slower = 0.001 * TIME_FACTOR * 0.99
    assert gate(tmp_path, capsys, time_forward=[slower, 0.004, 0.002, float("nan")])[0] == 0
    code, out = gate(tmp_path, capsys, time_forward=[0.001 * TIME_FACTOR * 1.01, 0.004, 0.002, float("nan")])
    assert code == 1 and "| ttt-linear | **1** | **2.525** | **2.525** | **regression** |" in out
    assert gate_thresholds(False)["time_ms"] == math.inf


def test_timings_on_another_cpu_are_shown_not_gated(tmp_path, capsys):
    code, out = gate(tmp_path, capsys, cpu="another cpu", time_forward=[0.01, 0.004, 0.002, float("nan")])
    assert code == 0
    assert "Timings are shown but not gated: the baseline ran on test cpu, this run on another cpu." in out


def test_a_benchmark_that_stops_working_fails_the_gate(tmp_path, capsys):
    code, out = gate(tmp_path, capsys, time_forward=[0.001, 0.004, None, float("nan")])
    assert code == 1
    assert "| ttt-mlp | ok | error | the asv benchmark failed (asv run --show-stderr prints why) | **regression** |" \
        in out


def test_accuracy_moves_within_its_stated_tolerance_only(tmp_path, capsys):
    assert gate_thresholds(same_cpu=True)["accuracy"] == 0.01
    code, out = gate(tmp_path, capsys, accuracy=[0.5 * 0.995])
    assert code == 0 and "| ttt-linear | 0.5 | 0.4975 | 0.995 |  |" in out  # shown: it moved
    assert gate(tmp_path, capsys, accuracy=[0.5 * 0.98])[0] == 1


def test_the_baseline_is_refreshed_deliberately_and_never_from_a_failed_run(tmp_path, capsys):
    baseline = tmp_path / "suites" / "baseline.json"
    asv_result(tmp_path, "current", time_forward=[0.001, None, 0.002, float("nan")])
    with pytest.raises(ConfigError, match=r"1 benchmark values failed \(benchmarks.Layer.time_forward ttt-linear "
                                          r"N=1024\); fix them before they become the baseline"):
        refresh_baseline(baseline, tmp_path / "results", COMMIT)
    assert not baseline.exists()
    good = asv_result(tmp_path, "current")
    assert refresh_baseline(baseline, tmp_path / "results", COMMIT) == 0
    assert baseline.read_bytes() == good.read_bytes()


def test_the_gate_command_line(tmp_path, capsys):
    asv_result(tmp_path, "current")
    results, baseline = str(tmp_path / "results"), str(tmp_path / "baseline.json")
    assert main(["gate", "--results", results, "--baseline", baseline, "--commit", COMMIT]) == 2
    assert "no baseline; make one with `ttt-bench gate --refresh`" in capsys.readouterr().err
    assert main(["gate", "--refresh", "--results", results, "--baseline", baseline, "--commit", COMMIT]) == 0
    assert main(["gate", "--results", results, "--baseline", baseline, "--commit", COMMIT, "--out",
                 str(tmp_path / "gate.md")]) == 0
    assert "# Comparison: baseline" in (tmp_path / "gate.md").read_text()
    assert main(["gate", "--results", results, "--baseline", baseline, "--commit", COMMIT, "--time-factor", "1"]) == 2
    assert "--time-factor 1 is not allowed; it must be > 1" in capsys.readouterr().err


def test_the_committed_baseline_covers_the_regression_grid():
    # The grid as asv sees it: in a fresh interpreter, without the layers the tests register.
    script = ("import json; from ttt_bench.regression.benchmark_grid import benchmark_grid; "
              "g = benchmark_grid('suites/regression.toml'); "
              "print(json.dumps([k for k, c in g.cells.items() if c.skip_reason is None]))")
    ran = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    rows = load_asv_results(ROOT / "suites/baseline/cpu.json")
    ok = rows[(rows.status == "ok") & (rows.measurement != "train")]
    assert set(zip(ok.variant, ok.seq_len)) == {tuple(key) for key in json.loads(ran.stdout)}
    assert (rows.status != "error").all()
