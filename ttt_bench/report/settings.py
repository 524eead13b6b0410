"""How a row was set up, as named settings: its config columns (JSON ones such as knobs split into their keys),
the suite's [measure] settings (the `measure_settings` column) and the threads torch ran on. The report draws
rows whose settings differ as separate series and says which setting tells them apart; compare names every
setting that differs between two sets and never pairs rows across one without saying so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from ttt_bench.results import COLUMNS

THREADS = "threads"
NOT_RECORDED = "not recorded"  # a setting the row has no value for: folders from before it was stored
UNRECORDED_MEASURE = "measure settings not recorded"  # said of a row written before measure_settings existed
# Columns a row may differ in and still be one point: seeds are aggregated, the hash follows from the rest.
AGGREGATED = ("seed", "config_hash")
CONFIG_COLUMNS = tuple(c.name for c in COLUMNS if c.kind == "config" and c.name not in AGGREGATED)


def setting_text(value: object) -> str:
    """One text per value, so that 256, 256.0 and '256' read alike; None as 'unset' (a suite key left out)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unset"
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def measure_settings(frame: pd.DataFrame) -> pd.DataFrame:
    """Per row of `frame`, a text column per [measure] setting (its key), `threads` first: the suite's value, or
    where the suite left it unset the count the worker ran with ('torch default 2'), or for a row without
    measure settings (written before they were stored) the environment's count as it is. Other settings a row
    did not record are NOT_RECORDED. Columns in the order first met."""
    texts = frame["measure_settings"] if "measure_settings" in frame else pd.Series(None, index=frame.index)
    parsed = {text: json.loads(text) for text in texts.dropna().unique()}
    environment = frame[THREADS] if THREADS in frame else pd.Series(None, index=frame.index, dtype=object)
    rows = []
    for text, ran_with in zip(texts, environment):
        settings = parsed.get(text) if isinstance(text, str) else None
        threads = NOT_RECORDED if pd.isna(ran_with) else setting_text(ran_with)
        if settings is not None and settings.get(THREADS) is not None:
            threads = setting_text(settings[THREADS])
        elif settings is not None and threads != NOT_RECORDED:
            threads = f"torch default {threads}"
        rows.append({THREADS: threads, **{key: setting_text(value) for key, value in (settings or {}).items()
                                         if key != THREADS}})
    columns = list(dict.fromkeys([THREADS, *(key for row in rows for key in row)]))
    return pd.DataFrame(rows, index=frame.index, columns=columns).fillna(NOT_RECORDED)


def measure_recorded(frame: pd.DataFrame) -> pd.Series:
    """Per row: whether its measure settings were stored (False for folders from before the column)."""
    return frame["measure_settings"].notna() if "measure_settings" in frame else pd.Series(False, index=frame.index)


def row_settings(frame: pd.DataFrame, placed_by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Per row, a text column per setting: every config column but the variant, the seed, the hash and the
    columns in `placed_by` (the axes and panels a point is drawn at), a JSON column split into its keys, then
    the measure settings. A key met twice (a knob named like a training setting) keeps its first column."""
    columns: dict[str, pd.Series] = {}
    for name in CONFIG_COLUMNS:
        if name in ("variant", "measure_settings", *placed_by) or name not in frame:
            continue
        values = frame[name]
        objects = {text: _json_object(text) for text in values.dropna().unique()}
        if objects and all(isinstance(value, dict) for value in objects.values()):
            keys = dict.fromkeys(key for value in objects.values() for key in value)
            for key in keys:
                columns.setdefault(key, values.map(lambda text, key=key, objects=objects: NOT_RECORDED
                                                   if pd.isna(text) else setting_text(objects[text].get(key))))
        else:
            columns.setdefault(name, values.map(lambda value: NOT_RECORDED if pd.isna(value) else setting_text(value)))
    measured = measure_settings(frame)
    for key in measured.columns:
        columns.setdefault(key, measured[key])
    return pd.DataFrame(columns, index=frame.index)


@dataclass(frozen=True)
class Series:
    """Which series each row belongs to: its variant, and where rows of one variant were set up differently, the
    settings that tell them apart."""

    labels: pd.Series  # per row: 'attention-sdpa-causal (threads=1)', or the variant alone
    settings: pd.Series  # per row: the label's settings part ('threads=1'), '' where the variant alone names it
    differing: dict[str, list[str]]  # each setting named in the labels -> its values, in order first met


def series(frame: pd.DataFrame, placed_by: tuple[str, ...] = (), panels: tuple[str, ...] = ()) -> Series:
    """Series of `frame`'s rows. A setting is named when the rows of some variant (within one of the `panels`)
    hold more than one value of it; it is then named in every label, so that series of different variants
    measured alike read alike. A row without measure settings (an older folder) beside rows with them says so."""
    named = row_settings(frame, (*placed_by, *panels))
    recorded = measure_recorded(frame)
    keys: set[str] = set()
    unrecorded_beside_recorded = False
    for index in frame.groupby(["variant", *panels] if panels else "variant", dropna=False).groups.values():
        block = named.loc[index]
        keys |= {key for key in block.columns if len(set(block[key]) - {NOT_RECORDED}) > 1}
        unrecorded_beside_recorded |= bool(recorded.loc[index].any() and not recorded.loc[index].all())
    keys_in_order = [key for key in named.columns if key in keys]
    settings = []
    for (_, values), has_record in zip(named[keys_in_order].iterrows(), recorded):
        parts = [f"{key}={value}" for key, value in values.items() if value != NOT_RECORDED]
        if unrecorded_beside_recorded and not has_record:
            parts.append(UNRECORDED_MEASURE)
        settings.append(", ".join(parts))
    settings = pd.Series(settings, index=frame.index, dtype=object)
    variants = frame["variant"].astype(str)
    labels = variants.where(settings == "", variants + " (" + settings + ")")
    differing = {key: list(dict.fromkeys(v for v in named[key] if v != NOT_RECORDED)) for key in keys_in_order}
    if unrecorded_beside_recorded:
        differing[UNRECORDED_MEASURE] = []
    return Series(labels, settings, differing)


def describe_differing(differing: dict[str, list[str]]) -> str:
    """'threads (1, 2)' for a section's text: each setting the series are told apart by, with its values."""
    return "; ".join(f"{key} ({', '.join(values)})" if values else key for key, values in differing.items())


def name_the_settings(sections: list, rows: pd.DataFrame) -> None:
    """Where `rows` (placed by N) hold several settings, the first of `sections` with a figure says which, once."""
    differing = series(rows, placed_by=("seq_len",)).differing
    drawn = [section for section in sections if section.figures]
    if differing and drawn:
        drawn[0].caption = (f"These results hold several settings: {describe_differing(differing)}. Each is its "
                            f"own series, named in every figure and table; rows measured differently are never "
                            f"averaged. " + drawn[0].caption)


def _json_object(text: object) -> object:
    if not isinstance(text, str) or not text.startswith("{"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None
