"""The out-of-memory frontier per layer: the largest N that fit the memory budget, as measured (a sweep's
largest 'ok' N and first 'oom' N, or the bisection of `ttt-bench oom`), and as predicted by the memory fit
(ttt_bench.profile.memory_fit) at that budget and at the card sizes CARD_BUDGETS_GIB: each prediction with the
points it rests on, or the reason there is none.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ttt_bench.errors import ConfigError, UnknownLayerError
from ttt_bench.profile.memory_fit import (
    CARD_BUDGETS_GIB,
    FIT_TOLERANCE,
    POINTS_PER_COEFFICIENT,
    MemoryFit,
    declared_memory_order,
    fit_memory,
)
from ttt_bench.report.frames import first_out_of_memory_seq_len
from ttt_bench.results import GiB, MiB

CARD_COLUMNS = [f"predicted_max_seq_len_at_{gib:g}_gib" for gib in CARD_BUDGETS_GIB]
GRID_POINT_COLUMNS = ("batch", "d_model", "n_heads", "dtype", "device")  # what a search's rows may differ in
COLUMNS = ["variant", "measurement", "budget_bytes", "max_seq_len", "first_failing_seq_len", "searched",
           "memory_order", "predicted_max_seq_len", *CARD_COLUMNS, "fit_points", "prediction_note"]
FIT_CAPTION = (f"and at {' and '.join(f'{gib:g}' for gib in CARD_BUDGETS_GIB)} GiB, by the memory fit: "
               f"peak(N) = c0 + c1 N (+ c2 N^2) bytes, of the degree the layer's analytic cost declares (its memory "
               f"order), least squares on the measured peaks listed beside it (N: peak MiB). A fit predicts only from "
               f"{POINTS_PER_COEFFICIENT} lengths or more per coefficient, with its intercept not below zero by more "
               f"than {FIT_TOLERANCE:.0%} of its smallest peak, its leading coefficient not negative, and no point "
               f"missed by more than {FIT_TOLERANCE:.0%}; otherwise its note says what failed "
               f"(docs/oom.md#the-memory-fit).")
SEARCH_FILE = "oom_frontier.csv"  # written by `ttt-bench oom` into its results folder
TEXT_COLUMNS = ("fit_seq_lens", "fit_peak_bytes", "prediction_note")  # lists and words in SEARCH_FILE


def frontier_from_points(points: pd.DataFrame, orders: Mapping[str, tuple[int | None, str]],
                         budget_bytes: float) -> pd.DataFrame:
    """From a sweep's points (frames.scaling_points, one curve per `variant` label): a lower bound where nothing
    ran out of memory, and the fit of the order `orders` (declared_orders) gives the label to the 'ok' peaks."""
    table = []
    for (variant, measurement), group in points.groupby(["variant", "measurement"], sort=False):
        ok = group[(group["status"] == "ok") & group["peak_bytes"].notna()]
        order, unknown = orders[variant]
        fit = (MemoryFit(None, (), (), note=unknown) if order is None
               else fit_memory(list(ok["seq_len"]), list(ok["peak_bytes"]), order))
        table.append({
            "variant": variant, "measurement": measurement, "budget_bytes": budget_bytes,
            "max_seq_len": group.loc[group["status"] == "ok", "seq_len"].max(),
            "first_failing_seq_len": first_out_of_memory_seq_len(group), "searched": False,
            **prediction_columns(fit, budget_bytes),
        })
    return pd.DataFrame(table, columns=COLUMNS)


def frontier_from_search(path: Path) -> pd.DataFrame:
    """The table `ttt-bench oom` wrote: the bisected frontier (to its resolution) and its fit's predictions."""
    table = pd.read_csv(path, dtype={column: str for column in TEXT_COLUMNS})
    fits = [MemoryFit.from_columns(row) for _, row in table.iterrows()]
    predictions = pd.DataFrame([prediction_columns(fit, budget) for fit, budget in zip(fits, table["budget_bytes"])])
    table = table.drop(columns=[c for c in predictions.columns if c in table]).join(predictions)
    table["searched"] = True
    # One search per grid point: where the points differ (batch 1, 4, 16), each row is named by what differs.
    differing = [column for column in GRID_POINT_COLUMNS if column in table and table[column].nunique() > 1]
    if differing:
        table["layer_variant"] = table["variant"]
        table["variant"] = table["variant"] + " (" + table[differing].astype(str).apply(
            lambda values: ", ".join(f"{column}={value}" for column, value in values.items()), axis=1) + ")"
    return table[COLUMNS + (["layer_variant"] if differing else [])]


def prediction_columns(fit: MemoryFit, budget_bytes: float) -> dict[str, object]:
    """The fit's frontier at the budget and at each card size, the points it rests on, and its note."""
    return {
        "memory_order": math.nan if fit.order is None else fit.order,
        "predicted_max_seq_len": fit.max_seq_len(budget_bytes) if math.isfinite(budget_bytes) else math.nan,
        **{column: fit.max_seq_len(gib * GiB) for column, gib in zip(CARD_COLUMNS, CARD_BUDGETS_GIB)},
        "fit_points": ", ".join(f"{n}: {peak / MiB:.3g}" for n, peak in zip(fit.seq_lens, fit.peak_bytes)),
        "prediction_note": fit.note,
    }


def declared_orders(rows: pd.DataFrame, labels: pd.Series) -> dict[str, tuple[int | None, str]]:
    """Per label (`labels` gives each row's: its variant, or the report's series), the declared_order of the
    label's first row: rows under one label share the layer and its knobs."""
    first = rows.assign(label=labels).drop_duplicates("label")
    return {row["label"]: declared_order(row) for _, row in first.iterrows()}


def declared_order(row: pd.Series) -> tuple[int | None, str]:
    """The memory order the variant's layer declares (LayerCost.memory_order), or None and why it is unknown."""
    knobs = row.get("knobs")
    try:
        return declared_memory_order(str(row["layer"]), int(row["d_model"]), int(row["n_heads"]),
                                     json.loads(knobs) if isinstance(knobs, str) and knobs else {}), ""
    except UnknownLayerError:  # a layer of the user's own, registered by a module this process has not imported
        return None, (f"layer {row['layer']!r} is not registered in the report's process, so its memory order "
                      f"(LayerCost.memory_order) is unknown and nothing is fitted")
    except ConfigError as error:
        return None, f"its memory order is unknown, so nothing is fitted: {error}"


def budget_bytes(profile: pd.DataFrame) -> float:
    """The budget the sweep's cells ran under: the recorded tracked-bytes budget, else a GPU's memory;
    NaN where neither was recorded (results from before the budget was stored)."""
    if "memory_budget_bytes" in profile and profile["memory_budget_bytes"].notna().any():
        return float(profile["memory_budget_bytes"].median())
    memory = pd.to_numeric(profile.get("gpu_memory_bytes", pd.Series(dtype=float)), errors="coerce")
    return float(memory.median()) if memory.notna().any() else math.nan
