"""Compiled against eager: for each profiling cell run through torch.compile (backend 'compile'), its time beside
the eager layer's, both timed in that cell in interleaved rounds (profile/measure.py: timed_against_eager), the
speed-up, and what compiling cost (its time, and how far the compiled outputs are from eager's). Times of eager and
compiled cells measured apart are not divided: on a shared machine they drift by more than compiling gains.
"""

from __future__ import annotations

import pandas as pd

from ttt_bench.report import frames
from ttt_bench.report.document import Section, Table
from ttt_bench.report.settings import series
from ttt_bench.report.tables import shown
from ttt_bench.results import NOISY_SPREAD, PROFILE_MEASUREMENTS

COLUMNS = ["series", "measurement", "seq_len", "eager_time_ms", "compiled_time_ms", "compile_speedup", "compile_s",
           "compile_error"]


def section(rows: pd.DataFrame, setting: str) -> Section | None:
    """The section of one setting group's profiling `rows`; None where none of them was compiled."""
    if "backend" not in rows or not (rows["backend"] == "compile").any():
        return None
    title = f"Compiled against eager ({setting})"
    table = compiled_against_eager(rows)
    if table.empty:
        return Section(title, "No compiled cell here finished its timings (see Cells that did not finish).")
    caption = (f"Per compiled series (named without its backend), pass and sequence length N (tokens): the median "
               f"times of the eager layer and of the compiled one (ms per call; decode: per generated token), both "
               f"timed in the compiled cell in interleaved rounds, so a drift of the machine moves both alike; the "
               f"speed-up, the median over those rounds of eager / compiled (x; above 1 the compiled one is faster); "
               f"the compile time (s: wall-clock of the compiled pass's first call, which compiles it, kept out of the "
               f"timed calls; dynamo's caches are cleared per cell, inductor's on-disk caches are not) and the "
               f"compile error (relative: max |compiled - eager| / max |eager| of the outputs on the same input, "
               f"checked before timing). No speed-up is given where the per-round speed-ups or the compiled timing "
               f"spread beyond p80/p20 = {NOISY_SPREAD:g}: the cell says which. Tracked peak memory is measured on "
               f"eager cells only.")
    return Section(title, caption, tables=[Table("Compiled against eager", shown(table))])


def backend_twins(rows: pd.DataFrame) -> pd.DataFrame:
    """Per series of `rows` (settings.series, placed by N): `base`, its name without the backend (series that share
    it differ in the backend alone), and its `backend` ('eager' where the rows have none)."""
    labels = series(rows, placed_by=("seq_len",)).labels
    unbackended = series(rows, placed_by=("seq_len", "backend")).labels
    backend = rows["backend"].fillna("eager") if "backend" in rows else pd.Series("eager", index=rows.index)
    return pd.DataFrame({"series": labels, "base": unbackended, "backend": backend}).drop_duplicates("series")


def compiled_against_eager(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per compiled series, measurement and N that finished: the eager and compiled medians, both timed in
    the compiled cell in interleaved rounds, the speed-up (the median of the per-round eager / compiled) or why
    none is given (the per-round speed-ups or the compiled timing spread beyond NOISY_SPREAD), and the compile time
    and error. Series are named by every setting but the backend (settings.series)."""
    points = frames.scaling_points(rows).merge(backend_twins(rows), on="series", how="left")
    both = points[(points["backend"] == "compile") & (points["status"] == "ok") & points["time_ms"].notna()]
    if both.empty:
        return pd.DataFrame(columns=COLUMNS)
    speedups = []
    for point in both.itertuples(index=False):
        noisy = [f"compiled timing noisy ({point.noise})"] if point.noise else []
        if point.compile_speedup_spread > NOISY_SPREAD:
            noisy.append(f"its per-round speed-ups spread {point.compile_speedup_spread:.2g}x > {NOISY_SPREAD:g}")
        speedups.append(f"not given: {'; '.join(noisy)}" if noisy else point.compile_speedup)
    table = pd.DataFrame({
        "series": both["base"], "measurement": both["measurement"], "seq_len": both["seq_len"],
        "eager_time_ms": both["eager_time_ms"], "compiled_time_ms": both["time_ms"], "compile_speedup": speedups,
        "compile_s": both["compile_s"], "compile_error": both["compile_error"],
    })
    order = {measurement: index for index, measurement in enumerate(PROFILE_MEASUREMENTS)}
    table = table.assign(_order=table["measurement"].map(order)).sort_values(["series", "_order", "seq_len"])
    return table.drop(columns="_order").reset_index(drop=True)[COLUMNS]
