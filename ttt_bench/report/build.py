"""`ttt-bench report`: results folders -> a report folder with figures/ (PNG and SVG), report.md and report.html.

Sections, each present only when the results hold what it needs (what they lack is listed once, under the
header, with the run that would fill it): noisy timings; accuracy vs FLOPs, the learning curves, accuracy vs state
size, the accuracy over seeds and which series it separates (ttt_bench.report.seed_stats); per setting group, from
its forward and forward + backward rows time vs N, memory vs N, the out-of-memory frontier, the crossover with
softmax attention and achieved TFLOP/s vs N (with each point's share of the dense-matmul ceiling), from its prefill
and decode rows the inference sections (ttt_bench.report.inference), where the time goes (matrix products against
the rest, ttt_bench.report.time_split), time and memory against the mini-batch size where the rows sweep it
(ttt_bench.report.mini_batch), and compiled against eager where cells ran both ways (ttt_bench.report.compiled);
loss vs position, and the cells that did not finish. Rows set up differently are separate series
(ttt_bench.report.settings).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ttt_bench.config import path_inside, slug_of
from ttt_bench.errors import ConfigError
from ttt_bench.report import (
    compiled,
    figures,
    frames,
    frontier,
    inference,
    mini_batch,
    pareto,
    scaling,
    seed_stats,
    time_split,
)
from ttt_bench.report.document import FIGURES_DIR, Document, Section, Table, write_html, write_markdown
from ttt_bench.report.manifest import ReportFiles
from ttt_bench.report.palette import palette_of
from ttt_bench.report.peaks import datasheet_tflops
from ttt_bench.report.settings import name_the_settings, series
from ttt_bench.report.tables import shown
from ttt_bench.results import NOISY_SPREAD, NOT_AVAILABLE, GiB, load_results


@dataclass(frozen=True)
class ReportOptions:
    reference: str | None = None  # the softmax-attention variant crossovers are measured against
    peak_tflops: float | None = None  # a peak to draw on the TFLOP/s figure (say, a CPU's datasheet figure)
    strict: bool = False  # refuse results with an unreadable cell file instead of skipping it with a warning


@dataclass(frozen=True)
class BuiltReport:
    page: Path  # report.html
    name: str  # default_report_name, from the rows the report read (not a second load of the folder)


def build_report(result_dirs: list[Path], out: Path, options: ReportOptions | None = None) -> BuiltReport:
    """Write the report of `result_dirs` into `out`."""
    options = options or ReportOptions()
    frame = pd.concat([load_results(d, options.strict).assign(results_folder=str(d)) for d in result_dirs],
                      ignore_index=True)
    if frame.empty:
        raise ConfigError(f"{', '.join(map(str, result_dirs))}: no finished cells to report on; run a suite first")
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out)
    files.clear_previous()  # a figure the new results no longer produce must not linger beside the new report
    writer = _SectionWriter(files, palette_of(frame))
    sections = _accuracy_sections(writer, frame)
    profile = frames.profile_rows(frame)
    groups = frames.setting_groups(profile)
    if not groups:
        sections.append(Section("Time, memory and throughput vs N", "No profiling rows in these results: run a "
                                "suite with metrics such as [\"flops\", \"memory\", \"time\"] (suites/quick.toml)."))
    searched = _searched_frontiers(writer, result_dirs)
    noisy = []
    for index, (setting, rows) in enumerate(groups):
        suffix = "" if len(groups) == 1 else f"-{index + 1}"
        # Training-mode and inference passes are drawn apart: their captions say what each time and peak is.
        training, serving = frames.training_mode_rows(rows), frames.inference_rows(rows)
        profiled = []
        if len(training):
            points = frames.scaling_points(training)
            writer.palette.learn_series(points["series"], points["variant"])
            noisy.append(frames.noisy_points(points))
            profiled.append(points)
            sections += _scaling_sections(writer, training, points, setting, suffix, options,
                                          with_frontier=not searched)
        if len(serving):
            points = frames.scaling_points(serving)
            writer.palette.learn_series(points["series"], points["variant"])
            noisy.append(frames.noisy_points(points))
            profiled.append(points)
            sections += inference.sections(writer, serving, points, setting, suffix, options.reference)
        sections.append(time_split.section(writer, pd.concat(profiled, ignore_index=True), setting, suffix))
        sections.append(mini_batch.section(writer, rows, setting, suffix))
        sections.append(compiled.section(rows, setting))
    sections += searched
    sections += [_positions(writer, frame), _failures(frame)]
    sections.insert(0, _noisy(pd.concat(noisy, ignore_index=True) if noisy else pd.DataFrame(), profile))
    sections = [section for section in sections if section is not None]
    # No empty sections: what the results lack is said once, in a list under the header.
    shown = [section for section in sections if section.figures or section.tables]
    # Once each: setting groups that lack the same thing say so alike.
    absent = list(dict.fromkeys(section.caption for section in sections if not (section.figures or section.tables)))
    document = Document(_title(frame, result_dirs), _facts(frame, result_dirs), _suites(result_dirs), shown, absent)
    write_markdown(document, files.claim("report.md"))
    write_html(document, files.claim("report.html"))
    return BuiltReport(out / "report.html", _report_name(frame, result_dirs))


class _SectionWriter:
    """Saves figures under the report's figures/ with one palette, and names them."""

    def __init__(self, files: ReportFiles, palette: dict) -> None:
        self.files = files
        self.palette = palette

    def save(self, figure, stem: str) -> str:
        for suffix in (".png", ".svg"):
            self.files.claim(f"{FIGURES_DIR}/{stem}{suffix}")
        figures.save_figure(figure, self.files.folder / FIGURES_DIR, stem)
        return stem


