"""Measurements of one layer on one input: FLOPs (three counts), memory, wall-clock, environment."""

from ttt_bench.profile.env import environment
from ttt_bench.profile.flops import OpCount, count_with_flop_counter, count_with_fvcore
from ttt_bench.profile.measure import Cell, TimingBudget, measure_cell
from ttt_bench.profile.memory import LiveBytesTracker, measure_cuda_peak_bytes, measure_peak_bytes, nvml_device_info
from ttt_bench.profile.timing import Timing, time_callable

__all__ = [
    "Cell", "LiveBytesTracker", "OpCount", "Timing", "TimingBudget", "count_with_flop_counter", "count_with_fvcore",
    "environment", "measure_cell", "measure_cuda_peak_bytes", "measure_peak_bytes", "nvml_device_info",
    "time_callable",
]
