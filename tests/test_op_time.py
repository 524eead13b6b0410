"""The operator profile of a call (metric op_time): self times split by the FLOP policy's matrix products, the
operators counted, and measure_cell's columns consistent on a tiny cell of every pass."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch

from ttt_bench.profile.measure import Cell, TimingBudget, measure_cell, tidy_rows
from ttt_bench.profile.op_time import (
    MAX_PROFILED_CALLS,
    device_times,
    host_spans,
    is_matmul,
    is_operator,
    profile_op_time,
    self_times,
)

CPU = torch.device("cpu")
FAST = TimingBudget(min_total_s=0.0, min_repeats=2, slow_call_s=1.0, slow_min_repeats=2, max_repeats=2)
ALL_PASSES = ("fwd_bwd", "fwd", "prefill", "decode")


def test_an_elementwise_call_is_one_operator_and_no_matrix_product():
    x = torch.randn(512, 512)
    split = profile_op_time(lambda: torch.exp(x), device=CPU)
    assert split.ops == 1 and split.matmul_ms == 0 and split.matmul_share == 0
    assert 0 < split.other_ms <= split.profiled_ms
    assert 1 <= split.calls <= MAX_PROFILED_CALLS


def test_a_matrix_product_is_counted_as_one_and_its_nested_operators_as_the_rest():
    a = torch.randn(384, 384)
    split = profile_op_time(lambda: torch.mm(a, a), device=CPU, call_ms=1000.0)  # a slow call: profiled once
    assert split.calls == 1
    assert split.ops == 4  # aten::mm and the three aten::resolve_conj it calls
    assert split.matmul_ms > 0 and split.other_ms >= 0
    assert split.matmul_ms + split.other_ms <= split.profiled_ms
    assert split.matmul_share > 0.5  # the product dwarfs its conjugation checks


def test_operators_are_the_dispatchers_not_the_ranges_around_them():
    assert is_operator("aten::mm") and is_operator("mylib::fused_step")
    for name in ("autograd::engine::evaluate_function: MmBackward0", "MmBackward0", "LinearLearnerScan",
                 "profiler::_record_function_enter_new"):
        assert not is_operator(name), name
    assert is_matmul("aten::bmm") and is_matmul("aten::_scaled_dot_product_flash_attention_for_cpu")
    assert not is_matmul("aten::mul") and not is_matmul("mylib::mm")


class _SlowPython(torch.autograd.Function):
    """A custom Function whose forward spends its time in Python, not in operators."""

    @staticmethod
    def forward(ctx, x):
        time.sleep(0.03)
        return x.exp()

    @staticmethod
    def backward(ctx, grad):
        return grad


def test_python_inside_a_custom_function_is_outside_any_operator():
    x = torch.randn(8)  # too small to be split across threads: a busy core cannot stall it
    split = profile_op_time(lambda: _SlowPython.apply(x), device=CPU)
    assert split.ops >= 1 and split.matmul_ms == 0
    assert split.other_ms < 0.3 * split.profiled_ms  # the exp; the 30 ms of sleep are the rest


def test_self_times_agree_with_torch_key_averages_on_the_same_trace():
    layer = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.LayerNorm(256))
    x = torch.randn(8, 64, requires_grad=True)
    with torch.profiler.profile() as profiler:
        layer(x).square().sum().backward()
    ours = self_times(host_spans(profiler.profiler.kineto_results.events()))
    theirs = {entry.key: entry.self_cpu_time_total for entry in profiler.key_averages()}  # microseconds
    for name, self_us in theirs.items():
        assert ours.get(name, 0) / 1000 == pytest.approx(self_us, abs=0.01), name


def test_every_pass_of_a_cell_gets_a_consistent_split():
    row = measure_cell(Cell("ttt-linear", 40, d_model=16, n_heads=2), FAST, metrics=("time", "op_time"),
                       passes=ALL_PASSES)
    assert row["status"] == "ok", row["message"]
    tidy = {r["measurement"]: r for r in tidy_rows(row, ALL_PASSES)}
    for measurement, r in tidy.items():
        assert r["profiled_time_ms"] > 0 and r["matmul_time_ms"] > 0 and r["other_time_ms"] > 0, measurement
        assert r["matmul_time_ms"] + r["other_time_ms"] <= r["profiled_time_ms"], measurement
        assert 0 < r["matmul_time_share"] < 1, measurement
        assert r["matmul_time_share"] == pytest.approx(r["matmul_time_ms"] / r["profiled_time_ms"])
        assert r["ops_per_call"] >= 1, measurement
    # Every call of a training pass launches the same operators: a whole count, and backward adds to forward's.
    for measurement in ("forward", "forward_backward"):
        assert float(tidy[measurement]["ops_per_call"]).is_integer()
    assert tidy["forward_backward"]["ops_per_call"] > tidy["forward"]["ops_per_call"]


def test_without_timings_the_profile_warms_the_call_up_itself():
    row = measure_cell(Cell("attention-sdpa-causal", 64, d_model=16, n_heads=2), FAST, metrics=("op_time",))
    assert row["status"] == "ok" and "fwd_ms" not in row
    assert 0 < row["fwd_matmul_time_share"] < 1 and row["fwd_bwd_ops_per_call"] > row["fwd_ops_per_call"]


@dataclass
class _Event:
    """The fields of a kineto event that device_times reads."""

    _name: str
    _device: torch.autograd.DeviceType
    _activity: str
    _correlation: int
    _linked: int
    _duration: int = 0

    def name(self):
        return self._name

    def device_type(self):
        return self._device

    def activity_type(self):
        return self._activity

    def correlation_id(self):
        return self._correlation

    def linked_correlation_id(self):
        return self._linked

    def duration_ns(self):
        return self._duration


def test_device_time_goes_to_the_operator_that_launched_it_once():
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    events = [_Event("aten::mm", cpu, "cpu_op", 7, 0), _Event("aten::add", cpu, "cpu_op", 8, 0),
              _Event("cudaLaunchKernel", cpu, "cuda_runtime", 9, 7),
              _Event("gemm_kernel", cuda, "kernel", 10, 7, 900), _Event("add_kernel", cuda, "kernel", 11, 8, 50),
              _Event("Memcpy HtoD", cuda, "gpu_memcpy", 12, 0, 30),
              _Event("my_range", cuda, "gpu_user_annotation", 13, 7, 950)]  # mirrors host work: not counted
    assert device_times(events) == {"aten::mm": 900, "aten::add": 50, "(not linked to an operator)": 30}