def _accuracy_sections(writer: _SectionWriter, frame: pd.DataFrame) -> list[Section]:
    """Accuracy vs FLOPs, the learning curves, accuracy vs state size, the statistics over seeds and which series
    they separate; one line in their place where the results hold no finished training run."""
    train, evals = frames.train_rows(frame), frames.eval_rows(frame)
    statistics = seed_stats.seed_statistics(train, evals)
    if statistics.empty:
        return [Section("Accuracy vs FLOPs", "No finished training rows in these results: run a suite with tasks "
                                             "and metrics = [\"accuracy\"] (suites/accuracy-quick.toml).")]
    writer.palette.learn_series(statistics["series"], statistics["variant"])
    return [_accuracy_vs_flops(writer, statistics), _learning_curves(writer, train, evals),
            _accuracy_vs_state(writer, statistics), _seed_statistics(statistics), _separations(statistics)]


_CHANCE_CAPTION = ("The dashed line is chance (a uniform guess among the task's answers) and the grey band reaches "
                   "from it to the task's floor, the best accuracy reachable without the capability it probes: an "
                   "accuracy there is no evidence of the capability.")


def _accuracy_vs_flops(writer: _SectionWriter, statistics: pd.DataFrame) -> Section:
    points = pareto.accuracy_points(statistics)
    caption = (f"Held-out accuracy (fraction correct) against the model's forward FLOPs per token (analytic: mixers, "
               f"MLPs, embedding and head; 1 MAC = 2 FLOPs), log axis; one point per layer variant (per setting, "
               f"where a variant was trained under several), the mean over seeds with a bar over "
               f"{seed_stats.INTERVAL_CAPTION}; one panel per task and sequence length N. The black dashed "
               f"staircase is the Pareto front: variants no other beats on both mean accuracy and FLOPs. "
               f"{_CHANCE_CAPTION}")
    stem = writer.save(figures.accuracy_vs_flops(points, writer.palette), "accuracy-vs-flops")
    table = points.drop(columns=["variant", *seed_stats.LEVELS])
    return Section("Accuracy vs FLOPs", caption, [stem], [Table("Accuracy and cost per variant", shown(table))])


