"""Measurements of one layer on one input: peak tracked memory and wall-clock time."""

from ttt_bench.profile.memory import LiveBytesTracker, measure_peak_bytes
from ttt_bench.profile.timing import Timing, time_callable

__all__ = ["LiveBytesTracker", "Timing", "measure_peak_bytes", "time_callable"]
