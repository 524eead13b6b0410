"""How time and memory grow with N: a power law fitted per layer, and the N at which a layer overtakes
softmax attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ttt_bench.report.units import label, shown_value

FIT_SPAN = 16  # the exponent is fitted over N within this factor of the largest N measured: small N is overhead
REFERENCE_PREFERENCE = ("attention-sdpa-causal", "attention-sdpa", "attention-naive-causal", "attention-naive")


@dataclass(frozen=True)
class Exponent:
    """a in value ~ N^a, or NaN with the reason it was not fitted."""

    value: float
    reason: str = ""  # 'not fitted: ...' when value is NaN

    def text(self) -> str:
        return f"N^{self.value:.2f}" if math.isfinite(self.value) else self.reason


def fit_exponent(seq_lens, values, noisy=None, metric: str = "time_ms", low=None, high=None,
                 fall_tolerance: float = 1.0) -> Exponent:
    """a in value ~ N^a: least squares on log-log over the points within FIT_SPAN of the largest N. Refused, with
    the reason, where fewer than two N are there, where one of those points is noisy (`noisy`, per point) or
    where the value falls as N grows: a power law fitted to that is noise, not a result. With a band per point
    (`low`, `high`: a time's p20 and p80) a fall counts only beyond it, the next point's high below this one's
    low, as a crossover does: a flat stretch within the timing noise (overhead at small N) is no fall. With
    `fall_tolerance` f > 1, a fall must also exceed a factor f beyond the band (falls_with_n)."""
    n = np.asarray(seq_lens, dtype=float)
    y = np.asarray(values, dtype=float)
    flags = np.zeros(len(n), dtype=bool) if noisy is None else np.asarray(noisy, dtype=bool)
    low, high = _band(low, y), _band(high, y)  # aligned with y before the points outside the span are dropped
    keep = np.isfinite(y) & (y > 0)
    keep &= n >= (n[keep].max() / FIT_SPAN if keep.any() else 0)
    n, y, flags, low, high = n[keep], y[keep], flags[keep], low[keep], high[keep]
    if len(set(n)) < 2:
        return Exponent(math.nan, "not fitted: fewer than 2 N measured")
    if flags.any():
        return Exponent(math.nan, f"not fitted: {int(flags.sum())} of {len(n)} points noisy")
    fall = falls_with_n(n, y, metric, low, high, fall_tolerance)
    if fall:
        return Exponent(math.nan, f"not fitted: {fall}")
    slope, _ = np.polyfit(np.log(n), np.log(y), 1)
    return Exponent(float(slope))


def falls_with_n(seq_lens, values, metric: str, low=None, high=None, tolerance: float = 1.0) -> str:
    """'time falls with N (31 ms at 1024 > 20 ms at 2048)' at the first N where the value falls beyond its band
    (`low`, `high`; none: any fall) by more than a factor `tolerance` (1: any fall beyond the band; a flat series
    measured cell by cell drifts between cells by more than each cell's own band); '' where it never does."""
    n, y = np.asarray(seq_lens, dtype=float), np.asarray(values, dtype=float)
    order = np.argsort(n, kind="stable")
    n, y, low, high = n[order], y[order], _band(low, y)[order], _band(high, y)[order]
    falls = np.flatnonzero(high[1:] * tolerance < low[:-1])
    if not len(falls):
        return ""
    at = falls[0]
    return (f"{label(metric).split(' (')[0]} falls with N ({shown_value(metric, y[at])} at {n[at]:.0f} > "
            f"{shown_value(metric, y[at + 1])} at {n[at + 1]:.0f})")


def _band(edge, values: np.ndarray) -> np.ndarray:
    """A band's edge per point, the value itself where there is none."""
    if edge is None:
        return values
    edge = np.asarray(edge, dtype=float)
    return np.where(np.isfinite(edge), edge, values)


def exponents(points: pd.DataFrame, metric: str, fall_tolerance: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per series and measurement: the fitted exponent of `metric` over N, or why there is none (a time
    from noisy points is refused; a peak memory is not a timing and does not care). `fall_tolerance`: per
    measurement, the factor a fall must exceed beyond its band to refuse the fit (falls_with_n; default 1)."""
    rows = []
    for (name, measurement), group in points.groupby(["series", "measurement"], sort=False):
        ok = group[group["status"] == "ok"]
        timed = metric == "time_ms"
        fit = fit_exponent(ok["seq_len"], ok[metric], ok["noisy"] if timed else None, metric,
                           ok["time_p20_ms"] if timed else None, ok["time_p80_ms"] if timed else None,
                           (fall_tolerance or {}).get(measurement, 1.0))
        rows.append({"series": name, "measurement": measurement, "exponent": fit.value, "not_fitted": fit.reason})
    return pd.DataFrame(rows, columns=["series", "measurement", "exponent", "not_fitted"])


def reference_variant(variants, requested: str | None = None) -> str | None:
    """The softmax-attention variant others are compared with: as requested, else the first present of
    REFERENCE_PREFERENCE, else any variant of an attention layer."""
    variants = list(variants)
    if requested is not None:
        return requested if requested in variants else None
    for name in REFERENCE_PREFERENCE:
        if name in variants:
            return name
    return next((name for name in variants if name.startswith("attention")), None)


def first_better_seq_len(mine: pd.DataFrame, reference: pd.DataFrame, metric: str, high: str, low: str) -> float:
    """The smallest N from which `mine` beats the reference at every larger N where both were measured: its
    `high` (say the p80 time) below the reference's `low` (its p20), so a tie within the noise is not a win.
    A reference out of memory where `mine` ran counts as beaten. NaN when never."""
    columns = list(dict.fromkeys(["seq_len", "status", metric, high, low]))
    table = mine[columns].merge(reference[columns], on="seq_len", suffixes=("", "_reference")).set_index("seq_len")
    table = table[(table["status"] == "ok") & table[metric].notna()].sort_index()  # unmeasured: no win either
    beats = (table["status_reference"] == "oom") | (
        (table["status_reference"] == "ok") & (table[high] < table[f"{low}_reference"]))
    comparable = table["status_reference"].isin(["ok", "oom"])
    beats, table = beats[comparable], table[comparable]
    if beats.empty or not beats.iloc[-1]:
        return math.nan
    losing = beats[~beats]
    return float(beats.index[0] if losing.empty else beats.index[beats.index > losing.index[-1]][0])


CROSSOVER_COLUMNS = ["series", "measurement", "faster_from_seq_len", "lighter_from_seq_len", "compared_at_seq_len",
                     "time_ratio", "memory_ratio", "faster_refused"]


def crossovers(points: pd.DataFrame, reference: str, fall_tolerance: dict[str, float] | None = None) -> pd.DataFrame:
    """Per series and measurement: the first N at which it is faster and the first at which it is lighter than
    the reference variant measured with the same settings, and the time and memory ratios (series / reference)
    at the largest N both ran. The time crossover and ratio are refused (`faster_refused` says why) when a
    timing either side rests on is noisy or a time falls as N grows: a crossover read from noise moves with the
    machine's load. `fall_tolerance` as in `exponents`."""
    rows = []
    for (name, measurement), mine in points.groupby(["series", "measurement"], sort=False):
        if mine["variant"].iloc[0] == reference:
            continue
        theirs = points[(points["variant"] == reference) & (points["measurement"] == measurement)
                        & (points["settings"] == mine["settings"].iloc[0])]
        if theirs.empty:
            continue
        both = mine.merge(theirs, on="seq_len", suffixes=("", "_reference"))
        refused = _time_crossover_refusal(both, name, theirs["series"].iloc[0],
                                          (fall_tolerance or {}).get(measurement, 1.0))
        both = both[(both["status"] == "ok") & (both["status_reference"] == "ok")]
        last = both.iloc[-1] if len(both) else None
        rows.append({
            "series": name, "measurement": measurement,
            "faster_from_seq_len": math.nan if refused else first_better_seq_len(mine, theirs, "time_ms",
                                                                                 "time_p80_ms", "time_p20_ms"),
            "lighter_from_seq_len": first_better_seq_len(mine, theirs, "peak_bytes", "peak_bytes", "peak_bytes"),
            "compared_at_seq_len": last["seq_len"] if last is not None else math.nan,
            "time_ratio": last["time_ms"] / last["time_ms_reference"] if last is not None and not refused else math.nan,
            "memory_ratio": last["peak_bytes"] / last["peak_bytes_reference"] if last is not None else math.nan,
            "faster_refused": refused,
        })
    return pd.DataFrame(rows, columns=CROSSOVER_COLUMNS)


def _time_crossover_refusal(both: pd.DataFrame, name: str, reference: str, tolerance: float = 1.0) -> str:
    """Why no time crossover is read from these paired points ('' when one is): noisy timings, or a time that
    falls as N grows on either side, beyond its p20-p80 band."""
    timed = both[(both["status"] == "ok") & both["status_reference"].isin(["ok", "oom"])]
    noisy = int(timed["noisy"].sum() + timed["noisy_reference"].fillna(False).astype(bool).sum())
    if noisy:
        return f"not given: {noisy} of {len(timed) + int((timed['status_reference'] == 'ok').sum())} timings noisy"
    for who, suffix in ((name, ""), (reference, "_reference")):
        ok = both[both[f"status{suffix}"] == "ok"]
        fall = falls_with_n(ok["seq_len"], ok[f"time_ms{suffix}"], "time_ms", ok[f"time_p20_ms{suffix}"],
                            ok[f"time_p80_ms{suffix}"], tolerance)
        if fall:
            return f"not given: {who}'s {fall}"
    return ""
