"""How time and memory grow with N: a power law fitted per layer, and the N at which a layer overtakes
softmax attention.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

FIT_SPAN = 16  # the exponent is fitted over N within this factor of the largest N measured: small N is overhead
REFERENCE_PREFERENCE = ("attention-sdpa-causal", "attention-sdpa", "attention-naive-causal", "attention-naive")


def fit_exponent(seq_lens, values) -> float:
    """a in value ~ N^a: least squares on log-log over the points within FIT_SPAN of the largest N (NaN with
    fewer than two)."""
    n = np.asarray(seq_lens, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(y) & (y > 0)
    n, y = n[keep], y[keep]
    if len(n) == 0:
        return math.nan
    top = n >= n.max() / FIT_SPAN
    if len(set(n[top])) < 2:
        return math.nan
    slope, _ = np.polyfit(np.log(n[top]), np.log(y[top]), 1)
    return float(slope)


def exponents(points: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per variant and measurement: the fitted exponent of `metric` over N."""
    rows = []
    for (variant, measurement), group in points.groupby(["variant", "measurement"], sort=False):
        ok = group[group["status"] == "ok"]
        rows.append({"variant": variant, "measurement": measurement,
                     "exponent": fit_exponent(ok["seq_len"], ok[metric])})
    return pd.DataFrame(rows, columns=["variant", "measurement", "exponent"])


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
    table = table[table["status"] == "ok"].sort_index()
    beats = (table["status_reference"] == "oom") | (
        (table["status_reference"] == "ok") & (table[high] < table[f"{low}_reference"]))
    comparable = table["status_reference"].isin(["ok", "oom"])
    beats, table = beats[comparable], table[comparable]
    if beats.empty or not beats.iloc[-1]:
        return math.nan
    losing = beats[~beats]
    return float(beats.index[0] if losing.empty else beats.index[beats.index > losing.index[-1]][0])


def crossovers(points: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per variant and measurement: the first N at which it is faster and the first at which it is lighter than
    the reference, and the time and memory ratios (variant / reference) at the largest N both ran."""
    rows = []
    for (variant, measurement), mine in points.groupby(["variant", "measurement"], sort=False):
        if variant == reference:
            continue
        theirs = points[(points["variant"] == reference) & (points["measurement"] == measurement)]
        if theirs.empty:
            continue
        both = mine.merge(theirs, on="seq_len", suffixes=("", "_reference"))
        both = both[(both["status"] == "ok") & (both["status_reference"] == "ok")]
        last = both.iloc[-1] if len(both) else None
        rows.append({
            "variant": variant, "measurement": measurement,
            "faster_from_seq_len": first_better_seq_len(mine, theirs, "time_ms", "time_p80_ms", "time_p20_ms"),
            "lighter_from_seq_len": first_better_seq_len(mine, theirs, "peak_bytes", "peak_bytes", "peak_bytes"),
            "compared_at_seq_len": last["seq_len"] if last is not None else math.nan,
            "time_ratio": last["time_ms"] / last["time_ms_reference"] if last is not None else math.nan,
            "memory_ratio": last["peak_bytes"] / last["peak_bytes_reference"] if last is not None else math.nan,
        })
    return pd.DataFrame(rows, columns=["variant", "measurement", "faster_from_seq_len", "lighter_from_seq_len",
                                       "compared_at_seq_len", "time_ratio", "memory_ratio"])
