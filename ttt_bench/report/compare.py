"""Two result sets side by side (two commits, two GPUs, two settings): ratio tables per metric, status changes,
and a verdict a CI job can act on (`run_compare` returns 1 when a regression exceeds its threshold).

Cells are matched on their config columns and their measure settings (ttt_bench.report.settings: the suite's
[measure] settings and the threads torch ran on), not their config hash: two settings of one suite hash
differently. A column holding one value in A and another single value in B (dtype float32 vs bfloat16, device cpu
vs cuda, threads 2 vs 1) is what is being compared: it leaves the match key and is named at the top of the
document, before any verdict. Rows of one set that differ in any of them are never averaged. Where a measure
setting differs, a timing (any metric not `deterministic`) compares the settings, not the code: its rows say
"better" or "worse" with the setting named, and are not counted as regressions or improvements.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ttt_bench.errors import ConfigError
from ttt_bench.report.settings import NOT_RECORDED, measure_recorded, measure_settings
from ttt_bench.report.tables import MISSING, markdown_table  # MISSING also keys nulls: they match each other
from ttt_bench.report.units import METRICS, label
from ttt_bench.results import FAILED_STATUSES, Column, load_results

DEFAULT_METRICS = tuple(name for name, metric in METRICS.items() if metric.compared)
DEFAULT_THRESHOLD = 0.10  # relative change: 0.1 means 10% worse than A
ALL_METRICS = "*"  # the thresholds key of the default for every metric without its own

KEY_COLUMNS = ("suite", "variant", "layer", "knobs", "seq_len", "batch", "d_model", "n_heads", "dtype", "device",
               "seed", "measurement", "task", "task_options", "n_layers", "match_params", "model_settings",
               "train_settings", "position", "step")
# Which rows of a cell are meant, not how it was set up: never treated as the compared setting.
ROW_COLUMNS = ("measurement", "position", "step")
ENVIRONMENT_COLUMNS = ("git_commit", "gpu_name", "cpu_model", "torch_version")
REGRESSION, IMPROVEMENT = "regression", "improvement"
# A timing that moved beyond its threshold between sets measured under different settings: no verdict on the code.
WORSE, BETTER = "worse", "better"
# Config columns another column names: a variant labels its layer and knobs, a task label its options.
NAMED_BY = {"layer": "variant", "knobs": "variant", "task_options": "task"}
# A ratio exactly on the threshold is not beyond it; float rounding must not tip it over (1.1 / 1.0 > 1.1).
RELATIVE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Change:
    """A column with one value in A and another in B."""

    column: str
    a: str
    b: str


@dataclass
class Comparison:
    key_columns: list[str]  # the columns cells were matched on
    settings: list[Change]  # the compared config setting(s): dropped from the key
    measure_changes: list[Change]  # measure settings with one value in A and another in B: dropped from the key
    measure_varying: list[Change]  # measure settings with several values in a set, differing: kept in the key
    unrecorded: list[str]  # 'A' and/or 'B': a set whose rows have no measure settings (an older folder)
    environment: list[Change]  # environment columns that differ (commit, GPU/CPU, torch)
    sets: tuple[dict[str, str], dict[str, str]]  # a short description of A and of B: suite, commit, device, ...
    thresholds: dict[str, float]  # per compared metric, relative
    tables: dict[str, pd.DataFrame]  # metric -> key columns, a, b (stored units), ratio (B/A), verdict
    status_changes: pd.DataFrame  # per cell: key columns (without the row columns), a_status, b_status, ...
    only_in_a: pd.DataFrame  # the cells (key columns without the row columns) of one set only
    only_in_b: pd.DataFrame
    cells_compared: int
    varying_columns: list[str]  # key columns with more than one value among all rows of A and B
    regressions: int = field(init=False)
    improvements: int = field(init=False)
    across_settings: int = field(init=False)  # timing rows beyond their threshold whose sets differ in a setting

    def __post_init__(self) -> None:
        verdicts = [*(t.verdict for t in self.tables.values()), self.status_changes.verdict]
        self.regressions = int(sum((v == REGRESSION).sum() for v in verdicts))
        self.improvements = int(sum((v == IMPROVEMENT).sum() for v in verdicts))
        self.across_settings = int(sum(v.astype(str).str.startswith((WORSE, BETTER)).sum() for v in verdicts))

    @property
    def failed(self) -> bool:
        return self.regressions > 0


def parse_thresholds(texts: list[str]) -> dict[str, float]:
    """`0.1` sets the default for every metric, `time_ms=0.5` one metric's; a later text overrides an earlier."""
    thresholds = {}
    for text in texts:
        metric, sep, number = text.partition("=")
        if not sep:
            metric, number = ALL_METRICS, text
        metric = metric.strip()
        if metric != ALL_METRICS and metric not in METRICS:
            raise ConfigError(f"threshold {text!r}: unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
        thresholds[metric] = _threshold(number, f"threshold {text!r}")
    return thresholds


def compare_results(a: pd.DataFrame, b: pd.DataFrame, thresholds: dict[str, float] | None = None,
                    metrics: list[str] | None = None) -> Comparison:
    """Match the cells of `a` and `b` and compare `metrics` (default: those of DEFAULT_METRICS both have)."""
    thresholds = dict(thresholds or {})
    for metric, value in thresholds.items():
        if metric != ALL_METRICS and metric not in METRICS:
            raise ConfigError(f"threshold for unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
        _threshold(str(value), f"threshold for {metric!r}")
    for name, frame in (("A", a), ("B", b)):
        missing = [column for column in ("status", "measurement") if column not in frame]
        if frame.empty or missing:
            raise ConfigError(f"set {name} has no ttt-bench result rows (missing columns: {', '.join(missing)})"
                              if missing else f"set {name} has no finished cells")
    metrics = _chosen_metrics(a, b, metrics)

    measured_a, measured_b = measure_settings(a), measure_settings(b)
    unrecorded = [name for name, frame in (("A", a), ("B", b)) if not measure_recorded(frame).any()]
    # A setting one set never recorded cannot be matched on; it stays in the key only where the other set holds
    # several values of it, which are then never averaged together (and pair with nothing).
    measure_keys = [key for key in dict.fromkeys([*measured_a.columns, *measured_b.columns])
                    if _matchable(measured_a, measured_b, key)]
    measured_a, measured_b = (table.reindex(columns=measure_keys, fill_value=NOT_RECORDED)
                              for table in (measured_a, measured_b))
    a = a.drop(columns=measure_keys, errors="ignore").join(measured_a[measure_keys])
    b = b.drop(columns=measure_keys, errors="ignore").join(measured_b[measure_keys])
    present = [column for column in [*KEY_COLUMNS, *measure_keys] if column in a and column in b]
    keys_a, keys_b = (frame[present].apply(lambda column: column.map(_key_text)) for frame in (a, b))
    changes = [
        Change(column, keys_a[column].iloc[0], keys_b[column].iloc[0]) for column in present
        if column not in ROW_COLUMNS and keys_a[column].nunique() == 1 and keys_b[column].nunique() == 1
        and keys_a[column].iloc[0] != keys_b[column].iloc[0]
    ]
    measure_changes = [change for change in changes if change.column in measure_keys]
    measure_varying = [
        Change(key, _values_text(keys_a[key]), _values_text(keys_b[key])) for key in measure_keys
        if key not in {change.column for change in measure_changes}
        and set(keys_a[key]) != set(keys_b[key])
    ]
    key = [column for column in present if column not in {change.column for change in changes}]
    cell_key = [column for column in key if column not in ROW_COLUMNS]
    if not cell_key or "measurement" not in key:
        raise ConfigError(f"nothing to match cells on: the sets share the config columns {', '.join(present)}, "
                          f"and every one but the measurement differs")

    cells_a, cells_b = _collapse(a, keys_a, cell_key, []), _collapse(b, keys_b, cell_key, [])
    common = cells_a.index.intersection(cells_b.index)
    if common.empty:
        raise ConfigError(f"no cell is in both sets (matched on {', '.join(key)}); A has e.g. "
                          f"{_describe_key(cells_a.index[0], cell_key)}, B has e.g. "
                          f"{_describe_key(cells_b.index[0], cell_key)}")
    rows_a, rows_b = _collapse(a, keys_a, key, metrics), _collapse(b, keys_b, key, metrics)
    rows = pd.merge(rows_a, rows_b, how="inner", left_index=True, right_index=True, suffixes=("_a", "_b"))
    resolved = {metric: thresholds.get(metric, thresholds.get(ALL_METRICS, DEFAULT_THRESHOLD)) for metric in metrics}
    across = _describe_changes(measure_changes)
    return Comparison(
        key_columns=key, settings=[change for change in changes if change not in measure_changes],
        measure_changes=measure_changes, measure_varying=measure_varying, unrecorded=unrecorded,
        environment=_environment_changes(a, b), sets=(_describe_set(a), _describe_set(b)), thresholds=resolved,
        tables={metric: _metric_table(rows, metric, resolved[metric],
                                      across if not METRICS[metric].deterministic else "") for metric in metrics},
        status_changes=_status_changes(cells_a.loc[common], cells_b.loc[common]),
        only_in_a=cells_a.index.difference(common, sort=False).to_frame(index=False),
        only_in_b=cells_b.index.difference(common, sort=False).to_frame(index=False),
        cells_compared=len(common),
        varying_columns=[column for column in key if pd.concat([keys_a[column], keys_b[column]]).nunique() > 1],
    )


def format_comparison(comparison: Comparison, name_a: str, name_b: str, notes: tuple[str, ...] = (),
                      only_moved: bool = False) -> str:
    """The comparison as a markdown document: header, summary, one table per metric, status changes; `notes`
    are paragraphs for the header (what the caller decided about the comparison). With `only_moved` a metric's
    table keeps the rows beyond its threshold and, for a deterministic metric, every row whose value changed."""
    c = comparison
    sets = pd.DataFrame([{"set": letter, "name": name, **info}
                         for letter, name, info in (("A", name_a, c.sets[0]), ("B", name_b, c.sets[1]))])
    lines = [f"# Comparison: {name_a} → {name_b}", "", markdown_table(sets), "",
             f"**Measure settings that differ between A and B:** {_settings_text(c)}"]
    if c.settings:
        lines += ["", "Compared setting: " + _describe_changes(c.settings)]
    if c.environment:
        lines += ["", "Environment differences: " + "; ".join(f"{e.column}: {e.a} → {e.b}" for e in c.environment)]
    lines += [
        "", "Thresholds (relative change beyond which a difference counts): " + _describe_thresholds(c.thresholds),
        *(line for note in notes for line in ("", note)),
        "",
        "A cell that was ok in A and failed in B (" + "/".join(FAILED_STATUSES) + ") is a regression whatever the "
        "thresholds. Regressions and improvements are counted per table row: one metric of one measurement, or one "
        "cell's status.",
        "", f"**{_count(c.regressions, REGRESSION)}, {_count(c.improvements, IMPROVEMENT)} beyond the thresholds"
        + (f" ({_count(c.across_settings, 'timing')} beyond them measured under other settings, "
           f"{_describe_changes(c.measure_changes)}: not counted)" if c.across_settings else "")
        + f"; {_count(c.cells_compared, 'cell')} compared, {len(c.only_in_a)} only in A, {len(c.only_in_b)} "
          f"only in B.**",
    ]
    for metric, table in c.tables.items():
        info = METRICS[metric]
        lines += ["", f"## {info.label}", "",
                  f"{info.better.capitalize()} is better; threshold {_percent(c.thresholds[metric])}; "
                  f"{len(table)} rows ok in both sets.", ""]
        if table.empty:
            lines.append("No row has this metric in both sets with both ok.")
            continue
        if only_moved:
            moved = (table.verdict != "") | (info.deterministic & (table.a != table.b))
            unmoved, table = int((~moved).sum()), table[moved].reset_index(drop=True)
            lines.append(_count(unmoved, "row") + (" unchanged" if info.deterministic else " within the threshold")
                         + (", not shown:" if len(table) else "."))
            lines += [""] if len(table) else []
        lines += _table_lines(table, c.varying_columns,
                              lambda identity, table=table, info=info: _shown_metric_table(identity, table, info))
    lines += ["", "## Status changes", ""]
    if c.status_changes.empty:
        lines.append("None: every cell in both sets has the same status.")
    else:
        changes = c.status_changes
        lines += _table_lines(changes, c.varying_columns, lambda identity: identity.assign(**{
            "A status": changes.a_status, "B status": changes.b_status, "B message": changes.b_message,
            "verdict": changes.verdict.map(_bold_verdict)}))
    for name, cells in (("A", c.only_in_a), ("B", c.only_in_b)):
        if len(cells):
            lines += ["", f"## Only in {name} ({_count(len(cells), 'cell')})", ""]
            lines += _table_lines(cells, c.varying_columns, lambda identity: identity)
    return "\n".join(lines) + "\n"


def _settings_text(c: Comparison) -> str:
    """Every measure setting that differs between the sets, and what that does to the comparison."""
    parts = []
    if c.measure_changes:
        parts.append(f"{_describe_changes(c.measure_changes)}. Cells are paired across it; a timing (a metric that "
                     f"is not deterministic) of such a pair compares the settings, not the code: it reads "
                     f"'{WORSE}' or '{BETTER}' with the setting and is not counted as a regression or improvement")
    if c.measure_varying:
        parts.append("; ".join(f"{label(v.column)}: A has {v.a}, B has {v.b}" for v in c.measure_varying)
                     + ". Cells are paired only where these agree")
    if len(c.unrecorded) == 1:
        parts.append(f"set {c.unrecorded[0]} has no measure settings (a folder from before ttt-bench stored them), "
                     f"so they are not compared; threads are compared as its environment recorded them")
    if parts:
        return ". ".join(parts) + "."
    if len(c.unrecorded) == 2:
        return "not known: neither set recorded its measure settings."
    return "none (measure settings and threads are the same)."


def run_compare(dir_a: str | Path, dir_b: str | Path, thresholds: dict[str, float], metrics: list[str] | None,
                out: Path | None = None, strict: bool = False) -> int:
    """Print the comparison (and write it to `out`); 1 when a regression exceeds its threshold, else 0. An
    unreadable cell file is skipped with a warning, or with `strict` refused (CorruptCellFileError, exit 2)."""
    frames = []
    for root in (dir_a, dir_b):
        frame = load_results(root, strict)
        if frame.empty:
            raise ConfigError(f"{root}: the results folder has no finished cells")
        frames.append(frame)
    try:
        comparison = compare_results(*frames, thresholds=thresholds, metrics=metrics)
    except ConfigError as error:
        raise ConfigError(f"comparing {dir_a} (A) with {dir_b} (B): {error}") from None
    return publish_comparison(comparison, str(dir_a), str(dir_b), out)


def publish_comparison(comparison: Comparison, name_a: str, name_b: str, out: Path | None = None,
                       notes: tuple[str, ...] = (), only_moved: bool = False) -> int:
    """Print the comparison's document (and write it to `out`); the exit status: 1 on a regression, else 0."""
    text = format_comparison(comparison, name_a, name_b, notes, only_moved)
    print(text, end="")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return 1 if comparison.failed else 0


def _threshold(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:  # also refuses NaN
        raise ConfigError(f"{what}: the threshold must be a number >= 0 (a relative change: 0.1 means 10%), "
                          f"not {text.strip()!r}")
    return value


def _chosen_metrics(a: pd.DataFrame, b: pd.DataFrame, metrics: list[str] | None) -> list[str]:
    def has(frame: pd.DataFrame, metric: str) -> bool:
        return metric in frame and bool(frame[metric].notna().any())

    if metrics is None:
        return [metric for metric in DEFAULT_METRICS if has(a, metric) and has(b, metric)]
    for metric in metrics:
        if metric not in METRICS:
            raise ConfigError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
        lacking = [name for name, frame in (("A", a), ("B", b)) if not has(frame, metric)]
        if lacking:
            raise ConfigError(f"metric {metric!r} has no value in set {' or '.join(lacking)}")
    return list(dict.fromkeys(metrics))


def _key_text(value: object) -> str:
    """One text per key value, so that 256, 256.0 and '256' match and nulls match each other."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return MISSING
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item"):  # numpy scalars
        return _key_text(value.item())
    return str(value)


def _collapse(frame: pd.DataFrame, keys: pd.DataFrame, key: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per key, in order of first appearance: its status (a failure beats a skip beats ok), that row's
    message, and each metric's median over the ok rows (duplicates within one set are repeated measurements)."""
    rank = frame.status.map(lambda status: 2 if _failed(status) else 1 if status == "skipped" else 0)
    message = frame["message"] if "message" in frame else pd.Series("", index=frame.index)
    values = frame[metrics].apply(pd.to_numeric, errors="coerce").where(frame.status == "ok")
    rows = pd.concat([keys[key], values], axis=1).assign(
        status=frame.status.astype(str), message=message.fillna("").astype(str), rank=rank)
    worst = rows.sort_values("rank", ascending=False, kind="stable").drop_duplicates(key)
    collapsed = worst[["status", "message"]].set_axis(pd.MultiIndex.from_frame(worst[key]))
    if metrics:
        medians = rows.groupby(key, sort=False)[metrics].median()
        collapsed = collapsed.join(medians.set_axis(pd.MultiIndex.from_frame(medians.index.to_frame(index=False))))
    return collapsed.reindex(pd.MultiIndex.from_frame(keys[key].drop_duplicates()))


def _metric_table(rows: pd.DataFrame, metric: str, threshold: float, across: str) -> pd.DataFrame:
    """A, B, B/A and the verdict per row ok in both; `across` names the measure settings the sets differ in, and
    then a change beyond the threshold is 'worse (threads: 2 → 1)' or 'better (...)': no verdict on the code."""
    both = rows[(rows.status_a == "ok") & (rows.status_b == "ok")
                & rows[f"{metric}_a"].notna() & rows[f"{metric}_b"].notna()]
    table = both.index.to_frame(index=False).assign(a=both[f"{metric}_a"].to_numpy(), b=both[f"{metric}_b"].to_numpy())
    table["ratio"] = [_ratio(a, b) for a, b in zip(table.a, table.b)]
    lower_better = METRICS[metric].better == "lower"
    table["verdict"] = [_verdict(ratio, threshold, lower_better) for ratio in table.ratio]
    worse_first = table.ratio if lower_better else -table.ratio
    table = table.assign(_rank=table.verdict.map({REGRESSION: 0, "": 1, IMPROVEMENT: 2}), _worse=-worse_first)
    if across:
        table["verdict"] = table.verdict.map({REGRESSION: f"{WORSE} ({across})", IMPROVEMENT: f"{BETTER} ({across})",
                                              "": ""})
    return table.sort_values(["_rank", "_worse"], kind="stable").drop(columns=["_rank", "_worse"]).reset_index(
        drop=True)


def _ratio(a: float, b: float) -> float:
    if a == 0:
        return 1.0 if b == 0 else math.copysign(math.inf, b)
    return b / a


def _verdict(ratio: float, threshold: float, lower_better: bool) -> str:
    worse = ratio > (1 + threshold) * (1 + RELATIVE_TOLERANCE)
    better = ratio < (1 - threshold) * (1 - RELATIVE_TOLERANCE)
    if lower_better:
        return REGRESSION if worse else IMPROVEMENT if better else ""
    return REGRESSION if better else IMPROVEMENT if worse else ""


def _status_changes(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    changed = a.status != b.status
    table = a.index[changed].to_frame(index=False).assign(
        a_status=a.status[changed].to_numpy(), b_status=b.status[changed].to_numpy(),
        b_message=b.message[changed].fillna("").to_numpy())
    table["verdict"] = [REGRESSION if old == "ok" and _failed(new) else IMPROVEMENT if _failed(old) and new == "ok"
                        else "" for old, new in zip(table.a_status, table.b_status)]
    rank = table.verdict.map({REGRESSION: 0, IMPROVEMENT: 1, "": 2})
    return table.iloc[rank.argsort(kind="stable")].reset_index(drop=True)


def _matchable(measured_a: pd.DataFrame, measured_b: pd.DataFrame, key: str) -> bool:
    recorded = [set(table[key]) - {NOT_RECORDED} if key in table else set() for table in (measured_a, measured_b)]
    return all(recorded) or any(len(values) > 1 for values in recorded)


def _values_text(keys: pd.Series) -> str:
    return ", ".join(sorted(set(keys)))


def _describe_changes(changes: list[Change]) -> str:
    """'threads: 2 → 1; repeats: 5 → 3'."""
    return "; ".join(f"{label(change.column)}: {change.a} → {change.b}" for change in changes)


def _failed(status: str) -> bool:
    return status not in ("ok", "skipped")


def _distinct(frame: pd.DataFrame, column: str) -> str:
    if column not in frame:
        return "unknown"
    values = [_key_text(value) for value in frame[column].dropna().unique()]
    return ", ".join(sorted(values)) or "unknown"


def _environment_changes(a: pd.DataFrame, b: pd.DataFrame) -> list[Change]:
    changes = [Change(column, _distinct(a, column), _distinct(b, column)) for column in ENVIRONMENT_COLUMNS]
    return [change for change in changes if change.a != change.b]


def _describe_set(frame: pd.DataFrame) -> dict[str, str]:
    gpu = _distinct(frame, "gpu_name")
    commits = _distinct(frame, "git_commit").split(", ")
    return {
        "suite": _distinct(frame, "suite"),
        # A 40-digit hash is unreadable in a table; 12 digits stay unique in practice (a '+dirty' suffix stays).
        "commit": ", ".join(commit[:12] + commit[40:] if len(commit) >= 40 else commit for commit in commits),
        "device": _distinct(frame, "device"),
        "hardware": gpu if gpu not in ("unknown", "not available") else _distinct(frame, "cpu_model"),
        "torch": _distinct(frame, "torch_version"),
        "threads (count)": _distinct(frame, "threads"),
        "cells (count)": str(frame.config_hash.nunique() if "config_hash" in frame else len(frame)),
    }


def _describe_key(values: object, key: list[str]) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return " ".join(f"{column}={value}" for column, value in zip(key, values))


def _describe_thresholds(thresholds: dict[str, float]) -> str:
    if not thresholds:
        return "no metric compared"
    shared = set(thresholds.values())
    if len(shared) == 1:
        return f"{_percent(shared.pop())} for every metric"
    return "; ".join(f"{METRICS[metric].label}: {_percent(value)}" for metric, value in thresholds.items())


def _percent(threshold: float) -> str:
    return "∞ (never beyond)" if math.isinf(threshold) else f"{threshold * 100:.4g}%"


def _table_lines(table: pd.DataFrame, varying: list[str], build: Callable[[pd.DataFrame], pd.DataFrame]
                 ) -> list[str]:
    """`build(identity)` as a markdown table, `identity` being the key columns that tell its rows apart; a column
    that varies across the comparison but not in this table is stated once above it, so no row is anonymous."""
    if table.empty:
        return []
    constant = [column for column in varying if column in table and table[column].nunique() == 1
                and table[column].iloc[0] != MISSING and column != "variant" and NAMED_BY.get(column) not in table]
    lines = ["Every row: " + "; ".join(f"{label(column)} {table[column].iloc[0]}" for column in constant), ""] \
        if constant else []
    return lines + [markdown_table(build(_identity(table, varying)))]


def _identity(table: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """The key columns that vary in the comparison and in this table, with their headings, and the variant always.
    A column its namer already tells apart (the layer and knobs behind each variant) is left out."""
    def shown(column: str) -> bool:
        if column == "variant":
            return True
        if column not in varying or table[column].nunique() < 2:
            return False
        namer = NAMED_BY.get(column)
        return namer not in table or table.groupby(namer)[column].nunique().max() > 1

    return table[[column for column in table.columns if shown(column)]].rename(columns=label).reset_index(drop=True)


def _shown_metric_table(identity: pd.DataFrame, table: pd.DataFrame, metric: Column) -> pd.DataFrame:
    beyond = table.verdict != ""

    def shown(values: pd.Series, text: Callable[[float], str]) -> list[str]:
        return [f"**{text(value)}**" if bold else text(value) for value, bold in zip(values, beyond)]

    return identity.assign(**{
        f"A {metric.label}": shown(table.a * metric.scale, _number),
        f"B {metric.label}": shown(table.b * metric.scale, _number),
        "B/A (×)": shown(table.ratio, _ratio_text),
        "verdict": table.verdict.map(_bold_verdict).to_numpy(),
    })


def _number(value: float) -> str:
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.4g}"


def _ratio_text(ratio: float) -> str:
    return _number(ratio) if math.isinf(ratio) or abs(ratio) >= 1000 else f"{ratio:.3f}"


def _bold_verdict(verdict: str) -> str:
    return f"**{verdict}**" if verdict else ""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
