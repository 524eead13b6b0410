"""time_callable measures what torch's own Timer measures, honours its repeat rules and orders its percentiles.

These check the method, never a speed: tolerances are wide enough for a busy two-core machine.
"""

import math
import statistics
import time

import pytest
import torch
from torch.utils import benchmark

from ttt_bench.profile.timing import Timing, time_callable


def test_cpu_matmul_agrees_with_torch_benchmark_timer_within_10_percent():
    # One thread on both sides (Timer's own default) and interleaved rounds, so a busy neighbour on a
    # shared CI machine slows both timers alike; the medians over rounds are compared.
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(384, 384, generator=generator)  # ~1 ms: the per-call clock reads are noise
    b = torch.randn(384, 384, generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours, theirs = [], []
        timer = benchmark.Timer(stmt="a @ b", globals={"a": a, "b": b}, num_threads=1)
        for _ in range(5):
            ours.append(time_callable(lambda: a @ b, warmup=3, min_total_s=0.1, min_repeats=20).median_ms)
            theirs.append(1000.0 * timer.blocked_autorange(min_run_time=0.1).median)
    finally:
        torch.set_num_threads(threads)

    ratio = statistics.median(ours) / statistics.median(theirs)
    assert 0.9 <= ratio <= 1.1, f"time_callable {ours} ms vs Timer {theirs} ms"


def test_sleep_is_timed_from_below():
    timing = time_callable(lambda: time.sleep(0.005), warmup=0, min_total_s=0.0, min_repeats=5)
    assert 5.0 <= timing.p20_ms <= timing.median_ms <= timing.p80_ms < 100.0


def test_percentiles_are_ordered():
    x = torch.randn(256, 256)
    timing = time_callable(lambda: torch.linalg.qr(x), min_total_s=0.05, min_repeats=10)
    assert isinstance(timing, Timing)
    assert 0.0 < timing.p20_ms <= timing.median_ms <= timing.p80_ms


def test_spread_is_p80_over_p20():
    assert Timing(median_ms=3.0, p20_ms=2.0, p80_ms=5.0, repeats=5).spread == 2.5
    assert Timing(median_ms=4.0, p20_ms=4.0, p80_ms=4.0, repeats=1).spread == 1.0  # one call: 1 by construction
    assert math.isnan(Timing(median_ms=0.0, p20_ms=0.0, p80_ms=0.0, repeats=3).spread)
    timing = time_callable(lambda: time.sleep(0.002), warmup=0, min_total_s=0.0, min_repeats=5)
    assert timing.spread == timing.p80_ms / timing.p20_ms >= 1.0


def test_min_repeats_honoured_when_time_is_already_enough():
    calls = []
    timing = time_callable(lambda: calls.append(1), warmup=2, min_total_s=0.0, min_repeats=7)
    assert timing.repeats == 7
    assert len(calls) == 2 + 7


def test_max_repeats_caps_a_long_min_total():
    timing = time_callable(lambda: None, warmup=0, min_total_s=60.0, min_repeats=1, max_repeats=4)
    assert timing.repeats == 4


def test_min_total_s_is_reached():
    timing = time_callable(lambda: time.sleep(0.01), warmup=0, min_total_s=0.1, min_repeats=1, max_repeats=1000)
    assert timing.repeats >= 10
    assert timing.repeats * timing.median_ms >= 0.5 * 100.0


def test_setup_runs_before_every_call_and_outside_the_timed_region():
    order = []
    timing = time_callable(
        lambda: order.append("call"),
        setup=lambda: (order.append("setup"), time.sleep(0.02)),
        warmup=1,
        min_total_s=0.0,
        min_repeats=3,
    )
    assert order == ["setup", "call"] * 4
    assert timing.p80_ms < 20.0


@pytest.mark.parametrize(
    "settings", [dict(min_repeats=0), dict(min_repeats=5, max_repeats=4), dict(warmup=-1), dict(min_total_s=-1.0)]
)
def test_bad_settings_are_refused(settings):
    with pytest.raises(ValueError):
        time_callable(lambda: None, **settings)


def test_unsupported_device_is_refused():
    with pytest.raises(ValueError, match="device"):
        time_callable(lambda: None, device="meta")


@pytest.mark.gpu
def test_cuda_matmul_agrees_with_torch_benchmark_timer():
    a = torch.randn(2048, 2048, device="cuda")
    b = torch.randn(2048, 2048, device="cuda")

    ours = time_callable(lambda: a @ b, warmup=5, min_total_s=0.2, min_repeats=20, device="cuda")
    theirs = benchmark.Timer(stmt="a @ b", globals={"a": a, "b": b}).blocked_autorange(min_run_time=0.2)

    ratio = ours.median_ms / (1000.0 * theirs.median)
    assert 1 / 3 < ratio < 3
    assert ours.p20_ms <= ours.median_ms <= ours.p80_ms


@pytest.mark.gpu
def test_cuda_time_includes_queued_kernel_work():
    a = torch.randn(4096, 4096, device="cuda")
    one = time_callable(lambda: a @ a, warmup=3, min_total_s=0.0, min_repeats=10, device="cuda")
    four = time_callable(lambda: [a @ a for _ in range(4)], warmup=3, min_total_s=0.0, min_repeats=10, device="cuda")
    assert four.median_ms > 2 * one.median_ms