def _learning_curves(writer: _SectionWriter, train: pd.DataFrame, evals: pd.DataFrame) -> Section:
    title = "Learning curves"
    curves = seed_stats.learning_curves(train, evals)
    if curves.empty:
        return Section(title, "No evaluations during training in these results (eval rows; results written before "
                              "them have none): rerun the training suite to draw learning curves.")
    stems = [writer.save(figures.learning_curves(curves, writer.palette, x), f"learning-curves-by-{name}")
             for x, name in (("step", "step"), ("train_flops", "flops"))]
    caption = ("Held-out accuracy (fraction correct) at each evaluation during training, against the optimiser "
               "step (count), then against the cumulative analytic training FLOPs (forward + backward, log axis); "
               f"one panel per task and N; the line is the mean over the seeds evaluated at that step, the shaded "
               f"band {seed_stats.INTERVAL_CAPTION}. Only runs that finished are drawn. {_CHANCE_CAPTION}")
    return Section(title, caption, stems)


def _accuracy_vs_state(writer: _SectionWriter, statistics: pd.DataFrame) -> Section:
    title = "Accuracy vs state size"
    stated = statistics["state_bytes_stated"].notna()
    if not stated.any():
        return Section(title, "No stated recurrent state on the training rows (state_bytes_stated; results written "
                              "before it have none).")
    stem = writer.save(figures.accuracy_vs_state(statistics, writer.palette), "accuracy-vs-state")
    left_out = ", ".join(dict.fromkeys(statistics.loc[~stated, "series"]))
    caption = (f"Held-out accuracy (fraction correct) against the recurrent state the whole model carries per "
               f"sequence after N tokens, as a decoding layer holds it (analytic, MiB, log axis: attention's KV "
               f"cache grows with N, allocated 256 tokens at a time; a recurrent or TTT layer's state does not grow); "
               f"the mean over seeds with a bar over {seed_stats.INTERVAL_CAPTION}. "
               f"A series without state (0 bytes: the {seed_stats.CONTROL_LAYER} control) cannot sit on a log "
               f"axis: it is the horizontal line in its colour at its mean, its interval shaded. "
               f"{_CHANCE_CAPTION}" + (f" Left out, having no decode state (they cannot decode): {left_out}."
                                       if left_out else ""))
    return Section(title, caption, [stem])


def _seed_statistics(statistics: pd.DataFrame) -> Section:
    caption = (f"Per task, N and series: the seeds that finished (n), the mean held-out accuracy (fraction correct) "
               f"and {seed_stats.INTERVAL_CAPTION}; the share of seeds that reached the suite's target accuracy "
               f"(empty: no target) and their mean optimiser steps to it; whether the series is above the floor: "
               f"its interval's low end above the task's floor and, where the suite trained the "
               f"{seed_stats.CONTROL_LAYER} control, above the control's interval high end (the control's own row: the "
               f"floor only; never with one seed; "
               f"empty where the results state no floor); and the mean wall-clock time per optimiser step (ms). "
               f"Seeds that did not finish are listed under cells that did not finish.")
    columns = ["series", "seeds", "accuracy_mean", "accuracy_low", "accuracy_high", "target_share",
               "steps_to_target_mean", "above_floor", "step_time_ms"]
    tables = [Table(_panel_title(panel), shown(panel[columns]))
              for _, panel in statistics.groupby(seed_stats.PANEL_COLUMNS, sort=False)]
    return Section("Accuracy over seeds", caption, tables=tables)


def _separations(statistics: pd.DataFrame) -> Section:
    title = "Which series the intervals separate"
    panels = [panel for _, panel in statistics.groupby(seed_stats.PANEL_COLUMNS, sort=False) if len(panel) > 1]
    if not panels:
        return Section(title, "No task and N with two series or more trained: nothing to separate.")
    caption = (f"Per task and N, each series (row) against each other (column): 'above' where the row's 95% t "
               f"interval lies wholly above the column's, 'below' wholly below, 'overlap' where the intervals overlap "
               f"(the data do not separate them), '—' where either has one seed (no interval). Intervals: "
               f"{seed_stats.INTERVAL_CAPTION}; not corrected for the number of pairs.")
    tables = [Table(_panel_title(panel), shown(seed_stats.separation(panel).reset_index())) for panel in panels]
    return Section(title, caption, tables=tables)


