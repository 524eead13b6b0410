"""Accuracy against compute: one point per series (a layer variant as set up; mean and spread over seeds) and
the Pareto front, the series that no other beats on both accuracy and FLOPs.
"""

from __future__ import annotations

import pandas as pd

from ttt_bench.report.settings import series

PANEL_COLUMNS = ["task", "seq_len"]


def accuracy_points(train: pd.DataFrame) -> pd.DataFrame:
    """Per task, N and series: FLOPs per token (fixed by the config), the mean and standard deviation of the
    held-out accuracy over seeds that finished, the seed count and the parameter count. Runs set up differently
    (another backbone, training settings, threads) are separate series (ttt_bench.report.settings)."""
    ok = train[(train["status"] == "ok") & train["accuracy"].notna()]
    columns = [*PANEL_COLUMNS, "series", "variant", "flops_per_token", "params", "accuracy_mean", "accuracy_sd",
               "seeds"]
    if ok.empty:
        return pd.DataFrame(columns=[*columns, "pareto"])
    ok = ok.assign(series=series(ok, panels=tuple(PANEL_COLUMNS)).labels)
    grouped = ok.groupby([*PANEL_COLUMNS, "series"], sort=False)
    points = grouped.agg(variant=("variant", "first"), flops_per_token=("flops_per_token", "median"),
                         params=("params", "median"),
                         accuracy_mean=("accuracy", "mean"), accuracy_sd=("accuracy", "std"),
                         seeds=("accuracy", "size")).reset_index()
    points["accuracy_sd"] = points["accuracy_sd"].fillna(0.0)
    points["pareto"] = False
    for _, panel in points.groupby(PANEL_COLUMNS, sort=False):
        points.loc[pareto_front(panel).index, "pareto"] = True
    return points[[*columns, "pareto"]]


def pareto_front(panel: pd.DataFrame) -> pd.DataFrame:
    """The rows not dominated: none other has accuracy >= and FLOPs <= with one of them strict. Sorted by FLOPs."""
    ordered = panel.sort_values(["flops_per_token", "accuracy_mean"], ascending=[True, False])
    front, best = [], -float("inf")
    for index, row in ordered.iterrows():
        if row["accuracy_mean"] > best:
            front.append(index)
            best = row["accuracy_mean"]
    return ordered.loc[front]
