"""Peak memory as a polynomial in the sequence length, fitted to peaks measured at a few N, and the largest N it
predicts for a budget (say an 80 GiB card). The out-of-memory search (ttt_bench.sweep.oom) and the report's
frontier tables (ttt_bench.report.frontier) both use it.

The degree is the layer's own, LayerCost.memory_order: 2 where it materialises N x N scores, else 1. The fit is
the whole polynomial up to that degree, peak(N) = c0 + c1 N (+ c2 N^2) bytes. The tracked bytes live at one
moment of a pass are sums of tensor sizes, each a product of the dimensions, so they are such a polynomial, and
so is the peak over the N where one moment holds it (the search fits over the upper half of the N that fit for
that reason). A quadratic layer also holds activations linear in N (projections, outputs), which at the N a
small budget allows are no small share (7.5% of naive attention's peak at N = 1024, D = 256): c0 + c2 N^2
alone would push them into c2 and c0.

A fit predicts nothing, and its `note` says why, where the points do not support it:
- fewer than POINTS_PER_COEFFICIENT distinct lengths per coefficient (6 for a line, 9 for a quadratic): with as
  many points as coefficients any curve passes through them, and nothing is left to check it;
- a negative intercept c0 larger than FIT_TOLERANCE of the smallest peak: memory below zero at N = 0 by more
  than the fit resolves says the points are not this polynomial (a line through quadratic memory, say). A
  smaller one is real and harmless: a layer may hold a tensor of N - C tokens (states between chunks);
- a negative leading coefficient: memory that would shrink as N grows;
- a point the polynomial misses by more than FIT_TOLERANCE.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from ttt_bench import layers
from ttt_bench.results import MiB

POINTS_PER_COEFFICIENT = 3
FIT_TOLERANCE = 0.02  # relative: the most the polynomial may miss a point it rests on
ROUND_OFF = 1e-9  # relative to the largest peak: a term this small at the largest N is zero, not negative
CARD_BUDGETS_GIB = (80.0, 141.0)  # an A100 / H100 80 GB and an H200: `oom` predicts these, and every report
COEFFICIENT_UNITS = ("bytes", "bytes per token", "bytes per token^2")  # of c0, c1, c2
COEFFICIENT_COLUMNS = ("fit_bytes", "fit_bytes_per_token", "fit_bytes_per_token_sq")  # c0, c1, c2 in a table row


def points_needed(order: int) -> int:
    """Distinct lengths a fit of this degree needs: POINTS_PER_COEFFICIENT per coefficient c0 ... c_order."""
    return POINTS_PER_COEFFICIENT * (order + 1)


def formula(order: int) -> str:
    return " + ".join(["c0", "c1 N", *(f"c{i} N^{i}" for i in range(2, order + 1))])


@dataclass(frozen=True)
class MemoryFit:
    """peak(N) = c0 + c1 N (+ c2 N^2) bytes, fitted to `peak_bytes` measured at `seq_lens`; or, with a `note`,
    why it predicts nothing (the coefficients are kept where they were fitted, to show what was refused)."""

    order: int | None  # the layer's LayerCost.memory_order, the fit's degree; None where it is not known
    seq_lens: tuple[int, ...]
    peak_bytes: tuple[float, ...]
    coefficients: tuple[float, ...] = ()  # c0 ... c_order (bytes per token^i); empty where nothing was fitted
    note: str = ""  # why there is no prediction; empty where there is one

    @property
    def predicts(self) -> bool:
        return not self.note

    def coefficient(self, power: int) -> float:
        """c_power in bytes per token^power: 0 above the order, NaN where nothing was fitted."""
        if not self.coefficients:
            return math.nan
        return self.coefficients[power] if power < len(self.coefficients) else 0.0

    def max_seq_len(self, budget_bytes: float) -> float:
        """The largest N whose predicted peak fits the budget (tokens): NaN without a prediction, inf where
        memory does not grow with N."""
        if not self.predicts:
            return math.nan
        c0, c1, c2 = (self.coefficient(i) for i in range(3))
        room = budget_bytes - c0
        if room < 0:
            return 0.0
        if c2 > 0:
            return 2 * room / (c1 + math.sqrt(c1 * c1 + 4 * c2 * room))  # the root, without cancellation
        return room / c1 if c1 > 0 else math.inf

    def columns(self) -> dict[str, object]:
        """The fit as a table row holds it (oom_frontier.csv; the note is `prediction_note`)."""
        return {
            "memory_order": self.order, "fit_seq_lens": ",".join(map(str, self.seq_lens)),
            "fit_peak_bytes": ",".join(f"{p:.0f}" for p in self.peak_bytes),
            **{name: self.coefficient(i) for i, name in enumerate(COEFFICIENT_COLUMNS)},
            "prediction_note": self.note,
        }

    @classmethod
    def from_columns(cls, row: Mapping[str, object]) -> MemoryFit:
        """The fit `columns` stored; a row written before fits had an order and a note predicts nothing."""
        if not _is_number(row.get("memory_order")):
            return cls(None, (), (), note="fitted by an older ttt-bench, without the checks a prediction needs now; "
                                       "rerun `ttt-bench oom` into this folder (it reuses the probes)")
        order = int(row["memory_order"])
        coefficients = tuple(float(row[name]) for name in COEFFICIENT_COLUMNS[:order + 1])
        return cls(order, _numbers(row.get("fit_seq_lens"), int), _numbers(row.get("fit_peak_bytes"), float),
                   () if any(math.isnan(c) for c in coefficients) else coefficients,
                   row["prediction_note"] if isinstance(row.get("prediction_note"), str) else "")


def fit_memory(seq_lens: list[int], peak_bytes: list[float], order: int) -> MemoryFit:
    """The polynomial of degree `order` through the points by least squares on relative error (each point
    weighted by 1 / its peak, so the largest peaks do not outvote the rest); the module docstring says when it
    predicts nothing."""
    fit = MemoryFit(order, tuple(int(n) for n in seq_lens), tuple(float(p) for p in peak_bytes))
    distinct = sorted(set(fit.seq_lens))
    needed = points_needed(order)
    if len(distinct) < needed:
        measured = f"N = {', '.join(map(str, distinct))}" if distinct else "no N"
        return replace(fit, note=f"{len(distinct)} lengths measured ({measured}); {formula(order)} needs "
                                 f"{needed}, {POINTS_PER_COEFFICIENT} per coefficient")
    n = np.asarray(fit.seq_lens, dtype=float)
    y = np.asarray(fit.peak_bytes, dtype=float)
    fitted = np.polynomial.polynomial.polyfit(n, y, order, w=1 / y)
    terms_at_largest = fitted * n.max() ** np.arange(order + 1)
    coefficients = tuple(0.0 if abs(term) <= ROUND_OFF * y.max() else float(c)
                         for c, term in zip(fitted, terms_at_largest))
    fit = replace(fit, coefficients=coefficients)
    smallest = int(np.argmin(y))
    if coefficients[0] < -FIT_TOLERANCE * y[smallest]:
        return replace(fit, note=f"negative intercept c0 = {coefficients[0] / MiB:.3g} MiB, beyond "
                                 f"{FIT_TOLERANCE:.0%} of the smallest peak ({y[smallest] / MiB:.3g} MiB at N = "
                                 f"{fit.seq_lens[smallest]}): the points (N = {distinct[0]} ... {distinct[-1]}) are "
                                 f"not {formula(order)}")
    if coefficients[order] < 0:
        return replace(fit, note=f"negative c{order} = {coefficients[order]:.4g} {COEFFICIENT_UNITS[order]}: memory "
                                 f"would shrink as N grows; the points are not {formula(order)}")
    misses = np.abs(np.polynomial.polynomial.polyval(n, coefficients) / y - 1)
    worst = int(np.argmax(misses))
    if misses[worst] > FIT_TOLERANCE:
        return replace(fit, note=f"{formula(order)} misses N = {fit.seq_lens[worst]} by {misses[worst]:.1%} (more "
                                 f"than {FIT_TOLERANCE:.0%}): the peaks are not this polynomial")
    return fit


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not math.isnan(value)


def _numbers(cell: object, kind: type) -> tuple:
    """'128,256' -> (128, 256), as a table stores a list; 1024 -> (1024,); a missing or empty cell -> ()."""
    if _is_number(cell):
        return (kind(cell),)
    return tuple(kind(float(v)) for v in cell.split(",")) if isinstance(cell, str) and cell else ()


def declared_memory_order(layer: str, d_model: int, n_heads: int, knobs: dict) -> int:
    """LayerCost.memory_order of a registered layer as configured (it does not depend on N)."""
    return layers.build(layer, d_model=d_model, n_heads=n_heads, **knobs).cost(1, 1).memory_order