def _panel_title(panel: pd.DataFrame) -> str:
    """'mqar, N = 64: chance 0.016, floor 0.03 (guessing among the values not yet queried)'."""
    first = panel.iloc[0]
    title = f"{first['task']}, N = {first['seq_len']}"
    if pd.notna(first["chance_accuracy"]):
        title += f": chance {first['chance_accuracy']:.3g}"
    if pd.notna(first["floor_accuracy"]):
        named = f" ({first['floor_name']})" if isinstance(first["floor_name"], str) and first["floor_name"] else ""
        title += f", floor {first['floor_accuracy']:.3g}{named}"
    return title


def _scaling_sections(writer: _SectionWriter, rows: pd.DataFrame, points: pd.DataFrame, setting: str, suffix: str,
                      options: ReportOptions, with_frontier: bool) -> list[Section]:
    """Time, memory, the frontier (unless a bisected one is there), crossover, TFLOP/s and the measured points
    of one setting (`points`: frames.scaling_points of its `rows`)."""
    reference = scaling.reference_variant(points["variant"].unique(), options.reference)
    crossovers = scaling.crossovers(points, reference) if reference else pd.DataFrame(
        columns=scaling.CROSSOVER_COLUMNS)
    exponents = {metric: scaling.exponents(points, metric) for metric in ("time_ms", "peak_bytes")}
    sections = []
    for metric, name, what in (("time_ms", "time", "Median wall-clock time per call (ms), band p20-p80"),
                               ("peak_bytes", "memory", "Peak tracked memory of the call (MiB = 2^20 bytes): live "
                                                        "tensor bytes, weights and inputs included")):
        title = f"{name.capitalize()} vs N ({setting})"
        if points[metric].notna().sum() == 0:
            sections.append(Section(title, f"No {name} measurements in these results (add \"{name}\" to the "
                                           f"suite's metrics)."))
            continue
        marks = _crossover_marks(crossovers, "faster_from_seq_len" if metric == "time_ms" else "lighter_from_seq_len")
        figure = figures.scaling(points, metric, exponents[metric], marks, writer.palette, setting)
        stem = writer.save(figure, f"{name}-vs-seq-len{suffix}")
        hollow = (" A hollow marker is a noisy timing (see Noisy timings): no exponent is fitted from it."
                  if metric == "time_ms" and points["noisy"].any() else "")
        caption = (f"{what}, against sequence length N (tokens), log-log; forward and forward + backward. The "
                   f"legend gives each series' exponent a in {name} ~ N^a, fitted by least squares over the N "
                   f"within a factor {scaling.FIT_SPAN} of its largest measured N, or why none was fitted (fewer "
                   f"than two N, a noisy timing among them, or {name} falling as N grows).{hollow} A cross marks the "
                   f"first N that ran out of memory, placed on the fitted trend; a star marks where the series "
                   f"becomes {'faster' if metric == 'time_ms' else 'lighter'} than "
                   f"{reference or 'softmax attention'} (measured alike) for good.")
        fits = exponents[metric]  # the reason stands in the exponent's place where none was fitted
        exponent = fits["exponent"].astype(object).where(fits["not_fitted"] == "", fits["not_fitted"])
        table = fits.drop(columns=["exponent", "not_fitted"]).assign(**{f"{name}_exponent": exponent})
        sections.append(Section(title, caption, [stem], [Table("Fitted exponents", shown(table))]))
    name_the_settings(sections, rows)
    if with_frontier:
        sections.append(_frontier_section(writer, points.assign(variant=points["series"]), rows, setting, suffix))
    sections.append(_crossover_section(crossovers, reference, setting))
    sections.append(_throughput_section(writer, points, rows, setting, suffix, options))
    measured = points[["series", "measurement", "seq_len", "status", "time_ms", "time_p20_ms", "time_p80_ms",
                       "time_spread", "noisy", "peak_bytes", "flops"]]
    sections.append(Section(f"Measured values ({setting})", "Every profiled point: medians over the seeds that "
                            "ran; noisy: a seed's timing spread beyond the threshold or its forward took longer than "
                            "its forward + backward.", tables=[Table("Points", shown(measured))]))
    return sections


