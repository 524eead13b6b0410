"""The slices of a results dataframe that the report draws: profiling points, training runs, positions and
the cells that did not finish. Each helper reads the tidy rows of ttt_bench.results and nothing else.
"""

from __future__ import annotations

import math

import pandas as pd

from ttt_bench.results import POSITION_MEASUREMENT, PROFILE_MEASUREMENTS, TRAIN_MEASUREMENT

SETTING_COLUMNS = ("device", "dtype", "batch", "d_model", "n_heads")  # fixed within one scaling figure
POINT_METRICS = ("time_ms", "time_p20_ms", "time_p80_ms", "peak_bytes", "flops", "useful_flops",
                 "matmul_tflops_per_s", "memory_budget_bytes")
FAILURE_COLUMNS = ["variant", "task", "seq_len", "measurement", "status", "message"]


def profile_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return _rows_of(frame, PROFILE_MEASUREMENTS)


def train_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return _rows_of(frame, (TRAIN_MEASUREMENT,))


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


def scaling_points(profile: pd.DataFrame) -> pd.DataFrame:
    """One row per variant, measurement and N: 'ok' when any seed ran, with the medians over the seeds that
    did; otherwise the first failure's status. Sorted by N."""
    keys = ["variant", "measurement", "seq_len"]
    ok = profile[profile["status"] == "ok"]
    metrics = [column for column in POINT_METRICS if column in profile]
    medians = ok.groupby(keys)[metrics].median(numeric_only=True) if len(ok) else None
    statuses = profile.groupby(keys)["status"].agg(lambda s: "ok" if (s == "ok").any() else s.iloc[0])
    points = statuses.to_frame()
    if medians is not None:
        points = points.join(medians)
    for column in POINT_METRICS:
        if column not in points:
            points[column] = float("nan")
    return points.reset_index().sort_values(keys).reset_index(drop=True)


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


def failed_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell that did not end 'ok', once per cell and measurement kind, with its status and message."""
    if frame.empty:
        return pd.DataFrame(columns=FAILURE_COLUMNS)
    failed = frame[(frame["status"] != "ok") & (frame["measurement"] != POSITION_MEASUREMENT)].copy()
    for column in FAILURE_COLUMNS:
        if column not in failed:
            failed[column] = None
    failed["message"] = failed["message"].fillna("")
    failed = failed.drop_duplicates(subset=["config_hash", "measurement"] if "config_hash" in failed else None)
    return failed.sort_values(["status", "variant", "seq_len"])[FAILURE_COLUMNS].reset_index(drop=True)
