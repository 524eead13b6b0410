"""The slices of a results dataframe that the report draws: profiling points, training runs, positions and
the cells that did not finish. Each helper reads the tidy rows of ttt_bench.results and nothing else.
"""

from __future__ import annotations

import math

import pandas as pd

from ttt_bench.report.settings import series
from ttt_bench.results import (
    DEFAULT_MEASUREMENTS,
    EVAL_MEASUREMENT,
    INFERENCE_PASSES,
    MEASUREMENT_OF_PASS,
    NOISY_SPREAD,
    POSITION_MEASUREMENT,
    PROFILE_MEASUREMENTS,
    TRAIN_MEASUREMENT,
)

SETTING_COLUMNS = ("device", "dtype", "batch", "d_model", "n_heads")  # fixed within one scaling figure
POINT_METRICS = ("time_ms", "time_p20_ms", "time_p80_ms", "peak_bytes", "flops", "useful_flops",
                 "matmul_tflops_per_s", "memory_budget_bytes", "tokens_per_s", "state_bytes", "state_bytes_stated",
                 "compile_s", "compile_error", "eager_time_ms", "compile_speedup", "compile_speedup_spread",
                 "profiled_time_ms", "matmul_time_ms", "other_time_ms", "matmul_time_share", "ops_per_call")
TRAINING_MEASUREMENTS = DEFAULT_MEASUREMENTS  # forward and forward + backward: what a training step runs
INFERENCE_MEASUREMENTS = tuple(MEASUREMENT_OF_PASS[name] for name in INFERENCE_PASSES)  # prefill and decode
FAILURE_COLUMNS = ["variant", "task", "seq_len", "measurement", "status", "message"]


def profile_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return _rows_of(frame, PROFILE_MEASUREMENTS)


def training_mode_rows(profile: pd.DataFrame) -> pd.DataFrame:
    """The profiling rows of the training passes (forward, forward + backward)."""
    return _rows_of(profile, TRAINING_MEASUREMENTS)


def inference_rows(profile: pd.DataFrame) -> pd.DataFrame:
    """The profiling rows of the inference passes (prefill, decode)."""
    return _rows_of(profile, INFERENCE_MEASUREMENTS)


def train_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return _rows_of(frame, (TRAIN_MEASUREMENT,))


def eval_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The evaluations during training: a point of a learning curve each."""
    return _rows_of(frame, (EVAL_MEASUREMENT,))


def position_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return _rows_of(frame, (POSITION_MEASUREMENT,))


def _rows_of(frame: pd.DataFrame, measurements: tuple[str, ...]) -> pd.DataFrame:
    if frame.empty or "measurement" not in frame:
        return frame.iloc[0:0]
    return frame[frame["measurement"].isin(measurements)]


def setting_groups(profile: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The profiling rows split by device, dtype, batch, width and heads: a scaling curve only makes sense
    with those fixed. Each group comes with a title naming its setting."""
    groups = []
    for key, rows in profile.groupby(list(SETTING_COLUMNS), sort=True):
        device, dtype, batch, d_model, n_heads = key
        groups.append((f"{device}, {dtype}, batch {batch}, D = {d_model}, {n_heads} heads", rows))
    return groups


def scaling_points(profile: pd.DataFrame, placed_by: tuple[str, ...] = ("seq_len",)) -> pd.DataFrame:
    """One row per series, measurement and N: 'ok' when any seed ran, with the medians over the seeds that did;
    otherwise the first failure's status. Rows set up differently in any config column, measure setting or
    thread count are separate series (ttt_bench.report.settings), never averaged together. A point is `noisy`
    when a seed's timing was (`noise` gives why). Sorted by series and N. `placed_by`: the columns a point is
    drawn at (another x axis, such as the mini-batch size, before N); they do not name a series."""
    keys = ["series", "measurement", *placed_by]
    found = series(profile, placed_by=placed_by)
    rows = profile.assign(series=found.labels, settings=found.settings, noise=noise_reasons(profile),
                          time_spread=timing_spread(profile))
    ok = rows[rows["status"] == "ok"]
    metrics = [column for column in POINT_METRICS if column in rows]
    medians = ok.groupby(keys)[metrics].median(numeric_only=True) if len(ok) else None
    grouped = rows.groupby(keys)
    points = grouped[["variant", "layer", "settings"]].first()
    points["status"] = grouped["status"].agg(lambda s: "ok" if (s == "ok").any() else s.iloc[0])
    points["noise"] = ok.groupby(keys)["noise"].agg(lambda s: "; ".join(dict.fromkeys(r for r in s if r)))
    points["noise"] = points["noise"].fillna("")
    points["noisy"] = points["noise"] != ""
    points["time_spread"] = ok.groupby(keys)["time_spread"].max()
    if medians is not None:
        points = points.join(medians)
    for column in POINT_METRICS:
        if column not in points:
            points[column] = float("nan")
    return points.reset_index().sort_values(keys).reset_index(drop=True)


