"""Where a call's time goes: the call run under torch.profiler, each operator's self time (its own, its nested
operators' taken out) summed into matrix products, as op_policy.MATMUL_OPS names them, and every other operator,
beside the wall-clock of the profiled call and the number of operators it launched.

On the CPU a self time is the operator's wall-clock on its thread less its children's; the wall-clock less both
sums is the time outside any operator: the Python between operators, the autograd engine's work around each backward
node and a hand-written backward's Python. On CUDA the time is the device's: the kernels, copies and sets each
operator launched, by the innermost operator that launched them; the wall-clock less both sums is then the time the
device waited for the host.

The profiler adds its own cost to every operator, so a call of many small operators is inflated most: read the
shares (matmul_ms / profiled_ms), not the profiled milliseconds, and the unprofiled time for the speed.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ttt_bench.profile.op_policy import MATMUL_OPS, op_name
from ttt_bench.profile.timing import wall_ms

# Profiled calls of one pass add up to at least this much wall-clock (a short call is profiled several times, so
# the clock's resolution and one call's hiccup weigh less), and at most this many calls are made.
MIN_PROFILED_S = 0.05
MAX_PROFILED_CALLS = 20
# Events the profiler records for its own bookkeeping, not work of the call (torch's tables leave them out too).
_BOOKKEEPING = frozenset({
    "[memory]", "[OutOfMemory]", "profiler::_record_function_enter", "profiler::_record_function_enter_new",
    "profiler::_record_function_exit", "aten::is_leaf", "aten::output_nr", "aten::_version",
})


_DEVICE_WORK = ("kernel", "gpu_memcpy", "gpu_memset")  # kineto's activity types of work on a device


@dataclass(frozen=True)
class OpTime:
    """Per call of a pass, under the profiler."""

    profiled_ms: float  # wall-clock of one call
    matmul_ms: float  # self time of the matrix-product operators (CUDA: their kernels' time)
    other_ms: float  # self time of every other operator (CUDA: the rest of the device's time)
    ops: float  # operators launched (is_operator; nested calls included: each goes through the dispatcher)
    calls: int  # profiled calls the figures are averaged over

    @property
    def matmul_share(self) -> float:
        return self.matmul_ms / self.profiled_ms if self.profiled_ms > 0 else math.nan

    def columns(self, prefix: str) -> dict[str, object]:
        return {f"{prefix}_profiled_time_ms": self.profiled_ms, f"{prefix}_matmul_time_ms": self.matmul_ms,
                f"{prefix}_other_time_ms": self.other_ms, f"{prefix}_matmul_time_share": self.matmul_share,
                f"{prefix}_ops_per_call": self.ops}


def profile_op_time(fn: Callable[[], Any], *, device: torch.device, per_call: int = 1,
                    setup: Callable[[], Any] | None = None, call_ms: float | None = None) -> OpTime:
    """`fn()` under torch.profiler, called often enough for MIN_PROFILED_S of wall-clock (judged from `call_ms`, the
    call's unprofiled time where the caller has it, else from one untimed call, which also warms the call up); each
    call does `per_call` units of work (decode: steps), and the result is per unit. `setup` runs before each call,
    inside the profiled region but outside the timed one: it must launch no operator (dropping gradients does not).
    The CUDA path (device time by launching operator) has not been run on a GPU yet: none was lent to this work."""
    if call_ms is None:
        if setup is not None:
            setup()
        call_ms = wall_ms(fn, device)
    calls = max(1, min(MAX_PROFILED_CALLS, math.ceil(1000.0 * MIN_PROFILED_S / max(call_ms, 1e-3))))
    # Kineto announces every start and stop on stderr at its default level, once per pass of every cell; level 6
    # is above all of its levels. It is read when the profiler first starts, so a user's own setting wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiled_ms = 0.0
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(calls):
            if setup is not None:
                setup()
            profiled_ms += wall_ms(fn, device)
    events = profiler.profiler.kineto_results.events()
    spans = host_spans(events)
    if device.type == "cuda":  # all device time, by the operator that launched it
        times = device_times(events)
        matmul_ns = sum(ns for name, ns in times.items() if is_matmul(name))
        other_ns = sum(times.values()) - matmul_ns
    else:  # the operators' own time; the self time of autograd nodes and user ranges is overhead around them
        times = self_times(spans)
        matmul_ns = sum(ns for name, ns in times.items() if is_matmul(name))
        other_ns = sum(ns for name, ns in times.items() if is_operator(name)) - matmul_ns
    ops = sum(1 for *_, name in spans if is_operator(name))
    units = calls * per_call
    return OpTime(profiled_ms=profiled_ms / units, matmul_ms=matmul_ns / 1e6 / units, other_ms=other_ns / 1e6 / units,
                  ops=ops / units, calls=calls)


def is_operator(name: str) -> bool:
    """An operator of the dispatcher (`aten::mm`, a library's `mylib::op`), not a range the profiler records around
    other work: the autograd engine's (`autograd::engine::evaluate_function: MmBackward0`), a backward node's
    (`MmBackward0`) or a custom autograd Function's (its name alone), whose self time is Python and bookkeeping."""
    namespace, separator, _ = name.partition("::")
    return bool(separator) and namespace not in ("autograd", "profiler")


def is_matmul(name: str) -> bool:
    """An ATen operator that op_policy counts as a matrix product."""
    return name.startswith("aten::") and op_name(name) in MATMUL_OPS


def host_spans(events) -> list[tuple[int, int, int, str]]:
    """(thread, start ns, end ns, name) of each operator or range the call ran on a CPU thread: not an asynchronous
    one (nor one that ends on another thread: torch's own tables treat those as asynchronous too), not a CUDA
    runtime call (those are linked to a kernel), not the profiler's bookkeeping. One pass, each event's fields read
    once: a token-by-token loop records over a million events."""
    cpu = torch.autograd.DeviceType.CPU
    spans = []
    for event in events:
        if event.device_type() != cpu or event.is_async() or event.linked_correlation_id() != 0:
            continue
        thread, name = event.start_thread_id(), event.name()
        if thread == event.end_thread_id() and name not in _BOOKKEEPING:
            spans.append((thread, event.start_ns(), event.end_ns(), name))
    return spans


def self_times(spans: list[tuple[int, int, int, str]]) -> dict[str, int]:
    """Name -> summed self time (ns) of `spans` (host_spans): each span's duration less its children's, the children
    found by nesting in time on the same thread, as torch's own key_averages finds them."""
    by_thread: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
    for thread, start, end, name in spans:
        by_thread[thread].append((start, end, name))
    totals: dict[str, int] = defaultdict(int)
    for thread_spans in by_thread.values():
        thread_spans.sort(key=lambda span: (span[0], -span[1]))  # a parent before the children that start with it
        open_spans: list[list] = []  # [end, name, duration, children's duration], innermost last
        for start, end, name in thread_spans:
            while open_spans and open_spans[-1][0] <= start:
                _, closed, duration, children = open_spans.pop()
                totals[closed] += duration - children
            if open_spans:
                open_spans[-1][3] += end - start
            open_spans.append([end, name, end - start, 0])
        for _, closed, duration, children in open_spans:
            totals[closed] += duration - children
    return dict(totals)


def device_times(events) -> dict[str, int]:
    """Name of the launching operator -> summed time (ns) of the device work it launched: each kernel, copy and
    set on the device is linked to the innermost operator that was running when it was launched."""
    cpu = torch.autograd.DeviceType.CPU
    names = {event.correlation_id(): event.name() for event in events
             if event.device_type() == cpu and event.linked_correlation_id() == 0}
    totals: dict[str, int] = defaultdict(int)
    for event in events:
        # The device's work, not the annotations that mirror host ranges on its timeline (they would count it twice).
        if event.device_type() != cpu and event.activity_type() in _DEVICE_WORK:
            totals[names.get(event.linked_correlation_id(), "(not linked to an operator)")] += event.duration_ns()
    return dict(totals)
