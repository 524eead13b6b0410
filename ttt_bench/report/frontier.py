"""The out-of-memory frontier per layer: the largest N that fit the memory budget, as measured (a sweep's
largest 'ok' N and first 'oom' N, or the bisection of `ttt-bench oom`) and as predicted by the memory fit
(ttt_bench.profile.memory_fit) at that budget.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ttt_bench.profile.memory_fit import fit_memory
from ttt_bench.report.frames import first_out_of_memory_seq_len

COLUMNS = ["variant", "measurement", "budget_bytes", "max_seq_len", "first_failing_seq_len", "predicted_max_seq_len",
           "searched"]
SEARCH_FILE = "oom_frontier.csv"  # written by `ttt-bench oom` into its results folder


def frontier_from_points(points: pd.DataFrame, budget_bytes: float) -> pd.DataFrame:
    """From a sweep's points (frames.scaling_points): a lower bound when nothing ran out of memory."""
    rows = []
    for (variant, measurement), group in points.groupby(["variant", "measurement"], sort=False):
        ok = group[group["status"] == "ok"]
        fit = fit_memory(list(ok["seq_len"]), list(ok["peak_bytes"])) if ok["peak_bytes"].notna().all() else None
        rows.append({
            "variant": variant, "measurement": measurement, "budget_bytes": budget_bytes,
            "max_seq_len": ok["seq_len"].max() if len(ok) else math.nan,
            "first_failing_seq_len": first_out_of_memory_seq_len(group),
            "predicted_max_seq_len": fit.max_seq_len(budget_bytes) if fit and math.isfinite(budget_bytes) else math.nan,
            "searched": False,
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def frontier_from_search(path: Path) -> pd.DataFrame:
    """The table `ttt-bench oom` wrote: the bisected frontier (to its resolution) and its prediction."""
    table = pd.read_csv(path)
    table["searched"] = True
    return table[COLUMNS]


def budget_bytes(profile: pd.DataFrame) -> float:
    """The budget the sweep's cells ran under: the recorded tracked-bytes budget, else a GPU's memory;
    NaN where neither was recorded (results from before the budget was stored)."""
    if "memory_budget_bytes" in profile and profile["memory_budget_bytes"].notna().any():
        return float(profile["memory_budget_bytes"].median())
    memory = pd.to_numeric(profile.get("gpu_memory_bytes", pd.Series(dtype=float)), errors="coerce")
    return float(memory.median()) if memory.notna().any() else math.nan
