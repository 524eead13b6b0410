"""Where the time goes, for a setting group's profiled points (metric op_time, profile/op_time.py): at one N, each
series' profiled call split into matrix products, other operators and time outside any operator, beside its
achieved share of the dense-matmul ceiling measured in the same worker; and the share of that ceiling at every N.
A compute-bound call spends most of its time in matrix products and reaches a good part of the ceiling; an
overhead-bound one launches many small operators and reaches little of it.
"""

from __future__ import annotations

import pandas as pd

from ttt_bench.report import figures, frames
from ttt_bench.report.document import Section, Table
from ttt_bench.report.tables import shown
from ttt_bench.results import PROFILE_MEASUREMENTS

TABLE_COLUMNS = ["series", "measurement", "status", "time_ms", "profiler_inflation", "achieved_tflops_per_s",
                 "matmul_tflops_per_s", "ceiling_share", "matmul_time_share", "other_time_share",
                 "outside_time_share", "ops_per_call", "time_per_op_us"]
PROFILER_CAVEAT = ("The profiler adds its own cost to every operator, so a call of many small operators is inflated "
                   "most: read the shares, not the profiled milliseconds, and the time column (measured without the "
                   "profiler) for the speed.")


def shares(points: pd.DataFrame) -> pd.DataFrame:
    """`points` (frames.scaling_points) with the derived columns: achieved TFLOP/s and its share of the point's own
    dense-matmul ceiling (the same worker, dtype and threads), the profiled call's shares in matrix products, in
    other operators and outside any operator (clipped at 0: medians over seeds need not add up), and the
    unprofiled time per operator launched, and how much slower the profiled call ran than the timed one."""
    profiled = points["profiled_time_ms"]
    achieved = frames.achieved_tflops_per_s(points)
    matmul_share = points["matmul_time_ms"] / profiled
    other_share = points["other_time_ms"] / profiled
    return points.assign(
        achieved_tflops_per_s=achieved, ceiling_share=achieved / points["matmul_tflops_per_s"],
        matmul_time_share=matmul_share, other_time_share=other_share,
        outside_time_share=(1.0 - matmul_share - other_share).clip(lower=0.0),
        time_per_op_us=1000.0 * points["time_ms"] / points["ops_per_call"],
        profiler_inflation=profiled / points["time_ms"])


def profiled_seq_len(points: pd.DataFrame) -> int | None:
    """The N the split is shown at: the one the most series were profiled at, the largest of those (None: none)."""
    profiled = points[(points["status"] == "ok") & points["profiled_time_ms"].notna()]
    if profiled.empty:
        return None
    counts = profiled.groupby("seq_len")["series"].nunique()
    return int(counts[counts == counts.max()].index.max())


def section(writer, points: pd.DataFrame, setting: str, suffix: str) -> Section:
    """The section of one setting group: `points` its frames.scaling_points (any passes); `writer` saves figures
    (build._SectionWriter)."""
    title = f"Where the time goes ({setting})"
    seq_len = profiled_seq_len(points)
    if seq_len is None:
        return Section(title, "No operator profiles in these results, so no split of each call into matrix products "
                              "and the rest: add \"op_time\" to the suite's metrics (suites/cpu-layer-bench.toml "
                              "lists it).")
    at = shares(points[points["seq_len"] == seq_len])
    order = {measurement: index for index, measurement in enumerate(PROFILE_MEASUREMENTS)}
    at = at.assign(_order=at["measurement"].map(order)).sort_values(["_order", "series"]).drop(columns="_order")
    stem = writer.save(figures.time_split(at, f"{setting}; N = {seq_len}"), f"time-split{suffix}")
    elsewhere = sorted(set(points.loc[points["profiled_time_ms"].notna() & (points["status"] == "ok"), "series"])
                       - set(at["series"]))
    caption = (f"Each series' call at N = {seq_len} tokens (the N the most series were profiled at), run under "
               f"torch.profiler (metric op_time): the share of its profiled wall-clock spent in matrix products (the "
               f"self time of the operators the FLOP policy counts: mm, bmm, baddbmm, fused attention kernels, "
               f"triangular solves), in every other operator (elementwise work, norms, copies, concatenation), and "
               f"outside any operator (the Python between operators, the autograd engine's work around each backward "
               f"node, a hand-written backward's Python; on a GPU, the device waiting for the host); bars sorted by "
               f"their matrix-product share. How to read it: a "
               f"compute-bound call is mostly matrix products and reaches a high share of the dense-matmul ceiling "
               f"(the table: achieved TFLOP/s over a dense matmul of the same dtype measured in the same worker); an "
               f"overhead-bound call reaches a low share and launches many small operators, each taking a few "
               f"microseconds (operators per call, and the unprofiled time per operator). {PROFILER_CAVEAT} The "
               f"table's profiled / unprofiled time says by how much per call: the further above 1, the more the "
               f"small operators' shares are overstated against the matrix products'. A series that did not run at "
               f"this N is named with its status and drawn without a bar.")
    if elsewhere:
        caption += f" Profiled at other N only, so not shown: {', '.join(elsewhere)}."
    table = at[TABLE_COLUMNS].reset_index(drop=True)
    return Section(title, caption, [stem], [Table(f"At N = {seq_len}", shown(table))])


def ceiling_share_table(points: pd.DataFrame) -> pd.DataFrame:
    """Per series and pass, its share of the dense-matmul ceiling at each N (a column per N; '—' where it did not
    run): achieved TFLOP/s over the ceiling measured in the same worker. Empty without ceilings."""
    timed = shares(points[(points["status"] == "ok") & points["time_ms"].notna()])
    timed = timed[timed["ceiling_share"].notna()]
    if timed.empty:
        return pd.DataFrame()
    wide = timed.pivot_table(index=["series", "measurement"], columns="seq_len", values="ceiling_share",
                             aggfunc="first", sort=False)
    wide = wide[sorted(wide.columns)]
    wide.columns = [f"share of the ceiling at N = {seq_len} (fraction)" for seq_len in wide.columns]
    order = {measurement: index for index, measurement in enumerate(PROFILE_MEASUREMENTS)}
    wide = wide.reset_index()
    wide = wide.assign(_order=wide["measurement"].map(order)).sort_values(["series", "_order"])
    return wide.drop(columns="_order").reset_index(drop=True)
