"""`ttt-bench report`: results folders -> reports/<name>/ with figures/ (PNG and SVG), report.md and report.html.

Sections, each present when the results hold what it needs (otherwise it says what run would fill it):
accuracy vs FLOPs, time vs N, memory vs N, the out-of-memory frontier, the crossover with softmax attention,
loss vs position, achieved TFLOP/s vs N, and the cells that did not finish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ttt_bench.errors import ConfigError
from ttt_bench.report import figures, frames, frontier, pareto, scaling
from ttt_bench.report.document import FIGURES_DIR, Document, Section, Table, write_html, write_markdown
from ttt_bench.report.peaks import datasheet_tflops
from ttt_bench.report.tables import shown
from ttt_bench.results import NOT_AVAILABLE, GiB, load_results


@dataclass(frozen=True)
class ReportOptions:
    reference: str | None = None  # the softmax-attention variant crossovers are measured against
    peak_tflops: float | None = None  # a peak to draw on the TFLOP/s figure (say, a CPU's datasheet figure)


def build_report(result_dirs: list[Path], out: Path, options: ReportOptions | None = None) -> Path:
    """Write the report of `result_dirs` into `out`; returns the path of report.html."""
    options = options or ReportOptions()
    frame = pd.concat([load_results(d) for d in result_dirs], ignore_index=True)
    if frame.empty:
        raise ConfigError(f"{', '.join(map(str, result_dirs))}: no finished cells to report on; run a suite first")
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*(out / FIGURES_DIR).glob("*.png"), *(out / FIGURES_DIR).glob("*.svg")]:
        stale.unlink()  # a figure the new results no longer produce must not linger beside the new report
    writer = _SectionWriter(out / FIGURES_DIR, figures.variant_palette(frame["variant"].dropna()))
    sections = [_accuracy(writer, frame)]
    profile = frames.profile_rows(frame)
    groups = frames.setting_groups(profile)
    if not groups:
        sections.append(Section("Time, memory and throughput vs N", "No profiling rows in these results: run a "
                                "suite with metrics such as [\"flops\", \"memory\", \"time\"] (suites/quick.toml)."))
    searched = _searched_frontiers(writer, result_dirs)
    for index, (setting, rows) in enumerate(groups):
        suffix = "" if len(groups) == 1 else f"-{index + 1}"
        sections += _scaling_sections(writer, rows, setting, suffix, options, with_frontier=not searched)
    sections += searched
    sections += [_positions(writer, frame), _failures(frame)]
    document = Document(_title(frame, result_dirs), _facts(frame, result_dirs), _suites(result_dirs), sections)
    write_markdown(document, out / "report.md")
    write_html(document, out / "report.html")
    return out / "report.html"


class _SectionWriter:
    """Saves figures under one folder with one palette, and names them."""

    def __init__(self, folder: Path, palette: dict) -> None:
        self.folder = folder
        self.palette = palette

    def save(self, figure, stem: str) -> str:
        figures.save_figure(figure, self.folder, stem)
        return stem


def _accuracy(writer: _SectionWriter, frame: pd.DataFrame) -> Section:
    title = "Accuracy vs FLOPs"
    points = pareto.accuracy_points(frames.train_rows(frame))
    if points.empty:
        return Section(title, "No finished training rows in these results: run a suite with tasks and "
                              "metrics = [\"accuracy\"] (suites/accuracy-quick.toml).")
    caption = ("Held-out accuracy (fraction correct) against the model's forward FLOPs per token (analytic: mixers, "
               "MLPs, embedding and head; 1 MAC = 2 FLOPs), log axis; one point per layer variant, the mean over "
               "seeds with a bar of one standard deviation (none with one seed); one panel per task and sequence "
               "length N. The dashed staircase is the Pareto front: variants no other beats on both accuracy and "
               "FLOPs.")
    stem = writer.save(figures.accuracy_vs_flops(points, writer.palette), "accuracy-vs-flops")
    return Section(title, caption, [stem], [Table("Accuracy and cost per variant", shown(points))])


def _scaling_sections(writer: _SectionWriter, rows: pd.DataFrame, setting: str, suffix: str,
                      options: ReportOptions, with_frontier: bool) -> list[Section]:
    """Time, memory, the frontier (unless a bisected one is there), crossover, TFLOP/s and the measured points
    of one setting."""
    points = frames.scaling_points(rows)
    reference = scaling.reference_variant(points["variant"].unique(), options.reference)
    crossovers = scaling.crossovers(points, reference) if reference else pd.DataFrame(
        columns=["variant", "measurement", "faster_from_seq_len", "lighter_from_seq_len"])
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
        caption = (f"{what}, against sequence length N (tokens), log-log; forward and forward + backward. The "
                   f"legend gives each variant's exponent a in {name} ~ N^a, fitted by least squares over the N "
                   f"within a factor {scaling.FIT_SPAN} of its largest measured N. A cross marks the first N that "
                   f"ran out of memory, placed on the fitted trend; a star marks where the variant becomes "
                   f"{'faster' if metric == 'time_ms' else 'lighter'} than {reference or 'softmax attention'} "
                   f"for good.")
        table = exponents[metric].rename(columns={"exponent": f"{name}_exponent"})
        sections.append(Section(title, caption, [stem], [Table("Fitted exponents", shown(table))]))
    if with_frontier:
        sections.append(_frontier_section(writer, points, rows, setting, suffix))
    sections.append(_crossover_section(crossovers, reference, setting))
    sections.append(_throughput_section(writer, points, rows, setting, suffix, options))
    measured = points[["variant", "measurement", "seq_len", "status", "time_ms", "time_p20_ms", "time_p80_ms",
                       "peak_bytes", "flops"]]
    sections.append(Section(f"Measured values ({setting})", "Every profiled point: medians over seeds that ran.",
                            tables=[Table("Points", shown(measured))]))
    return sections


def _crossover_marks(crossovers: pd.DataFrame, column: str) -> pd.DataFrame:
    marks = crossovers[["variant", "measurement", column]].rename(columns={column: "seq_len"})
    return marks[marks["seq_len"].notna()]


def _frontier_section(writer, points, rows, setting, suffix) -> Section:
    title = f"Out-of-memory frontier ({setting})"
    budget = frontier.budget_bytes(rows)
    measured = points[points["peak_bytes"].notna() | (points["status"] == "oom")]
    # The binding pass: forward + backward where it was measured (training needs it), else forward.
    passes = set(measured["measurement"])
    measured = measured[measured["measurement"] == ("forward_backward" if "forward_backward" in passes else "forward")]
    table = frontier.frontier_from_points(measured, budget)
    if table.empty:
        return Section(title, "No memory measurements in these results (add \"memory\" to the suite's metrics).")
    budget_text = f"{budget / GiB:.3g} GiB of tracked memory" if math.isfinite(budget) else "an unrecorded budget"
    figure = figures.oom_frontier(table, writer.palette, f"{setting}; budget {budget_text}")
    stem = writer.save(figure, f"oom-frontier{suffix}")
    caption = (f"Forward + backward (or forward, where only it was measured): the largest sequence length N "
               f"(tokens) per variant that ran within the budget ({budget_text}) in this sweep, the first N that ran "
               f"out of memory, and the N predicted for the budget by a line (or, where a line misses, a quadratic) "
               f"in N fitted to the measured peaks. Where no N failed the dot is hollow: the sweep stopped first, so "
               f"it is a lower bound. `ttt-bench oom` bisects the frontier.")
    return Section(title, caption, [stem], [Table("Frontier", shown(table))])


def _searched_frontiers(writer: _SectionWriter, result_dirs: list[Path]) -> list[Section]:
    sections = []
    for index, directory in enumerate(d for d in result_dirs if (d / frontier.SEARCH_FILE).exists()):
        table = frontier.frontier_from_search(directory / frontier.SEARCH_FILE)
        budget = table["budget_bytes"].median()
        title = f"Out-of-memory frontier, bisected ({directory.name})"
        figure = figures.oom_frontier(table, writer.palette, f"{directory.name}; budget {budget / GiB:.3g} GiB")
        stem = writer.save(figure, f"oom-frontier-searched-{index + 1}")
        caption = (f"From `ttt-bench oom`: per variant, N doubled until a probe failed, then bisected to the "
                   f"search's resolution; budget {budget / GiB:.3g} GiB. The diamond is the N the memory fit "
                   f"predicts for the budget.")
        sections.append(Section(title, caption, [stem], [Table("Frontier", shown(table))]))
    return sections


def _crossover_section(crossovers: pd.DataFrame, reference: str | None, setting: str) -> Section:
    title = f"Crossover with softmax attention ({setting})"
    if reference is None or crossovers.empty:
        return Section(title, "No softmax-attention variant in these results to compare with (pass --reference).")
    caption = (f"For each variant and pass, the first sequence length N (tokens) from which it stays faster (its "
               f"p80 time below attention's p20, so a tie within the timing noise does not count), and the first "
               f"from which it stays lighter in peak memory, than {reference} at every larger N both ran "
               f"(attention out of memory counts as beaten); '—' where it never does within the sweep. The "
               f"ratios (variant / attention, x) are at the largest N both ran. The same N are starred in the "
               f"time and memory figures.")
    return Section(title, caption, tables=[Table(f"Against {reference}", shown(crossovers))])


def _throughput_section(writer, points, rows, setting, suffix, options: ReportOptions) -> Section:
    title = f"Achieved TFLOP/s vs N ({setting})"
    if points["time_ms"].notna().sum() == 0:
        return Section(title, "Needs both time and FLOPs; these results have no times.")
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
               f"line) over its median time, against sequence length N (tokens). Horizontal lines: {lines}.")
    ok = points[points["status"] == "ok"]
    best = frames.achieved_tflops_per_s(ok).groupby(ok["variant"]).max().rename("achieved_tflops_per_s").reset_index()
    return Section(title, caption, [stem], [Table("Best achieved TFLOP/s per variant over N and passes",
                                                  shown(best))])


def _positions(writer: _SectionWriter, frame: pd.DataFrame) -> Section:
    title = "Loss vs token position"
    positions = frames.position_rows(frame)
    positions = positions[positions["status"] == "ok"]
    if positions.empty:
        return Section(title, "No per-position losses in these results: they come from tasks that predict every "
                              "token (bytes-lm, mqar).")
    stem = writer.save(figures.loss_by_position(positions, writer.palette), "loss-vs-position")
    caption = ("Held-out loss (nats per predicted token) against the position in the window, for tasks that "
               "predict every token; positions grouped in bins that double in width (drawn at the bin's end), "
               "mean over seeds with a band of one standard deviation. A layer that uses long context keeps "
               "lowering its loss at later positions.")
    table = positions.groupby(["task", "variant", "position", "position_end"], sort=False)["eval_loss_nats"].mean()
    return Section(title, caption, [stem], [Table("Mean held-out loss per bin", shown(table.reset_index()))])


def _failures(frame: pd.DataFrame) -> Section:
    failed = frames.failed_cells(frame)
    title = "Cells that did not finish"
    if failed.empty:
        return Section(title, "Every cell finished with status ok.")
    counts = ", ".join(f"{count} {status}" for status, count in failed["status"].value_counts().sort_index().items())
    caption = (f"Every cell and pass whose status is not ok ({counts}), with its message: out of memory (oom), "
               f"an error, a timeout, a diverged training run, or skipped by a suite rule.")
    return Section(title, caption, tables=[Table("Not ok", shown(failed))])


def _title(frame: pd.DataFrame, result_dirs: list[Path]) -> str:
    suites = ", ".join(dict.fromkeys(frame["suite"].dropna().astype(str)))
    return f"ttt-bench report: {suites or ', '.join(d.name for d in result_dirs)}"


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
    facts += [("CPU cores (count)", values("cpu_count")), ("torch threads (count)", values("threads")),
              ("torch", values("torch_version")), ("CUDA", values("cuda_version")),
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
    suites = []
    for directory in result_dirs:
        path = directory / "suite.toml"
        if path.exists():
            suites.append((directory.name, path.read_text()))
    return suites


def default_report_name(result_dirs: list[Path]) -> str:
    """reports/<device>-<suite>: 'cpu' or the GPU's model (h100, h200, a100), then the suite's name."""
    frame = load_results(result_dirs[0])
    suite = str(frame["suite"].dropna().iloc[0]) if frame["suite"].notna().any() else result_dirs[0].name
    gpu = str(frame["gpu_name"].dropna().iloc[0]) if frame["gpu_name"].notna().any() else ""
    return f"{device_slug(gpu)}-{suite}"


def device_slug(gpu_name: str) -> str:
    if not gpu_name or gpu_name == NOT_AVAILABLE:
        return "cpu"
    for word in gpu_name.replace("-", " ").split():
        if any(ch.isdigit() for ch in word) and any(ch.isalpha() for ch in word) and word.upper() != "NVIDIA":
            return word.lower()
    return "gpu"