def _crossover_marks(crossovers: pd.DataFrame, column: str) -> pd.DataFrame:
    marks = crossovers[["series", "measurement", column]].rename(columns={column: "seq_len"})
    return marks[marks["seq_len"].notna()]


def _frontier_section(writer, points, rows, setting, suffix) -> Section:
    title = f"Out-of-memory frontier ({setting})"
    budget = frontier.budget_bytes(rows)
    measured = points[points["peak_bytes"].notna() | (points["status"] == "oom")]
    # The binding pass: forward + backward where it was measured (training needs it), else forward.
    passes = set(measured["measurement"])
    measured = measured[measured["measurement"] == ("forward_backward" if "forward_backward" in passes else "forward")]
    orders = frontier.declared_orders(rows, series(rows, placed_by=("seq_len",)).labels)
    table = frontier.frontier_from_points(measured, orders, budget)
    if table.empty:
        return Section(title, "No memory measurements in these results (add \"memory\" to the suite's metrics).")
    budget_text = f"{budget / GiB:.3g} GiB of tracked memory" if math.isfinite(budget) else "an unrecorded budget"
    figure = figures.oom_frontier(table, writer.palette, f"{setting}; budget {budget_text}")
    stem = writer.save(figure, f"oom-frontier{suffix}")
    caption = (f"Forward + backward (or forward, where only it was measured): the largest sequence length N "
               f"(tokens) per variant that ran within the budget ({budget_text}) in this sweep, the first N that ran "
               f"out of memory, and the N predicted for the budget, {frontier.FIT_CAPTION} Where no N failed the "
               f"dot is hollow: the sweep stopped first, so it is a lower bound. `ttt-bench oom` bisects the frontier "
               f"and probes the lengths a fit needs.")
    return Section(title, caption, [stem], [Table("Frontier", shown(table))])



def _searched_frontiers(writer: _SectionWriter, result_dirs: list[Path]) -> list[Section]:
    sections = []
    for index, directory in enumerate(d for d in result_dirs if (d / frontier.SEARCH_FILE).exists()):
        table = frontier.frontier_from_search(directory / frontier.SEARCH_FILE)
        if "layer_variant" in table:  # rows named by their grid point too: each keeps its layer's colour
            writer.palette.learn_series(table["variant"], table["layer_variant"])
            table = table.drop(columns="layer_variant")
        budget = table["budget_bytes"].median()
        name = _suite_file_name(directory / "suite.toml") or directory.name
        title = f"Out-of-memory frontier, bisected ({name})"
        figure = figures.oom_frontier(table, writer.palette, f"{name}; budget {budget / GiB:.3g} GiB")
        stem = writer.save(figure, f"oom-frontier-searched-{index + 1}")
        passes = ", ".join(dict.fromkeys(table["measurement"].astype(str)))
        caption = (f"From `ttt-bench oom`: per variant (and grid point, where the search had several), N doubled "
                   f"until a probe failed, then bisected to the search's resolution; the pass that must fit: "
                   f"{passes} (decode: the prompt prefilled in chunks, then decoding from its state, docs/oom.md); "
                   f"budget {budget / GiB:.3g} GiB. A hollow dot is the search's cap: nothing failed there. The "
                   f"diamond is the N predicted for the budget (inf: the peak does not grow with N); the table "
                   f"gives it, {frontier.FIT_CAPTION}")
        sections.append(Section(title, caption, [stem], [Table("Frontier", shown(table))]))
    return sections


