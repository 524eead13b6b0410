"""Accuracy against compute: one point per series (a layer variant as set up; its seed statistics) and the Pareto
front, the series that no other beats on both accuracy and FLOPs.
"""

from __future__ import annotations

import pandas as pd

from ttt_bench.report.seed_stats import LEVELS, PANEL_COLUMNS

POINT_COLUMNS = [*PANEL_COLUMNS, "series", "variant", "flops_per_token", "params", "accuracy_mean", "accuracy_low",
                 "accuracy_high", "seeds"]


def accuracy_points(statistics: pd.DataFrame) -> pd.DataFrame:
    """Per task, N and series of `statistics` (seed_stats.seed_statistics): FLOPs per token, parameters, the mean
    accuracy with its 95% t interval over the seeds that finished, the seed count, whether the series is on its
    panel's Pareto front, and the panel's chance and floor (for the figure)."""
    points = statistics[[*POINT_COLUMNS, *LEVELS]].assign(pareto=False)
    for _, panel in points.groupby(PANEL_COLUMNS, sort=False):
        points.loc[pareto_front(panel).index, "pareto"] = True
    return points


def pareto_front(panel: pd.DataFrame) -> pd.DataFrame:
    """The rows not dominated: none other has accuracy >= and FLOPs <= with one of them strict. Sorted by FLOPs."""
    ordered = panel.sort_values(["flops_per_token", "accuracy_mean"], ascending=[True, False])
    front, best = [], -float("inf")
    for index, row in ordered.iterrows():
        if row["accuracy_mean"] > best:
            front.append(index)
            best = row["accuracy_mean"]
    return ordered.loc[front]
