"""The report's figures, drawn with seaborn on matplotlib Figure objects (no pyplot state, no display), each
saved as PNG at print resolution and as SVG. Every axis names its unit; a layer has one colour in every
figure of every report (ttt_bench.report.palette); legends sit outside the axes and no text is drawn over the data.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from ttt_bench.report.frames import achieved_tflops_per_s, first_out_of_memory_seq_len
from ttt_bench.report.palette import Palette, Style
from ttt_bench.report.seed_stats import PANEL_COLUMNS
from ttt_bench.report.units import METRICS, label, scale
from ttt_bench.results import NOISY_SPREAD

PNG_DPI = 300
MEASUREMENT_TITLES = {"forward": "forward", "forward_backward": "forward + backward",
                      "prefill": "prefill (inference)", "decode": "decode, per generated token"}
# Reproducible files: no creation date, no software stamp, fixed SVG element ids.
_RC = {"svg.hashsalt": "ttt-bench", "svg.fonttype": "path", "font.size": 8}
_PNG_METADATA = {"Software": None}
_SVG_METADATA = {"Date": None, "Creator": None}


NOISY_FACE = "white"  # a noisy timing's marker is hollow: drawn, but not a result


def _literal(text: object) -> str:
    """`text` drawn as it reads: every `$` escaped, so a name from a suite or a results folder never reaches
    mathtext (`cost $\\undefinedmacro{x}$` would stop the report). Tick labels of the log axes keep their math."""
    return str(text).replace("$", r"\$")


def _outside_legend(ax, handles, labels) -> None:
    """The panel's legend to the right of its axes, never over the data."""
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=6,
              frameon=False)