def _crossover_section(crossovers: pd.DataFrame, reference: str | None, setting: str) -> Section:
    title = f"Crossover with softmax attention ({setting})"
    if reference is None or crossovers.empty:
        return Section(title, "No softmax-attention variant in these results to compare with (pass --reference).")
    caption = (f"For each series and pass, the first sequence length N (tokens) from which it stays faster (its "
               f"p80 time below attention's p20, so a tie within the timing noise does not count), and the first "
               f"from which it stays lighter in peak memory, than {reference} measured with the same settings, at "
               f"every larger N both ran (attention out of memory counts as beaten); '—' where it never does within "
               f"the sweep. No time crossover or ratio is read from noisy timings or from a time that falls as N "
               f"grows: the cell says why. The ratios (series / attention, x) are at the largest N both ran. The "
               f"same N are starred in the time and memory figures.")
    faster = [reason or value for value, reason in zip(crossovers["faster_from_seq_len"], crossovers["faster_refused"])]
    table = crossovers.assign(faster_from_seq_len=faster).drop(columns="faster_refused")
    return Section(title, caption, tables=[Table(f"Against {reference}", shown(table))])


def _throughput_section(writer, points, rows, setting, suffix, options: ReportOptions) -> Section:
    title = f"Achieved TFLOP/s vs N ({setting})"
    if points["time_ms"].notna().sum() == 0:
        return Section(title, "No times in these results, so no achieved TFLOP/s (add \"time\" and \"flops\" to "
                              "the suite's metrics).")
    ceilings = {}
    if points["matmul_tflops_per_s"].notna().any():
        ceilings["dense matmul measured here"] = float(points["matmul_tflops_per_s"].median())
    gpu_name, dtype = str(rows["gpu_name"].iloc[0]) if "gpu_name" in rows else "", str(rows["dtype"].iloc[0])
    peak = options.peak_tflops or datasheet_tflops(gpu_name, dtype)
    if peak:
        ceilings["given peak" if options.peak_tflops else f"{gpu_name} datasheet, {dtype}"] = peak
    figure = figures.throughput(points, writer.palette, setting, ceilings)
    stem = writer.save(figure, f"tflops-vs-seq-len{suffix}")
    lines = "; ".join(f"{name} {value:.3g} TFLOP/s" for name, value in ceilings.items()) or (
        "no ceiling known for this device (pass --peak-tflops)")
    caption = (f"Achieved throughput (TFLOP/s = 10^12 FLOPs per second): the layer's analytic FLOPs (causal "
               f"attention counted dense, masked half included, so a kernel that skips it can exceed the matmul "
               f"line) over its median time, against sequence length N (tokens); hollow where the timing is noisy. "
               f"Horizontal lines: {lines}.")
    ok = points[points["status"] == "ok"]
    best = frames.achieved_tflops_per_s(ok).groupby(ok["series"]).max().rename("achieved_tflops_per_s").reset_index()
    tables = [Table("Best achieved TFLOP/s per series over N and passes", shown(best))]
    ceiling_shares = time_split.ceiling_share_table(points)
    if len(ceiling_shares):
        caption += (" The second table gives each point's achieved rate as a share of the dense-matmul ceiling "
                    "measured in its own worker, with the same dtype and threads (1 = the rate of a dense matmul; "
                    "causal attention's masked half counted, as above).")
        tables.append(Table("Share of the dense-matmul ceiling per series, pass and N", shown(ceiling_shares)))
    return Section(title, caption, [stem], tables)