def noise_reasons(profile: pd.DataFrame) -> pd.Series:
    """Per row: why its timing is not a result ('' when it is one). Its calls spread beyond NOISY_SPREAD (p80 /
    p20; the row's `noisy` flag, or for folders from before it the spread its p20 and p80 give), or its forward
    took longer than the same cell's forward + backward, which only contention for the cores does."""
    spread = timing_spread(profile)
    flagged = profile["noisy"] if "noisy" in profile else pd.Series(None, index=profile.index, dtype=object)
    flagged = flagged.where(flagged.notna(), spread > NOISY_SPREAD).fillna(False).astype(bool)
    reasons = pd.Series("", index=profile.index, dtype=object)
    reasons[flagged] = [f"spread p80/p20 {value:.2g}x > {NOISY_SPREAD:g}" if math.isfinite(value) else
                        "flagged noisy by the run" for value in spread[flagged]]
    ok = profile[(profile["status"] == "ok") & profile["time_ms"].notna()]
    times = ok.pivot_table(index="config_hash", columns="measurement", values="time_ms", aggfunc="median")
    if {"forward", "forward_backward"} <= set(times.columns):
        inverted = times[times["forward"] > times["forward_backward"]]
        for config_hash, cell in inverted.iterrows():
            text = (f"forward {cell['forward']:.3g} ms > forward + backward {cell['forward_backward']:.3g} ms "
                    f"in the same cell")
            index = ok.index[ok["config_hash"] == config_hash]
            reasons[index] = [f"{old}; {text}" if old else text for old in reasons[index]]
    return reasons


def timing_spread(profile: pd.DataFrame) -> pd.Series:
    """Per row: p80 / p20 of its timed calls, as the run stored it or, in folders from before, from p20 and p80."""
    stored = profile["time_spread"] if "time_spread" in profile else pd.Series(math.nan, index=profile.index)
    return pd.to_numeric(stored, errors="coerce").fillna(profile["time_p80_ms"] / profile["time_p20_ms"])


def noisy_points(points: pd.DataFrame) -> pd.DataFrame:
    """The noisy points of scaling_points: series, pass, N, median time, the widest spread of its seeds, why."""
    noisy = points[points["noisy"]]
    return noisy[["series", "measurement", "seq_len", "time_ms", "time_spread", "noise"]].reset_index(drop=True)


def first_out_of_memory_seq_len(points: pd.DataFrame) -> float:
    """The smallest N past the largest that ran ('ok') whose status is 'oom': where one variant's points (of one
    measurement) stopped fitting. NaN when none did."""
    ok = points[points["status"] == "ok"]
    largest_ok = ok["seq_len"].max() if len(ok) else 0
    failing = points[(points["status"] == "oom") & (points["seq_len"] > largest_ok)]
    return failing["seq_len"].min() if len(failing) else math.nan


def achieved_tflops_per_s(points: pd.DataFrame) -> pd.Series:
    """The analytic FLOPs of a point over its median time, in TFLOP/s (NaN without a time)."""
    return points["flops"] / (points["time_ms"] * 1e-3) / 1e12


def series_labels(frame: pd.DataFrame) -> pd.Series:
    """Per profiling or training row, the series the report draws it in: profiling rows within their setting
    group (setting_groups), against N; training rows within their task and N panel."""
    profile, train = profile_rows(frame), train_rows(frame)
    labels = [series(rows, placed_by=("seq_len",)).labels for _, rows in setting_groups(profile)]
    if len(train):
        labels.append(series(train, panels=("task", "seq_len")).labels)
    return pd.concat(labels) if labels else pd.Series(dtype=object)


def failed_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell that did not end 'ok', once per cell and measurement kind, with its status and message; the
    variant named with its settings where it ran under several (ttt_bench.report.settings)."""
    if frame.empty:
        return pd.DataFrame(columns=FAILURE_COLUMNS)
    failed = frame[(frame["status"] != "ok") & (frame["measurement"] != POSITION_MEASUREMENT)].copy()
    for column in FAILURE_COLUMNS:
        if column not in failed:
            failed[column] = None
    if len(failed):
        failed["variant"] = series_labels(frame).loc[failed.index]
    failed["message"] = failed["message"].fillna("")
    failed = failed.drop_duplicates(subset=["config_hash", "measurement"] if "config_hash" in failed else None)
    return failed.sort_values(["status", "variant", "seq_len"])[FAILURE_COLUMNS].reset_index(drop=True)
