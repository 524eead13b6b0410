"""The report's figures, drawn with seaborn on matplotlib Figure objects (no pyplot state, no display), each
saved as PNG at print resolution and as SVG. Every axis names its unit; colours follow the variant across
all figures of a report.
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

from ttt_bench import layers
from ttt_bench.report.frames import achieved_tflops_per_s, first_out_of_memory_seq_len
from ttt_bench.report.units import METRICS, label

PNG_DPI = 300
MEASUREMENT_TITLES = {"forward": "forward", "forward_backward": "forward + backward"}
# Reproducible files: no creation date, no software stamp, fixed SVG element ids.
_RC = {"svg.hashsalt": "ttt-bench", "svg.fonttype": "path", "font.size": 8}
_PNG_METADATA = {"Software": None}
_SVG_METADATA = {"Date": None, "Creator": None}


def variant_palette(variants) -> dict[str, tuple]:
    """A colour per variant, the same in every report: a registered layer keeps the colour of its place in the
    registry (tab20's strong shades first, then its pale ones); other variants (labels, sweeps) take the colours
    left, in order of appearance."""
    tab20 = sns.color_palette("tab20", 20)
    colours = tab20[0::2] + tab20[1::2]
    registered = {name: index for index, name in enumerate(layers.names())}
    palette = {name: colours[registered[name] % 20] for name in dict.fromkeys(variants) if name in registered}
    free = [colour for colour in colours if colour not in palette.values()] or colours
    for index, name in enumerate(name for name in dict.fromkeys(variants) if name not in palette):
        palette[name] = free[index % len(free)]
    return palette


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


def accuracy_vs_flops(points: pd.DataFrame, palette: dict) -> Figure:
    """One panel per task and N: mean held-out accuracy over seeds (bars: one standard deviation) against
    forward FLOPs per token, log axis, with the Pareto front."""
    panels = list(points.groupby(["task", "seq_len"], sort=False))
    figure, axes = _figure(len(panels))
    for ax, ((task, seq_len), panel) in zip(axes, panels):
        for _, row in panel.iterrows():
            ax.errorbar(row["flops_per_token"], row["accuracy_mean"], yerr=row["accuracy_sd"], fmt="o",
                        color=palette[row["variant"]], capsize=3, markersize=5)
            ax.annotate(row["variant"], (row["flops_per_token"], row["accuracy_mean"]), fontsize=6,
                        xytext=(4, 3), textcoords="offset points")
        front = panel[panel["pareto"]].sort_values("flops_per_token")
        ax.plot(front["flops_per_token"], front["accuracy_mean"], drawstyle="steps-post", color="black",
                linestyle="--", linewidth=1, label="Pareto front")
        _log_axis_with_readable_ticks(ax, panel["flops_per_token"])
        ax.set_title(f"{task}, N = {seq_len}")
        ax.set_xlabel(label("flops_per_token"))
        ax.set_ylabel("held-out " + label("accuracy"))
        ax.legend(loc="best", fontsize=7)
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


def scaling(points: pd.DataFrame, metric: str, exponents: pd.DataFrame, marks: pd.DataFrame, palette: dict,
            title: str) -> Figure:
    """`metric` against N, log-log, one panel per measurement: a line per variant (with its p20-p80 band for
    times), the fitted exponent in the legend, a cross where the variant first ran out of memory (placed on
    its fitted trend) and a star where it overtakes softmax attention (`marks`: variant, measurement, seq_len)."""
    measurements = [m for m in MEASUREMENT_TITLES if m in set(points["measurement"])]
    figure, axes = _figure(len(measurements), width_per_panel=6.0, height=4.8, columns=2)
    scale = METRICS[metric].scale
    for ax, measurement in zip(axes, measurements):
        for variant, group in points[points["measurement"] == measurement].groupby("variant", sort=False):
            colour = palette[variant]
            ok = group[(group["status"] == "ok") & group[metric].notna()]
            exponent = exponents.query("variant == @variant and measurement == @measurement")["exponent"]
            slope = exponent.iloc[0] if len(exponent) else math.nan
            name = f"{variant}  N^{slope:.2f}" if math.isfinite(slope) else variant
            sns.lineplot(x=ok["seq_len"].to_numpy(), y=ok[metric].to_numpy() * scale, ax=ax, color=colour,
                         marker="o", markersize=4, linewidth=1.2, label=name)
            if metric == "time_ms" and len(ok):
                ax.fill_between(ok["seq_len"], ok["time_p20_ms"], ok["time_p80_ms"], color=colour, alpha=0.2)
            _mark_out_of_memory(ax, group, ok, metric, scale, slope, colour)
            mark = marks.query("variant == @variant and measurement == @measurement")
            for seq_len in mark["seq_len"]:
                at = ok[ok["seq_len"] == seq_len]
                if len(at):
                    ax.plot(seq_len, at[metric].iloc[0] * scale, marker="*", markersize=12, color=colour,
                            markeredgecolor="black", markeredgewidth=0.6, linestyle="none")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(MEASUREMENT_TITLES[measurement])
        ax.set_xlabel(label("seq_len"))
        ax.set_ylabel(label(metric))
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], marker="X", color="grey", linestyle="none", markersize=8),
                    Line2D([], [], marker="*", color="grey", markeredgecolor="black", linestyle="none", markersize=11)]
        labels += ["out of memory", "overtakes softmax attention"]
        ax.legend(handles, labels, loc="upper left", fontsize=6, framealpha=0.85)
    figure.suptitle(title)
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
    ax.annotate("OOM", (seq_len, value), fontsize=6, xytext=(4, -8), textcoords="offset points", color=colour)


def oom_frontier(table: pd.DataFrame, palette: dict, title: str) -> Figure:
    """Per variant, on a log N axis: a dot at the largest N that fit (hollow where nothing failed, so it is
    only a lower bound), a red bar at the first N that did not, a diamond at the N the fit predicts."""
    table = table.sort_values(["max_seq_len", "variant"]).reset_index(drop=True)
    figure, (ax,) = _figure(1, width_per_panel=7.5, height=0.32 * len(table) + 1.6)
    for y, row in table.iterrows():
        colour = palette.get(row["variant"], "grey")
        lower_bound = not row["searched"] and not math.isfinite(row["first_failing_seq_len"])
        ax.plot(row["max_seq_len"], y, marker="o", markersize=8, linestyle="none", markeredgecolor=colour,
                markerfacecolor="white" if lower_bound else colour, markeredgewidth=1.5)
        if math.isfinite(row["first_failing_seq_len"]):
            ax.plot(row["first_failing_seq_len"], y, marker="|", markersize=14, color="red", markeredgewidth=2)
        if math.isfinite(row["predicted_max_seq_len"]):
            ax.plot(row["predicted_max_seq_len"], y, marker="D", markersize=6, color="black")
    ax.set_yticks(range(len(table)), table["variant"])
    ax.set_ylim(-0.7, len(table) - 0.3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(label("seq_len"))
    ax.legend([Line2D([], [], marker="o", color="grey", linestyle="none"),
               Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor="grey", linestyle="none"),
               Line2D([], [], marker="|", color="red", linestyle="none", markersize=12, markeredgewidth=2),
               Line2D([], [], marker="D", color="black", linestyle="none")],
              ["largest N that fit", "largest N run, none failed (a lower bound)", "first N out of memory",
               "predicted largest N at the budget"], loc="lower right", fontsize=7)
    ax.set_title(title)
    return figure


def loss_by_position(positions: pd.DataFrame, palette: dict) -> Figure:
    """Held-out loss against the position in the window, one panel per task and N, mean over seeds with a
    band of one standard deviation; positions in bins that double in width, drawn at the bin's end."""
    panels = list(positions.groupby(["task", "seq_len"], sort=False))
    figure, axes = _figure(len(panels))
    for ax, ((task, seq_len), panel) in zip(axes, panels):
        for variant, rows in panel.groupby("variant", sort=False):
            curve = rows.groupby("position_end")["eval_loss_nats"].agg(["mean", "std"]).reset_index()
            ax.plot(curve["position_end"], curve["mean"], marker="o", markersize=3, color=palette[variant],
                    label=variant)
            ax.fill_between(curve["position_end"], curve["mean"] - curve["std"].fillna(0),
                            curve["mean"] + curve["std"].fillna(0), color=palette[variant], alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{task}, N = {seq_len}")
        ax.set_xlabel("position in the window (tokens, end of each doubling bin)")
        ax.set_ylabel(label("eval_loss_nats"))
        ax.legend(fontsize=6)
    return figure


def throughput(points: pd.DataFrame, palette: dict, title: str, ceilings: dict[str, float]) -> Figure:
    """Achieved TFLOP/s (counted FLOPs over the median time) against N, one panel per measurement, with the
    device's ceilings as horizontal lines (`ceilings`: name -> TFLOP/s)."""
    measurements = [m for m in MEASUREMENT_TITLES if m in set(points["measurement"])]
    figure, axes = _figure(len(measurements), width_per_panel=6.0, height=4.5, columns=2)
    for ax, measurement in zip(axes, measurements):
        rows = points[(points["measurement"] == measurement) & (points["status"] == "ok")]
        for variant, group in rows.groupby("variant", sort=False):
            ax.plot(group["seq_len"], achieved_tflops_per_s(group), marker="o", markersize=4, color=palette[variant],
                    label=variant)
        for (name, tflops), style in zip(ceilings.items(), ("-", "--")):
            ax.axhline(tflops, color="black", linestyle=style, linewidth=1)
            ax.annotate(f"{name}: {tflops:.3g} TFLOP/s", (0.01, tflops), xycoords=("axes fraction", "data"),
                        fontsize=6, xytext=(0, 3), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(MEASUREMENT_TITLES[measurement])
        ax.set_xlabel(label("seq_len"))
        ax.set_ylabel(label("tflops_per_s"))
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=7)
    figure.suptitle(title)
    return figure