def _positions(writer: _SectionWriter, frame: pd.DataFrame) -> Section:
    title = "Loss vs token position"
    positions = frames.position_rows(frame)
    positions = positions[positions["status"] == "ok"]
    if positions.empty:
        return Section(title, "No per-position losses in these results: they come from tasks that predict every "
                              "token (bytes-lm, mqar).")
    positions = positions.assign(series=series(positions, panels=("task", "seq_len")).labels)
    writer.palette.learn_series(positions["series"], positions["variant"])
    stem = writer.save(figures.loss_by_position(positions, writer.palette), "loss-vs-position")
    caption = ("Held-out loss (nats per predicted token) against the position in the window, for tasks that "
               "predict every token; positions grouped in bins that double in width (drawn at the bin's end), "
               "mean over seeds with a band of one standard deviation. A layer that uses long context keeps "
               "lowering its loss at later positions.")
    table = positions.groupby(["task", "series", "position", "position_end"], sort=False)["eval_loss_nats"].mean()
    return Section(title, caption, [stem], [Table("Mean held-out loss per bin", shown(table.reset_index()))])


def _failures(frame: pd.DataFrame) -> Section | None:
    failed = frames.failed_cells(frame)
    if failed.empty:
        return None
    counts = ", ".join(f"{count} {status}" for status, count in failed["status"].value_counts().sort_index().items())
    caption = (f"Every cell and pass whose status is not ok ({counts}), with its message: out of memory (oom), "
               f"an error, a timeout, a diverged training run, or skipped by a suite rule.")
    return Section("Cells that did not finish", caption, tables=[Table("Not ok", shown(failed))])


def _noisy(noisy: pd.DataFrame, profile: pd.DataFrame) -> Section | None:
    """The timings that are noise, why, and how to measure them again."""
    if noisy.empty:
        return None
    rows = profile[frames.noise_reasons(profile) != ""]
    reruns = ", ".join(f"`ttt-bench run {suite if isinstance(suite, str) else 'SUITE'} --out {folder} --retry-noisy`"
                       for folder, suite in rows[["results_folder", "suite"]].drop_duplicates().itertuples(index=False))
    machine = [text.format(_span(rows[column].dropna())) for column, text in (
        ("threads", "{} torch threads"), ("cpus_available", "{} CPUs available to the worker"),
        ("load_average", "a load average of {}")) if rows[column].notna().any()]
    where = f" They ran with {', '.join(machine)}." if machine else ""
    inverted = (", or a forward took longer than the same cell's forward + backward, which only contention for "
                "the cores does" if len(frames.training_mode_rows(profile)) else "")
    caption = (f"{len(noisy)} timings below are noise, not results: their calls spread beyond p80 / p20 = "
               f"{NOISY_SPREAD:g} (docs/measurement.md){inverted}. They are drawn hollow, and no exponent or "
               f"crossover is read from them.{where} Measure them again on a quieter machine with {reruns} (the "
               f"suite's file, or its name for a shipped suite), or with fewer threads ([measure] threads no more "
               f"than the cores free).")
    return Section("Noisy timings", caption, tables=[Table("Noisy points", shown(noisy))])


def _span(values: pd.Series) -> str:
    low, high = float(values.min()), float(values.max())
    return f"{low:.3g}" if low == high else f"{low:.3g} to {high:.3g}"


def _title(frame: pd.DataFrame, result_dirs: list[Path]) -> str:
    return f"ttt-bench report: {', '.join(_suite_names(frame, result_dirs))}"


def _suite_names(frame: pd.DataFrame, result_dirs: list[Path]) -> list[str]:
    """The suites' names: the rows' `suite`, else (folders from before it) the `name` of each folder's
    suite.toml, else the folder's name."""
    names = list(dict.fromkeys(frame["suite"].dropna().astype(str)))
    for directory in result_dirs:
        rows = frame[frame["results_folder"] == str(directory)]
        if rows["suite"].isna().all():
            names.append(_suite_file_name(directory / "suite.toml") or directory.name)
    return list(dict.fromkeys(names))


def _suite_file_name(path: Path) -> str | None:
    try:
        name = tomllib.loads(path.read_text()).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return name if isinstance(name, str) else None


