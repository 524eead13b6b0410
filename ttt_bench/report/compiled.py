"""Compiled against eager: where a profiling cell was measured both as written (backend 'eager') and through
torch.compile (backend 'compile') with every other setting alike, the two times side by side, the speed-up, and
what compiling cost (its time, and how far the compiled outputs are from eager's).
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
        return Section(title, "The compiled cells here have no finished eager cell measured alike (same variant, "
                              "pass, N and every other setting) to compare with: run the suite with backend = "
                              "[\"eager\", \"compile\"].")
    caption = (f"Per series (named without its backend), pass and sequence length N (tokens) where a cell ran both "
               f"eager and through torch.compile with every other setting alike: the median eager and compiled times "
               f"(ms per call; decode: per generated token), the speed-up eager / compiled (x; above 1 the compiled "
               f"one is faster), the compile time (s: wall-clock of the compiled pass's first call, which compiles "
               f"it, kept out of the timed calls) and the compile error (relative: max |compiled - eager| / max "
               f"|eager| of the outputs on the same input, checked before timing). No speed-up is given where either "
               f"timing is noisy (spread p80/p20 > {NOISY_SPREAD:g}): the cell says which. Tracked peak memory is "
               f"measured on eager cells only.")
    return Section(title, caption, tables=[Table("Compiled against eager", shown(table))])


def backend_twins(rows: pd.DataFrame) -> pd.DataFrame:
    """Per series of `rows` (settings.series, placed by N): `base`, its name without the backend (series that share
    it differ in the backend alone), and its `backend` ('eager' where the rows have none)."""
    labels = series(rows, placed_by=("seq_len",)).labels
    unbackended = series(rows, placed_by=("seq_len", "backend")).labels
    backend = rows["backend"].fillna("eager") if "backend" in rows else pd.Series("eager", index=rows.index)
    return pd.DataFrame({"series": labels, "base": unbackended, "backend": backend}).drop_duplicates("series")


def compiled_against_eager(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per series, measurement and N with a finished eager and a finished compiled point: their median
    times, the speed-up (eager / compiled), or why none is given (a noisy timing), and the compiled point's
    compile time and error. Series are named by every setting but the backend (settings.series)."""
    points = frames.scaling_points(rows).merge(backend_twins(rows), on="series", how="left")
    ok = points[(points["status"] == "ok") & points["time_ms"].notna()]
    keys = ["base", "measurement", "seq_len"]
    both = ok[ok["backend"] == "eager"].merge(ok[ok["backend"] == "compile"], on=keys,
                                               suffixes=("_eager", "_compiled"))
    if both.empty:
        return pd.DataFrame(columns=COLUMNS)
    speedups = []
    for pair in both.itertuples(index=False):
        noisy = [f"{who} timing noisy ({noise})" for who, noise in (("eager", pair.noise_eager),
                                                                    ("compiled", pair.noise_compiled)) if noise]
        speedups.append(f"not given: {'; '.join(noisy)}" if noisy else pair.time_ms_eager / pair.time_ms_compiled)
    table = pd.DataFrame({
        "series": both["base"], "measurement": both["measurement"], "seq_len": both["seq_len"],
        "eager_time_ms": both["time_ms_eager"], "compiled_time_ms": both["time_ms_compiled"],
        "compile_speedup": speedups, "compile_s": both["compile_s_compiled"],
        "compile_error": both["compile_error_compiled"],
    })
    order = {measurement: index for index, measurement in enumerate(PROFILE_MEASUREMENTS)}
    table = table.assign(_order=table["measurement"].map(order)).sort_values(["series", "_order", "seq_len"])
    return table.drop(columns="_order").reset_index(drop=True)[COLUMNS]
