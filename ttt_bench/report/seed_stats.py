"""Accuracy over seeds, stated honestly: per panel (task and N) and series (a layer variant as set up), the mean
held-out accuracy over the seeds that finished with a 95% Student t interval, the share of seeds that reached the
target, whether the series is above the task's floor (and the no-mixer control), which pairs of series the
intervals separate, and the learning curves of the evaluations during training. One seed gives no interval, so it
never separates anything. Runs set up differently are separate series, never averaged (ttt_bench.report.settings).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from ttt_bench.layers.control import CONTROL_LAYER
from ttt_bench.report.settings import series
from ttt_bench.report.tables import MISSING

PANEL_COLUMNS = ["task", "seq_len"]
CONFIDENCE = 0.95
INTERVAL_CAPTION = ("a 95% Student t interval of the mean over its n seeds (mean ± t(0.975, n - 1) x sd / √n, sd with "
                    "n - 1, clipped to the possible accuracies [0, 1]; none with one seed)")
# Numbers the report reads from training and evaluation rows; results written before a column existed lack it (or
# hold it null) and read NaN there.
NUMBER_COLUMNS = ("chance_accuracy", "floor_accuracy", "target_accuracy", "steps_to_target", "step_time_ms",
                  "train_time_s", "steps", "step", "train_flops", "flops_per_token", "params", "state_bytes_stated")
LEVELS = ("chance_accuracy", "floor_accuracy")  # a panel's: the same data, whatever the layer
ABOVE, BELOW, OVERLAP, ITSELF = "above", "below", "overlap", "·"  # words: '<' and '>' read as markup in HTML
STATISTICS_COLUMNS = [*PANEL_COLUMNS, "series", "variant", "layer", "seeds", "accuracy_mean", "accuracy_sd",
                      "accuracy_low", "accuracy_high", "flops_per_token", "params", "state_bytes_stated",
                      *LEVELS, "floor_name", "target_share", "steps_to_target_mean", "step_time_ms", "above_floor"]


def t_half_width(sd, seeds) -> np.ndarray:
    """Half the 95% t interval of a mean of `seeds` values whose standard deviation (ddof 1) is `sd`:
    t(0.975, n - 1) x sd / √n; NaN below two seeds."""
    seeds = np.asarray(seeds, dtype=float)
    degrees = np.where(seeds >= 2, seeds - 1, np.nan)
    return stats.t.ppf(0.5 + CONFIDENCE / 2, degrees) * np.asarray(sd, dtype=float) / np.sqrt(seeds)


def finished_runs(train: pd.DataFrame) -> pd.DataFrame:
    """The training rows that finished with an accuracy, each with its `series` within its panel, every column of
    NUMBER_COLUMNS (NaN where the results predate it), its panel's chance and floor, and its `floor_name`."""
    runs = _with_numbers(train[(train["status"] == "ok") & train["accuracy"].notna()])
    if runs.empty:
        return runs.assign(series=pd.Series(dtype=object), floor_name=pd.Series(dtype=object))
    runs = runs.assign(series=series(runs, panels=tuple(PANEL_COLUMNS)).labels,
                       floor_name=runs["floor_name"] if "floor_name" in runs else None)
    return _with_panel_levels(runs)


