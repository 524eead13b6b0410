"""Wall-clock time of a callable: warm-up, device synchronisation, median with p20/p80.

The caller builds the inputs outside the timed region and closes over them; work that must
precede every call without being timed (zeroing gradients) goes in `setup`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int  # timed calls the percentiles are taken over (warm-up calls excluded)

    @property
    def spread(self) -> float:
        """p80 / p20: 1 for a steady clock; NaN when p20 is 0 (calls below the clock's resolution). One timed
        call has a spread of 1 by construction: it says nothing about noise."""
        return self.p80_ms / self.p20_ms if self.p20_ms > 0 else math.nan


def time_callable(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    min_total_s: float = 0.5,
    min_repeats: int = 3,
    max_repeats: int = 100,
    device: str | torch.device = "cpu",
    setup: Callable[[], Any] | None = None,
) -> Timing:
    """Time `fn()`: `warmup` untimed calls, then timed calls until both `min_total_s` of timed
    time and `min_repeats` calls are reached, or `max_repeats` calls are made.

    Each call is timed alone, so the percentiles show the spread between calls. On CUDA the time
    is read from events recorded on the current stream around the call, after a synchronisation
    that keeps earlier queued work (and `setup`) out of it; on the CPU from `time.perf_counter`.
    """
    if warmup < 0:
        raise ValueError(f"warmup={warmup} is not allowed; it must be >= 0")
    if min_total_s < 0:
        raise ValueError(f"min_total_s={min_total_s} is not allowed; it must be >= 0")
    if not 1 <= min_repeats <= max_repeats:
        raise ValueError(
            f"min_repeats={min_repeats}, max_repeats={max_repeats} are not allowed; "
            f"they must satisfy 1 <= min_repeats <= max_repeats"
        )
    clock = clock_for(torch.device(device))

    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()

    times_ms: list[float] = []
    total_ms = 0.0
    while len(times_ms) < max_repeats and (len(times_ms) < min_repeats or total_ms < 1000.0 * min_total_s):
        if setup is not None:
            setup()
        elapsed_ms = clock(fn)
        times_ms.append(elapsed_ms)
        total_ms += elapsed_ms

    return timing_of(times_ms)


def time_interleaved(fns: Sequence[Callable[[], Any]], *, rounds: int, device: str | torch.device = "cpu",
                     setup: Callable[[], Any] | None = None) -> list[list[float]]:
    """Each of `fns` timed once per round, in turn, the order reversed every other round so that none always runs
    first: per fn, its `rounds` times in ms. A drift in the machine's speed (another job, the clock) then moves all
    of them alike, and their per-round ratios stay true where times measured apart would not. `setup` runs untimed
    before every call."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds} is not allowed; it must be >= 1")
    clock = clock_for(torch.device(device))
    times: list[list[float]] = [[] for _ in fns]
    for round_index in range(rounds):
        order = range(len(fns)) if round_index % 2 == 0 else reversed(range(len(fns)))
        for index in order:
            if setup is not None:
                setup()
            times[index].append(clock(fns[index]))
    return times


def timing_of(times_ms: Sequence[float]) -> Timing:
    """The median and p20 / p80 of timed calls."""
    p20, median, p80 = np.percentile(times_ms, [20, 50, 80])
    return Timing(median_ms=float(median), p20_ms=float(p20), p80_ms=float(p80), repeats=len(times_ms))


def wall_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """One call's wall-clock in ms, the device synchronised before and after (the host's view, not CUDA events)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000.0 * (time.perf_counter() - start)


def clock_for(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """A function that runs a callable once and returns its wall-clock in ms (CUDA events on a GPU)."""
    if device.type == "cpu":
        return _time_cpu_ms
    if device.type == "cuda":
        return lambda fn: _time_cuda_ms(fn, device)
    raise ValueError(f"device={str(device)!r} is not supported; time on 'cpu' or 'cuda'")


def _time_cpu_ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return 1000.0 * (time.perf_counter() - start)


def _time_cuda_ms(fn: Callable[[], Any], device: torch.device) -> float:
    with torch.cuda.device(device):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