def _figure_legend(figure: Figure, axes) -> None:
    """One legend for all panels, right of them: each label once."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(text, handle)
    figure.legend(list(entries.values()), list(entries), loc="outside right upper", fontsize=7, frameon=False)


def save_figure(figure: Figure, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    png, svg = folder / f"{stem}.png", folder / f"{stem}.svg"
    rendered = io.BytesIO()
    with matplotlib.rc_context(_RC):
        figure.savefig(rendered, format="png", dpi=PNG_DPI, bbox_inches="tight", metadata=_PNG_METADATA)
        figure.savefig(svg, bbox_inches="tight", metadata=_SVG_METADATA)
    # 256 colours look the same for line plots and take a quarter of the bytes: committed reports stay small.
    with Image.open(rendered) as image:
        palette_image = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        palette_image.save(png, optimize=True, dpi=(PNG_DPI, PNG_DPI))
    return [png, svg]


def _figure(n_panels: int, width_per_panel: float = 5.0, height: float = 4.0, columns: int = 3) -> tuple:
    columns = min(columns, n_panels)
    rows = math.ceil(n_panels / columns)
    with sns.axes_style("whitegrid"), matplotlib.rc_context(_RC):
        figure = Figure(figsize=(width_per_panel * columns, height * rows), layout="constrained")
        axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return figure, axes[:n_panels]


NO_EVIDENCE = "no evidence of the capability"  # the band from chance up to the task's floor


def _accuracy_panels(frame: pd.DataFrame) -> tuple[Figure, list[tuple[object, pd.DataFrame]]]:
    """A figure with a panel per task and N of `frame`: (axes, rows) each, titled, its y axis the held-out accuracy
    with the panel's chance level (dashed) and, up to the task's floor, a grey band where an accuracy is no evidence
    of the capability the task probes (where the rows state them). Every accuracy figure starts here."""
    panels = list(frame.groupby(PANEL_COLUMNS, sort=False))
    figure, axes = _figure(len(panels))
    for ax, ((task, seq_len), panel) in zip(axes, panels):
        chance, floor = panel["chance_accuracy"].max(), panel["floor_accuracy"].max()
        if math.isfinite(chance):
            ax.axhline(chance, color="dimgrey", linestyle="--", linewidth=1, label="chance")
            if math.isfinite(floor) and floor > chance:
                ax.axhspan(chance, floor, color="grey", alpha=0.2, linewidth=0, label=NO_EVIDENCE)
        ax.set_title(_literal(f"{task}, N = {seq_len}"))
        ax.set_ylabel("held-out " + label("accuracy"))
    return figure, list(zip(axes, (panel for _, panel in panels)))


def _interval_bar(ax, x: float, row: pd.Series, style: Style) -> None:
    """The series' mean accuracy at `x` with a bar over its 95% t interval (none with one seed; clipped to [0, 1],
    so it need not be symmetric)."""
    mean = row["accuracy_mean"]
    ax.errorbar(x, mean, yerr=[[mean - row["accuracy_low"]], [row["accuracy_high"] - mean]], fmt=style.marker,
                color=style.colour, capsize=3, markersize=5, label=_literal(row["series"]))


def accuracy_vs_flops(points: pd.DataFrame, palette: Palette) -> Figure:
    """One panel per task and N: mean held-out accuracy over seeds (bars: the 95% t interval) against forward
    FLOPs per token, log axis, with the Pareto front; the series named in one legend beside the panels."""
    figure, panels = _accuracy_panels(points)
    for ax, panel in panels:
        for _, row in panel.iterrows():
            _interval_bar(ax, row["flops_per_token"], row, palette.style(row["series"]))
        front = panel[panel["pareto"]].sort_values("flops_per_token")
        ax.plot(front["flops_per_token"], front["accuracy_mean"], drawstyle="steps-post", color="black",
                linestyle="--", linewidth=1, label="Pareto front")
        _log_axis_with_readable_ticks(ax, panel["flops_per_token"])
        ax.set_xlabel(label("flops_per_token"))
    _figure_legend(figure, [ax for ax, _ in panels])
    return figure


def learning_curves(curves: pd.DataFrame, palette: Palette, x: str) -> Figure:
    """One panel per task and N: held-out accuracy against `x` (`step`, the optimiser step, or `train_flops`, the
    cumulative training FLOPs on a log axis), the mean over the seeds evaluated there with its 95% t interval
    shaded (seed_stats.learning_curves)."""
    figure, panels = _accuracy_panels(curves)
    for ax, panel in panels:
        for name, rows in panel.groupby("series", sort=False):
            rows = rows.sort_values("step")
            style = palette.style(name)
            ax.plot(rows[x], rows["accuracy_mean"], color=style.colour, linestyle=style.linestyle,
                    marker=style.marker, markersize=3, linewidth=1.2, label=_literal(name))
            ax.fill_between(rows[x], rows["accuracy_low"], rows["accuracy_high"], color=style.colour, alpha=0.2,
                            linewidth=0)
        if x == "train_flops":
            _log_axis_with_readable_ticks(ax, panel[x][panel[x] > 0])
        ax.set_xlabel(label(x))
    _figure_legend(figure, [ax for ax, _ in panels])
    return figure


def accuracy_vs_state(statistics: pd.DataFrame, palette: Palette) -> Figure:
    """One panel per task and N: mean held-out accuracy (bars: the 95% t interval) against the model's stated
    recurrent state per sequence, log axis. A series without state (0 bytes, the no-mixer control) cannot sit on
    a log axis: it is a horizontal line at its mean, its interval shaded. Rows without a stated state are not
    drawn (the caller names them)."""
    figure, panels = _accuracy_panels(statistics[statistics["state_bytes_stated"].notna()])
    for ax, panel in panels:
        for _, row in panel.iterrows():
            style = palette.style(row["series"])
            if row["state_bytes_stated"] > 0:
                _interval_bar(ax, row["state_bytes_stated"] * scale("state_bytes_stated"), row, style)
                continue
            ax.axhline(row["accuracy_mean"], color=style.colour, linestyle=style.linestyle, linewidth=1.2,
                       label=_literal(f"{row['series']} (no state)"))
            if math.isfinite(row["accuracy_low"]):
                ax.axhspan(row["accuracy_low"], row["accuracy_high"], color=style.colour, alpha=0.15, linewidth=0)
        stated = panel["state_bytes_stated"] * scale("state_bytes_stated")
        _log_axis_with_readable_ticks(ax, stated[stated > 0])
        ax.set_xlabel(label("state_bytes_stated"))
    _figure_legend(figure, [ax for ax, _ in panels])
    return figure


def _log_axis_with_readable_ticks(ax, values: pd.Series) -> None:
    """A log x axis; when the values span less than a decade (FLOPs of similar models often do), ticks at
    every step (or half step, within a factor 2.5) of the leading digit, in engineering notation (250k, 300k)."""
    ax.set_xscale("log")
    low, high = float(values.min()), float(values.max())
    if low > 0 and high / low < 10:
        step = 0.5 if high / low < 2.5 else 1.0
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=np.arange(1.0, 10.0, step)))
        ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def scaling(points: pd.DataFrame, metric: str, exponents: pd.DataFrame, marks: pd.DataFrame, palette: Palette,
            title: str, y_label: str | None = None, panel_titles: dict[str, str] | None = None,
            star_label: str = "overtakes softmax attention", x_label: str | None = None) -> Figure:
    """`metric` against N, log-log, one panel per measurement: a line per series (with its p20-p80 band for
    times), its fitted exponent or why there is none in the legend, a hollow marker on a noisy timing, a cross
    where the series first ran out of memory (placed on its fitted trend) and a star where it overtakes softmax
    attention (`marks`: series, measurement, seq_len). Each panel's legend sits to its right. `x_label`, `y_label`
    and `panel_titles` (measurement -> title) replace the columns' headings and MEASUREMENT_TITLES where the same
    column means something narrower (a decode row's time is one generated token's, its N the prompt's)."""
    measurements = [m for m in MEASUREMENT_TITLES if m in set(points["measurement"])]
    figure, axes = _figure(len(measurements), width_per_panel=10.0, height=4.2, columns=1)
    scale = METRICS[metric].scale
    timed = metric == "time_ms"
    for ax, measurement in zip(axes, measurements):
        shown = points[points["measurement"] == measurement]
        for name, group in shown.groupby("series", sort=False):
            style = palette.style(name)
            ok = group[(group["status"] == "ok") & group[metric].notna()]
            if ok.empty:
                continue  # nothing measured: its failures are listed in the report, not drawn
            fit = exponents.query("series == @name and measurement == @measurement")
            slope = fit["exponent"].iloc[0] if len(fit) else math.nan
            fitted = f"N^{slope:.2f}" if math.isfinite(slope) else (fit["not_fitted"].iloc[0] if len(fit) else "")
            noisy = ok["noisy"].to_numpy(dtype=bool) if timed else np.zeros(len(ok), dtype=bool)
            ax.plot(ok["seq_len"], ok[metric] * scale, color=style.colour, linestyle=style.linestyle,
                    marker=style.marker, markersize=4, linewidth=1.2, markevery=list(np.flatnonzero(~noisy)),
                    label=_literal(f"{name}  {fitted}".rstrip()))
            if noisy.any():
                ax.plot(ok["seq_len"][noisy], ok[metric][noisy] * scale, linestyle="none", marker=style.marker,
                        markersize=5, markerfacecolor=NOISY_FACE, markeredgecolor=style.colour, markeredgewidth=1.2)
            if timed and len(ok):
                ax.fill_between(ok["seq_len"], ok["time_p20_ms"], ok["time_p80_ms"], color=style.colour, alpha=0.2)
            _mark_out_of_memory(ax, group, ok, metric, scale, slope, style.colour)
            mark = marks.query("series == @name and measurement == @measurement")
            for seq_len in mark["seq_len"]:
                at = ok[ok["seq_len"] == seq_len]
                if len(at):
                    ax.plot(seq_len, at[metric].iloc[0] * scale, marker="*", markersize=12, color=style.colour,
                            markeredgecolor="black", markeredgewidth=0.6, linestyle="none")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title((panel_titles or {}).get(measurement, MEASUREMENT_TITLES[measurement]))
        ax.set_xlabel(x_label or label("seq_len"))
        ax.set_ylabel(y_label or label(metric))
        handles, labels = ax.get_legend_handles_labels()
        if timed and shown["noisy"].fillna(False).astype(bool).any():
            handles.append(Line2D([], [], marker="o", markerfacecolor=NOISY_FACE, markeredgecolor="grey",
                                  linestyle="none", markersize=6))
            inverted = " or forward > forward + backward" if measurement in ("forward", "forward_backward") else ""
            labels.append(f"noisy timing (spread > {NOISY_SPREAD:g}x{inverted})")
        if (shown["status"] == "oom").any():
            handles.append(Line2D([], [], marker="X", color="grey", linestyle="none", markersize=8))
            labels.append("out of memory")
        if len(marks.query("measurement == @measurement")):
            handles.append(Line2D([], [], marker="*", color="grey", markeredgecolor="black", linestyle="none",
                                  markersize=11))
            labels.append(_literal(star_label))
        _outside_legend(ax, handles, labels)
    figure.suptitle(_literal(title))
    return figure


def _mark_out_of_memory(ax, group, ok, metric, scale, slope, colour) -> None:
    seq_len = first_out_of_memory_seq_len(group)
    if math.isnan(seq_len) or ok.empty:
        return
    last = ok.iloc[-1]
    trend = slope if math.isfinite(slope) else 1.0
    value = last[metric] * scale * (seq_len / last["seq_len"]) ** trend
    ax.plot(seq_len, value, marker="X", markersize=9, color=colour, markeredgecolor="black", markeredgewidth=0.6,
            linestyle="none")


def oom_frontier(table: pd.DataFrame, palette: Palette, title: str) -> Figure:
    """Per variant, on a log N axis: a dot at the largest N that fit (hollow where nothing failed, the sweep's end or
    the search's cap, so it is only a lower bound), a red bar at the first N that did not, a diamond at the N the
    fit predicts."""
    table = table.sort_values(["max_seq_len", "variant"]).reset_index(drop=True)
    figure, (ax,) = _figure(1, width_per_panel=7.5, height=0.32 * len(table) + 1.6)
    for y, row in table.iterrows():
        colour = palette.style(row["variant"]).colour
        lower_bound = not math.isfinite(row["first_failing_seq_len"])  # a sweep's end, or a search's cap
        ax.plot(row["max_seq_len"], y, marker="o", markersize=8, linestyle="none", markeredgecolor=colour,
                markerfacecolor="white" if lower_bound else colour, markeredgewidth=1.5)
        if math.isfinite(row["first_failing_seq_len"]):
            ax.plot(row["first_failing_seq_len"], y, marker="|", markersize=14, color="red", markeredgewidth=2)
        if math.isfinite(row["predicted_max_seq_len"]):
            ax.plot(row["predicted_max_seq_len"], y, marker="D", markersize=6, color="black")
    ax.set_yticks(range(len(table)), [_literal(variant) for variant in table["variant"]])
    ax.set_ylim(-0.7, len(table) - 0.3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(label("seq_len"))
    ax.legend([Line2D([], [], marker="o", color="grey", linestyle="none"),
               Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor="grey", linestyle="none"),
               Line2D([], [], marker="|", color="red", linestyle="none", markersize=12, markeredgewidth=2),
               Line2D([], [], marker="D", color="black", linestyle="none")],
              ["largest N that fit", "largest N run, none failed (a lower bound)", "first N out of memory",
               "predicted largest N at the budget"], loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              fontsize=7, frameon=False)
    ax.set_title(_literal(title))
    return figure


def loss_by_position(positions: pd.DataFrame, palette: Palette) -> Figure:
    """Held-out loss against the position in the window, one panel per task and N, mean over seeds with a
    band of one standard deviation; positions in bins that double in width, drawn at the bin's end."""
    panels = list(positions.groupby(["task", "seq_len"], sort=False))
    figure, axes = _figure(len(panels))
    for ax, ((task, seq_len), panel) in zip(axes, panels):
        for name, rows in panel.groupby("series", sort=False):
            style = palette.style(name)
            curve = rows.groupby("position_end")["eval_loss_nats"].agg(["mean", "std"]).reset_index()
            ax.plot(curve["position_end"], curve["mean"], marker=style.marker, markersize=3, color=style.colour,
                    linestyle=style.linestyle, label=_literal(name))
            ax.fill_between(curve["position_end"], curve["mean"] - curve["std"].fillna(0),
                            curve["mean"] + curve["std"].fillna(0), color=style.colour, alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_title(_literal(f"{task}, N = {seq_len}"))
        ax.set_xlabel("position in the window (tokens, end of each doubling bin)")
        ax.set_ylabel(label("eval_loss_nats"))
    _figure_legend(figure, axes)
    return figure


def throughput(points: pd.DataFrame, palette: Palette, title: str, ceilings: dict[str, float]) -> Figure:
    """Achieved TFLOP/s (counted FLOPs over the median time) against N, one panel per measurement, hollow where
    the timing is noisy, with the device's ceilings as horizontal lines (`ceilings`: name -> TFLOP/s), named in
    the legend beside the panels."""
    measurements = [m for m in MEASUREMENT_TITLES if m in set(points["measurement"])]
    figure, axes = _figure(len(measurements), width_per_panel=6.0, height=4.5, columns=2)
    for ax, measurement in zip(axes, measurements):
        rows = points[(points["measurement"] == measurement) & (points["status"] == "ok")]
        for name, group in rows.groupby("series", sort=False):
            style = palette.style(name)
            noisy = group["noisy"].to_numpy(dtype=bool)
            achieved = achieved_tflops_per_s(group)
            ax.plot(group["seq_len"], achieved, marker=style.marker, markersize=4, color=style.colour,
                    linestyle=style.linestyle, markevery=list(np.flatnonzero(~noisy)), label=_literal(name))
            if noisy.any():
                ax.plot(group["seq_len"][noisy], achieved[noisy], linestyle="none", marker=style.marker,
                        markersize=5, markerfacecolor=NOISY_FACE, markeredgecolor=style.colour)
        for (name, tflops), line_style in zip(ceilings.items(), ("-", "--")):
            ax.axhline(tflops, color="black", linestyle=line_style, linewidth=1,
                       label=_literal(f"{name}: {tflops:.3g} TFLOP/s"))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(MEASUREMENT_TITLES[measurement])
        ax.set_xlabel(label("seq_len"))
        ax.set_ylabel(label("tflops_per_s"))
    if points.loc[points["status"] == "ok", "noisy"].any():
        axes[0].plot([], [], marker="o", markerfacecolor=NOISY_FACE, markeredgecolor="grey", linestyle="none",
                     label="noisy timing (hollow)")
    _figure_legend(figure, axes)
    figure.suptitle(_literal(title))
    return figure


# The parts of a profiled call (report/time_split.py), in the order they are stacked, with their colours: the same
# in every report, apart from the layers' colours, since each bar is one series.
TIME_PARTS = {"matmul_time_share": ("matrix products", "#33609e"),
              "other_time_share": ("other operators", "#e3932b"),
              "outside_time_share": ("outside any operator", "#c8c8c8")}


def time_split(points: pd.DataFrame, title: str) -> Figure:
    """One panel per measurement, a horizontal bar per series stacked from the shares of its profiled call in
    matrix products, other operators and outside any operator (time_split.shares), sorted by the first, largest at
    the top. A series that did not run, or was not profiled, has no bar; its label says why."""
    measurements = [m for m in MEASUREMENT_TITLES if m in set(points["measurement"])]
    heights = [points["measurement"].eq(m).sum() for m in measurements]
    with sns.axes_style("whitegrid"), matplotlib.rc_context(_RC):
        figure = Figure(figsize=(8.0, 0.3 * sum(heights) + 1.3 * len(measurements) + 0.4), layout="constrained")
        axes = figure.subplots(len(measurements), 1, squeeze=False, height_ratios=[h + 2 for h in heights]).ravel()
    for ax, measurement in zip(axes, measurements):
        rows = points[points["measurement"] == measurement].copy()
        drawn = (rows["status"] == "ok") & rows["matmul_time_share"].notna()
        rows["bar_key"] = rows["matmul_time_share"].where(drawn, -1.0)
        rows = rows.sort_values(["bar_key", "series"], ascending=[True, False]).reset_index(drop=True)
        left = np.zeros(len(rows))
        for column, (name, colour) in TIME_PARTS.items():
            widths = rows[column].where(rows["bar_key"] >= 0, 0.0).fillna(0.0)
            ax.barh(range(len(rows)), widths, left=left, color=colour, edgecolor="white", linewidth=0.5,
                    height=0.7, label=name)
            left += widths.to_numpy()
        names = [_literal(row.series) if row.bar_key >= 0 else
                 _literal(f"{row.series}: {row.status if row.status != 'ok' else 'not profiled'}")
                 for row in rows.itertuples(index=False)]
        ax.set_yticks(range(len(rows)), names)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_xlim(0.0, 1.0)
        ax.set_title(MEASUREMENT_TITLES[measurement])
        ax.set_xlabel("share of the profiled call's wall-clock (fraction)")
        ax.grid(axis="y", visible=False)
    _figure_legend(figure, axes[:1])
    figure.suptitle(_literal(title))
    return figure


def mini_batch(points: pd.DataFrame, palette: Palette, title: str) -> Figure:
    """Time (top row, p20-p80 band, hollow where noisy) and peak tracked memory (bottom row) against the mini-batch
    size b, log2 axis with a tick at every b measured, log y; one column per measurement, a line per series in its
    layer's colour; points that did not finish are not drawn (report/mini_batch.py lists them)."""
    measurements = [m for m in MEASUREMENT_TITLES if m in set(points["measurement"])]
    figure, axes = _figure(2 * len(measurements), width_per_panel=5.0, height=3.6, columns=len(measurements))
    values = sorted(int(b) for b in points["mini_batch"].unique())
    for column, measurement in enumerate(measurements):
        shown = points[(points["measurement"] == measurement) & (points["status"] == "ok")]
        for row, metric in enumerate(("time_ms", "peak_bytes")):
            ax = axes[row * len(measurements) + column]
            factor = scale(metric)
            for name, group in shown.groupby("series", sort=False):
                group = group[group[metric].notna()].sort_values("mini_batch")
                if group.empty:
                    continue
                style = palette.style(name)
                noisy = group["noisy"].to_numpy(dtype=bool) if metric == "time_ms" else np.zeros(len(group), bool)
                ax.plot(group["mini_batch"], group[metric] * factor, color=style.colour, linestyle=style.linestyle,
                        marker=style.marker, markersize=4, linewidth=1.2, markevery=list(np.flatnonzero(~noisy)),
                        label=_literal(name))
                if noisy.any():
                    ax.plot(group["mini_batch"][noisy], group[metric][noisy] * factor, linestyle="none",
                            marker=style.marker, markersize=5, markerfacecolor=NOISY_FACE,
                            markeredgecolor=style.colour, markeredgewidth=1.2)
                if metric == "time_ms":
                    ax.fill_between(group["mini_batch"], group["time_p20_ms"], group["time_p80_ms"],
                                    color=style.colour, alpha=0.2, linewidth=0)
            ax.set_xscale("log", base=2)
            _plain_log_y(ax, shown[metric].dropna() * factor)
            ax.set_xticks(values, [str(b) for b in values])
            ax.xaxis.set_minor_locator(ticker.NullLocator())
            ax.set_xlabel(label("mini_batch"))
            ax.set_ylabel(label(metric))
            if row == 0:  # the column's pass, once: the y axes say which row is time and which memory
                ax.set_title(MEASUREMENT_TITLES[measurement])
    if points.loc[points["status"] == "ok", "noisy"].fillna(False).astype(bool).any():
        axes[0].plot([], [], marker="o", markerfacecolor=NOISY_FACE, markeredgecolor="grey", linestyle="none",
                     label=f"noisy timing (spread > {NOISY_SPREAD:g}x)")
    _figure_legend(figure, axes)
    figure.suptitle(_literal(title))
    return figure


def _plain_log_y(ax, values: pd.Series) -> None:
    """A log y axis labelled in plain numbers (20, 50, 100; not 2 x 10^1), at 1, 2 and 5 of each decade where
    the values span less than two decades, so that a narrow range still shows a few labels."""
    ax.set_yscale("log")
    plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    values = values[values > 0]
    if len(values) and float(values.max()) / float(values.min()) < 100:
        ax.yaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(plain)
    else:
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
