"""Accuracy against compute: one point per layer variant (mean and spread over seeds) and the Pareto front,
the variants that no other variant beats on both accuracy and FLOPs.
"""

from __future__ import annotations

import pandas as pd

PANEL_COLUMNS = ["task", "seq_len"]


def accuracy_points(train: pd.DataFrame) -> pd.DataFrame:
    """Per task, N and variant: FLOPs per token (fixed by the config), the mean and standard deviation of the
    held-out accuracy over seeds that finished, the seed count and the parameter count."""
    ok = train[(train["status"] == "ok") & train["accuracy"].notna()]
    columns = [*PANEL_COLUMNS, "variant", "flops_per_token", "params", "accuracy_mean", "accuracy_sd", "seeds"]
    if ok.empty:
        return pd.DataFrame(columns=columns)
    grouped = ok.groupby([*PANEL_COLUMNS, "variant"], sort=False)
    points = grouped.agg(flops_per_token=("flops_per_token", "median"), params=("params", "median"),
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
