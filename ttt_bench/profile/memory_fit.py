"""Peak memory as a polynomial in the sequence length, peak(N) = c0 + c1 N + c2 N^2 bytes, fitted to peaks
measured at a few small N: it predicts the largest N that fits any budget (say an 80 GB card). The out-of-memory
search (ttt_bench.sweep.oom) and the report's frontier table both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LINE_TOLERANCE = 0.02  # relative; see fit_memory


@dataclass(frozen=True)
class MemoryFit:
    """peak(N) = c0 + c1 N + c2 N^2 bytes, fitted to peaks measured at a few N."""

    coefficients: tuple[float, float, float]
    seq_lens: tuple[int, ...]

    def predict_bytes(self, seq_len: float) -> float:
        c0, c1, c2 = self.coefficients
        return c0 + c1 * seq_len + c2 * seq_len**2

    def max_seq_len(self, budget_bytes: float) -> float:
        """The largest N with predict_bytes(N) <= budget (inf when memory does not grow with N)."""
        c0, c1, c2 = self.coefficients
        room = budget_bytes - c0
        if room < 0:
            return 0.0
        if c2 > 0:
            return (-c1 + math.sqrt(c1 * c1 + 4 * c2 * room)) / (2 * c2)
        return room / c1 if c1 > 0 else math.inf


def fit_memory(seq_lens: list[int], peak_bytes: list[float]) -> MemoryFit | None:
    """A straight line in N, or a quadratic where the line misses a point by more than LINE_TOLERANCE;
    least squares on relative error (each point weighted by 1 / its peak), so the small N whose peaks
    carry fixed overheads do not decide the slope. None with fewer than two distinct lengths.

    A quadratic fitted to memory that is linear picks up a tiny N^2 term from small-N overheads, and at the
    frontier (N ten or a hundred times larger) that term dominates; hence the line unless it fails.
    """
    if len(set(seq_lens)) < 2:
        return None
    n = np.asarray(seq_lens, dtype=float)
    y = np.asarray(peak_bytes, dtype=float)
    polyfit = np.polynomial.polynomial.polyfit
    coefficients = polyfit(n, y, 1, w=1 / y)
    line_misses = np.max(np.abs(np.polynomial.polynomial.polyval(n, coefficients) / y - 1)) > LINE_TOLERANCE
    if line_misses and len(set(seq_lens)) >= 3:
        coefficients = polyfit(n, y, 2, w=1 / y)
    padded = tuple(float(c) for c in coefficients) + (0.0,) * (3 - len(coefficients))
    return MemoryFit(padded, tuple(int(s) for s in seq_lens))
