"""Progress of a sweep on stderr: the current cell, done / total, failures (oom, error, timeout, diverged) and
an ETA.

On a terminal it is one tqdm bar; elsewhere (CI logs, files) one line per finished cell.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from tqdm import tqdm

from ttt_bench.results import FAILED_STATUSES


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.failures = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._started = time.perf_counter()
        self._lock = threading.Lock()
        self._bar = None
        if enabled and self.stream.isatty():
            self._bar = tqdm(total=total, file=self.stream, unit="cell", dynamic_ncols=True)

    def start(self, cell: str) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.set_description_str(cell, refresh=False)
                self._bar.set_postfix_str(f"failures {self.failures}")

    def finish(self, cell: str, status: str, seconds: float) -> None:
        with self._lock:
            self.done += 1
            self.failures += status in FAILED_STATUSES
            if self._bar is not None:
                self._bar.set_postfix_str(f"failures {self.failures}", refresh=False)
                self._bar.update(1)
            elif self.enabled:
                print(f"[{self.done}/{self.total}] {cell}: {status} ({seconds:.1f} s); failures {self.failures}; "
                      f"ETA {format_duration(self.eta_s())}", file=self.stream, flush=True)

    def eta_s(self) -> float:
        """Remaining cells at the mean time per finished cell so far."""
        if self.done == 0:
            return float("nan")
        return (time.perf_counter() - self._started) / self.done * (self.total - self.done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def format_duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing finished yet
        return "unknown"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