def seed_statistics(train: pd.DataFrame, evals: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per panel and series (STATISTICS_COLUMNS): the seeds that finished; the mean, standard deviation and 95% t
    interval of their held-out accuracy; what the model costs (FLOPs per token, parameters, stated recurrent state:
    medians); the panel's chance and floor; the share of seeds that reached the target (NaN where none was set),
    their mean steps to it, the mean time per optimiser step (ms), and `above_floor` (above_floor)."""
    runs = finished_runs(train)
    if runs.empty:
        return pd.DataFrame(columns=STATISTICS_COLUMNS)
    # Folders from before step_time_ms: the training time already excludes the evaluations.
    runs = runs.assign(reached=_reached_target(runs, evals),
                       step_time_ms=runs["step_time_ms"].fillna(runs["train_time_s"] * 1e3 / runs["steps"]))
    grouped = runs.groupby([*PANEL_COLUMNS, "series"], sort=False)
    costs = grouped.agg(variant=("variant", "first"), layer=("layer", "first"),
                        flops_per_token=("flops_per_token", "median"), params=("params", "median"),
                        state_bytes_stated=("state_bytes_stated", "median"), chance_accuracy=("chance_accuracy", "max"),
                        floor_accuracy=("floor_accuracy", "max"), floor_name=("floor_name", "first"),
                        target_share=("reached", "mean"), steps_to_target_mean=("steps_to_target", "mean"),
                        step_time_ms=("step_time_ms", "mean"))
    statistics = costs.join(_mean_and_interval(grouped["accuracy"])).reset_index()
    return statistics.assign(above_floor=above_floor(statistics))[STATISTICS_COLUMNS]


def above_floor(statistics: pd.DataFrame) -> pd.Series:
    """Per series: True when its interval's lower end is above the panel's floor and, where the panel holds the
    no-mixer control, above the upper end of the control's interval (the highest, where it ran under several
    settings; a control with one seed has no upper end, so nothing is above it). None where no floor is known."""
    is_control = statistics["layer"] == CONTROL_LAYER
    control = statistics[is_control].assign(control_high=statistics["accuracy_high"].fillna(math.inf))
    ceiling = control.groupby(PANEL_COLUMNS)["control_high"].max()
    control_high = statistics.join(ceiling, on=PANEL_COLUMNS)["control_high"]
    low = statistics["accuracy_low"]
    above = (low > statistics["floor_accuracy"]) & (is_control | control_high.isna() | (low > control_high))
    return above.astype(object).where(statistics["floor_accuracy"].notna(), None)


def separation(panel: pd.DataFrame) -> pd.DataFrame:
    """The series of one panel's statistics against each other: the cell of row A and column B is 'above' where A's
    95% interval lies wholly above B's, 'below' wholly below, 'overlap' where they overlap (touching included) and '—'
    where either has no interval (one seed); '·' on the diagonal."""
    names = list(panel["series"])
    low, high = dict(zip(names, panel["accuracy_low"])), dict(zip(names, panel["accuracy_high"]))

    def verdict(a: str, b: str) -> str:
        if a == b:
            return ITSELF
        if not all(math.isfinite(value) for value in (low[a], high[a], low[b], high[b])):
            return MISSING
        return ABOVE if low[a] > high[b] else BELOW if high[a] < low[b] else OVERLAP

    return pd.DataFrame([[verdict(a, b) for b in names] for a in names], columns=names,
                        index=pd.Index(names, name="series"))


def learning_curves(train: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """Per panel, series and optimiser step: the mean held-out accuracy over the seeds with its 95% t interval,
    the cumulative training FLOPs (mean over those seeds) and the panel's chance and floor. Only the evaluations
    of runs that finished, each in its run's series (finished_runs), so a curve and its run's statistics always
    agree. A run that stopped early at its target holds its last accuracy at the later steps of its series:
    otherwise the mean there would be over the seeds that had not yet reached it, and fall."""
    series_of = finished_runs(train).set_index("config_hash")["series"]
    evals = _with_numbers(evals[evals["status"] == "ok"])
    evals = evals.assign(series=evals["config_hash"].map(series_of)).dropna(subset=["series", "accuracy", "step"])
    evals = _held_after_stopping(evals)
    if evals.empty:
        return pd.DataFrame(columns=[*PANEL_COLUMNS, "series", "variant", "step", "seeds", "accuracy_mean",
                                     "accuracy_sd", "accuracy_low", "accuracy_high", "train_flops", *LEVELS])
    evals = _with_panel_levels(evals)
    grouped = evals.groupby([*PANEL_COLUMNS, "series", "step"], sort=False)
    context = grouped.agg(variant=("variant", "first"), train_flops=("train_flops", "mean"),
                          **{level: (level, "max") for level in LEVELS})
    return context.join(_mean_and_interval(grouped["accuracy"])).reset_index()


def _held_after_stopping(evals: pd.DataFrame) -> pd.DataFrame:
    """The evaluations, plus for each run stopped at its target (its last step below its series' last) a copy of
    its last evaluation at every later step its series evaluated; the copies' FLOPs stay those it trained."""
    steps = evals.groupby([*PANEL_COLUMNS, "series"])["step"].unique()
    last = evals.sort_values("step").groupby("config_hash").tail(1)
    stopped = last[(last["target_accuracy"] > 0) & (last["accuracy"] >= last["target_accuracy"])]
    held = []
    for index, row in stopped.iterrows():
        later = [step for step in steps[tuple(row[[*PANEL_COLUMNS, "series"]])] if step > row["step"]]
        held.append(evals.loc[[index] * len(later)].assign(step=later))  # copies keep the columns' dtypes
    return pd.concat([evals, *held], ignore_index=True) if held else evals


def _mean_and_interval(accuracy) -> pd.DataFrame:
    """seeds, accuracy_mean, accuracy_sd, accuracy_low and accuracy_high (clipped to [0, 1], where accuracies
    lie) of a grouped accuracy column."""
    summary = accuracy.agg(seeds="size", accuracy_mean="mean", accuracy_sd="std")
    half = t_half_width(summary["accuracy_sd"], summary["seeds"])
    return summary.assign(accuracy_low=(summary["accuracy_mean"] - half).clip(lower=0.0),
                          accuracy_high=(summary["accuracy_mean"] + half).clip(upper=1.0))


def _reached_target(runs: pd.DataFrame, evals: pd.DataFrame | None) -> pd.Series:
    """Per run: 1.0 when it reached its target accuracy (a step to target, or any evaluation at or above it),
    0.0 when not, NaN when it had none (target 0)."""
    target = runs["target_accuracy"].where(runs["target_accuracy"] > 0)
    reached = runs["steps_to_target"].notna()
    if evals is not None and len(evals):
        best = evals[evals["status"] == "ok"].groupby("config_hash")["accuracy"].max()
        reached |= runs["config_hash"].map(best) >= target
    return reached.astype(float).where(target.notna())


def _with_numbers(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(**{name: pd.to_numeric(rows[name], errors="coerce") if name in rows else math.nan
                          for name in NUMBER_COLUMNS})


def _with_panel_levels(rows: pd.DataFrame) -> pd.DataFrame:
    """Each row with its panel's chance and floor: the highest any of its rows states, so no series is judged
    against a lower floor than another."""
    panels = rows.groupby(PANEL_COLUMNS)
    return rows.assign(**{level: panels[level].transform("max") for level in LEVELS})
