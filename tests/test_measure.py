"""measure_cell: one row per cell with every measurement, failures as statuses, clean after an OOM,
and the environment each result ran in."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ttt_bench.profile import env as env_module
from ttt_bench.profile.env import environment
from ttt_bench.profile.measure import ROW_COLUMNS, Cell, TimingBudget, measure_cell, tidy_rows
from ttt_bench.profile.memory import nvml_device_info
from ttt_bench.results import NOISY_SPREAD, NOT_AVAILABLE

TINY = dict(d_model=16, n_heads=2)
FAST = TimingBudget(min_total_s=0.0, min_repeats=2, slow_call_s=1.0, slow_min_repeats=2, max_repeats=2)


def test_a_row_holds_every_measurement():
    row = measure_cell(Cell("linear-attention-causal", 40, batch=2, **TINY), FAST)
    assert row["status"] == "ok", row["message"]
    assert set(row) <= set(ROW_COLUMNS)
    assert row["fwd_flops"] == 2 * row["fwd_macs"] and row["fwd_bwd_flops"] == 2 * row["fwd_bwd_macs"]
    assert row["fwd_macs_fvcore"] == row["fwd_macs_flop_counter"] == row["fwd_macs"]
    assert row["fwd_bwd_macs_flop_counter"] == row["fwd_bwd_macs"]
    assert row["uncounted_ops"] == ""
    assert 0 < row["fwd_peak_bytes"] <= row["fwd_bwd_peak_bytes"]
    for name in ("fwd", "fwd_bwd"):
        seconds = row[f"{name}_ms"] / 1000
        assert row[f"{name}_tokens_per_s"] == pytest.approx(2 * 40 / seconds)
        assert row[f"{name}_tflops_per_s"] == pytest.approx(row[f"{name}_flops"] / seconds / 1e12)
        assert row[f"{name}_spread"] == row[f"{name}_p80_ms"] / row[f"{name}_p20_ms"] >= 1
        assert row[f"{name}_noisy"] is (row[f"{name}_spread"] > NOISY_SPREAD)
    for tidy in tidy_rows(row):
        assert tidy["time_spread"] == tidy["time_p80_ms"] / tidy["time_p20_ms"] and isinstance(tidy["noisy"], bool)


def test_causal_attention_reports_dense_and_useful_work():
    row = measure_cell(Cell("attention-sdpa-causal", 64, **TINY), FAST, metrics=("memory", "time"))
    projections = 64 * 16 * 64  # q, k, v, o: N * D * 4D
    dense = 2 * 2 * 64 * 64 * 8  # Q K^T and P V over 2 heads, d = 8
    useful = 2 * 2 * (64 * 65 // 2) * 8
    assert row["fwd_macs"] == projections + dense
    assert row["fwd_useful_macs"] == projections + useful


def test_failures_are_rows_with_a_status():
    bad_dtype = measure_cell(Cell("linear-attention", 8, dtype="fp8", **TINY), FAST)
    assert bad_dtype["status"] == "error" and "fp8" in bad_dtype["message"] and "float32" in bad_dtype["message"]
    skipped = measure_cell(Cell("attention-naive", 8, **TINY), FAST, skip_reason="too big here")
    assert skipped["status"] == "skipped" and skipped["message"] == "too big here"
    assert skipped["fwd_macs"] > 0 and "fwd_ms" not in skipped
    assert all(tidy["noisy"] is None and tidy["time_spread"] is None for tidy in tidy_rows(skipped))


def test_out_of_memory_is_a_status_and_the_next_measurement_is_clean():
    # A fresh process measures the reference; in this one an OOM cell runs first, then the same cell.
    reference_cell = Cell("ttt-mlp", 48, **TINY)
    script = textwrap.dedent(
        """
        import json, torch
        torch.set_num_threads(2)
        from ttt_bench.profile.measure import Cell, QUICK_BUDGET, measure_cell
        row = measure_cell(Cell("ttt-mlp", 48, d_model=16, n_heads=2), QUICK_BUDGET, metrics=("memory", "time"))
        print(json.dumps([row["fwd_peak_bytes"], row["fwd_bwd_peak_bytes"]]))
        """
    )
    fresh = json.loads(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)

    oom = measure_cell(Cell("attention-naive", 512, **TINY), FAST, memory_budget_bytes=2**20)
    after = measure_cell(reference_cell, FAST, metrics=("memory", "time"))

    assert oom["status"] == "oom" and "budget" in oom["message"]
    assert [after["fwd_peak_bytes"], after["fwd_bwd_peak_bytes"]] == fresh


def test_environment_names_versions_devices_and_commit():
    info = environment("cpu")
    for key in ("torch_version", "cuda_version", "driver_version", "gpu_name", "gpu_memory_bytes", "cpu_model",
                "threads", "ttt_bench_version", "git_commit"):
        assert key in info and info[key] not in (None, ""), key
    assert info["threads"] == torch.get_num_threads()
    assert info["git_commit"] == NOT_AVAILABLE or all(c in "0123456789abcdef" for c in info["git_commit"][:40])
    json.dumps(info)  # stored beside results as env.json


def test_machine_load_names_the_cpus_this_process_may_use_and_the_load():
    load = env_module.machine_load()
    assert load["cpus_available"] == len(os.sched_getaffinity(0)) <= os.cpu_count()
    assert isinstance(load["load_average"], float) and load["load_average"] >= 0


def test_machine_load_without_affinity_or_load_average(monkeypatch):
    def no_load_average():
        raise OSError("load average unobtainable")

    monkeypatch.delattr(env_module.os, "sched_getaffinity")
    monkeypatch.setattr(env_module.os, "getloadavg", no_load_average)
    assert env_module.machine_load() == {"cpus_available": os.cpu_count(), "load_average": None}


def test_git_commit_outside_a_checkout_is_not_available(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(env_module.subprocess, "run", no_git)
    assert env_module.git_commit() == NOT_AVAILABLE


def test_nvml_without_a_driver_is_not_available(monkeypatch):
    pynvml = pytest.importorskip("pynvml")

    def no_library():
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    assert nvml_device_info("cuda:0") is None


@pytest.mark.gpu
def test_cuda_cell_measures_allocator_and_device_memory():
    row = measure_cell(Cell("attention-sdpa-causal", 4096, dtype="bfloat16", device="cuda"), FAST)
    assert row["status"] == "ok", row["message"]
    assert row["fwd_bwd_cuda_peak_bytes"] > 0 and row["nvml_used_bytes"] > 0
    assert row["fwd_macs_flop_counter"] == row["fwd_macs"] and row["uncounted_ops"] == ""
    assert math.isfinite(row["fwd_bwd_tflops_per_s"])


@pytest.mark.gpu
def test_cuda_out_of_memory_is_a_status_and_leaves_the_allocator_clean():
    before = torch.cuda.memory_allocated()
    oom = measure_cell(
        Cell("attention-naive", 32768, device="cuda"), FAST, memory_budget_bytes=2**30, metrics=("memory", "time")
    )
    assert oom["status"] == "oom"
    assert torch.cuda.memory_allocated() == before
    first = measure_cell(Cell("linear-attention-causal", 4096, device="cuda"), FAST, metrics=("memory", "time"))
    second = measure_cell(Cell("linear-attention-causal", 4096, device="cuda"), FAST, metrics=("memory", "time"))
    assert first["fwd_bwd_cuda_peak_bytes"] == second["fwd_bwd_cuda_peak_bytes"]
