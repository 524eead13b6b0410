"""Time and memory against the mini-batch size b (the knob `mini_batch` of the TTT layers: tokens per inner
gradient step), for a setting group whose rows sweep it (suites/mini-batch.toml): a small b runs many small
sequential steps, a large one materialises b x b blocks. The rows hold the knobs a suite set as JSON (`knobs`);
only rows that set mini_batch are read, so a layer at its default b is not guessed at.
"""

from __future__ import annotations

import json

import pandas as pd

from ttt_bench.report import figures, frames
from ttt_bench.report.document import Section, Table
from ttt_bench.report.tables import shown

KNOB = "mini_batch"
TABLE_COLUMNS = ["series", "measurement", "seq_len", KNOB, "status", "time_ms", "time_p20_ms", "time_p80_ms",
                 "noisy", "peak_bytes", "flops"]


def mini_batch_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows whose knobs set the mini-batch size, with it as a column `mini_batch`, the layer as the variant
    and the other knobs in `knobs`: rows that differ in b alone then fall in one series, and rows that differ in
    another knob or setting in separate ones (settings.series names what tells them apart)."""
    if "knobs" not in rows or rows.empty:
        return rows.iloc[0:0]
    knobs = rows["knobs"].map(_knobs)
    has = knobs.map(lambda values: isinstance(values.get(KNOB), int) and not isinstance(values.get(KNOB), bool))
    if not has.any():
        return rows.iloc[0:0]
    knobs = knobs[has]
    others = knobs.map(lambda values: json.dumps({k: v for k, v in values.items() if k != KNOB}, sort_keys=True))
    return rows[has].assign(**{KNOB: knobs.map(lambda values: values[KNOB]), "knobs": others,
                               "variant": rows.loc[has, "layer"].fillna(rows.loc[has, "variant"])})


def section(writer, rows: pd.DataFrame, setting: str, suffix: str) -> Section | None:
    """The section of one setting group's profiling `rows`; None where no series of them holds two b or more."""
    swept = mini_batch_rows(rows)
    if swept.empty or swept.groupby(["variant", "knobs"])[KNOB].nunique().max() < 2:
        return None
    points = frames.scaling_points(swept, placed_by=(KNOB, "seq_len"))
    several_lengths = points.groupby("series")["seq_len"].transform("nunique") > 1
    points["series"] = points["series"].where(~several_lengths,
                                              points["series"] + ", N = " + points["seq_len"].astype(str))
    writer.palette.learn_series(points["series"], points["layer"])
    title = f"Time and memory vs mini-batch size ({setting})"
    stem = writer.save(figures.mini_batch(points, writer.palette, f"{setting}; N = "
                                          f"{', '.join(map(str, sorted(points['seq_len'].unique())))}"),
                       f"mini-batch{suffix}")
    failed = points[points["status"] != "ok"]
    caption = ("Against the mini-batch size b (tokens per inner gradient step, the knob `mini_batch`; log2 axis), "
               "one line per layer (and per setting where its rows were measured under several): the median "
               "wall-clock time per call (ms, band p20-p80, a hollow marker where the timing is noisy) and the peak "
               "tracked memory of the call (MiB = 2^20 bytes), one column per pass. A small b runs N / b sequential "
               "steps of small operators (b = 1 is token by token); a large one materialises b x b blocks per step "
               "and does more work within each. Only rows whose suite set `mini_batch` are drawn.")
    if len(failed):
        caption += (f" {len(failed)} points did not finish and are not drawn; the table gives their status (and "
                    f"Cells that did not finish their message).")
    table = points.sort_values(["series", "measurement", KNOB])[TABLE_COLUMNS].reset_index(drop=True)
    return Section(title, caption, [stem], [Table("Points", shown(table))])


def _knobs(text: object) -> dict:
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