def _facts(frame: pd.DataFrame, result_dirs: list[Path]) -> list[tuple[str, str]]:
    """The run's environment; `frame` comes from load_results, which gives every declared column."""

    def values(column: str) -> str:
        return ", ".join(dict.fromkeys(str(v) for v in frame[column].dropna())) or NOT_AVAILABLE

    gpu = values("gpu_name")
    memory = frame["gpu_memory_bytes"]
    facts = [("results", ", ".join(str(d) for d in result_dirs)),
             ("device", gpu if gpu != NOT_AVAILABLE else f"CPU: {values('cpu_model')}")]
    if memory.notna().any():
        facts.append(("GPU memory (GiB)", f"{memory.max() / GiB:.1f}"))
    facts += [("CPU cores (count)", values("cpu_count")), ("torch threads (count)", values("threads"))]
    if frame["cpus_available"].notna().any():
        facts.append(("CPUs available to the worker (count)", values("cpus_available")))
    if frame["load_average"].notna().any():
        facts.append(("load average at the cells' start (runnable tasks)", _span(frame["load_average"].dropna())))
    facts += [("torch", values("torch_version")), ("CUDA", values("cuda_version")),
              ("driver", values("driver_version")), ("python", values("python_version")),
              ("platform", values("platform")), ("ttt-bench", values("ttt_bench_version")),
              ("commit", values("git_commit"))]
    if frame["started_at"].notna().any():
        first, last = frame["started_at"].dropna().min(), frame["finished_at"].dropna().max()
        facts.append(("ran (UTC)", f"{first.isoformat(timespec='milliseconds')} to "
                                   f"{last.isoformat(timespec='milliseconds')}"))
    facts.append(("cells (count)", f"{frame['config_hash'].nunique()}"))
    return facts


def _suites(result_dirs: list[Path]) -> list[tuple[str, str]]:
    """Each suite file the results were run from, named by the suite's name: every run's (runs/<run_id>/suite.toml)
    where the folder keeps them, else the folder's suite.toml; a file run twice is shown once."""
    suites: dict[str, tuple[str, str]] = {}
    for directory in result_dirs:
        runs = sorted((directory / "runs").glob("*/suite.toml"))
        for path in runs or [directory / "suite.toml"]:
            if path.exists():
                text = path.read_text()
                name = _suite_file_name(path) or directory.name
                suites.setdefault(text, (f"{name} (run {path.parent.name})" if runs else name, text))
    return list(suites.values())


def default_report_name(result_dirs: list[Path]) -> str:
    """<device>-<suite>, the name a committed report takes under reports/: 'cpu' or the GPU's model (h100, h200,
    a100), then the suite's name (the rows' `suite`, else the folder's suite.toml, else the folder's name)."""
    return _report_name(load_results(result_dirs[0]).assign(results_folder=str(result_dirs[0])), result_dirs)


def _report_name(frame: pd.DataFrame, result_dirs: list[Path]) -> str:
    """default_report_name of the rows already loaded (`results_folder` says which folder each came from)."""
    frame = frame[frame["results_folder"] == str(result_dirs[0])]
    gpu = str(frame["gpu_name"].dropna().iloc[0]) if frame["gpu_name"].notna().any() else ""
    # Both parts come from a results folder someone may have sent: made slugs, so the name is one folder's.
    return f"{slug_of(device_slug(gpu), 'gpu')}-{slug_of(_suite_names(frame, result_dirs[:1])[0], 'results')}"


def default_report_folder(result_dirs: list[Path]) -> Path:
    """Where `ttt-bench report` writes without --out: beside the results, so it never overwrites a committed
    report under reports/; refused if a link in the results folder leads it elsewhere."""
    return path_inside(result_dirs[0], "report")


def device_slug(gpu_name: str) -> str:
    if not gpu_name or gpu_name == NOT_AVAILABLE:
        return "cpu"
    for word in gpu_name.replace("-", " ").split():
        if any(ch.isdigit() for ch in word) and any(ch.isalpha() for ch in word) and word.upper() != "NVIDIA":
            return word.lower()
    return "gpu"
