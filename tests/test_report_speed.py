"""The report's views of a layer's speed: each point's share of the dense-matmul ceiling, where a profiled call's
time goes (matrix products, other operators, outside any operator) at one N, and time and memory against the
mini-batch size; each built from a fixture with known numbers, and left out cleanly where the results lack them."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from report_fixture import (
    CEILING_TFLOPS,
    MINI_BATCH_FAILED,
    MINI_BATCHES,
    OP_TIME_FAILED,
    PROFILER_INFLATION,
    SPLITS,
    mini_batch_peak_bytes,
    mini_batch_time_ms,
    time_ms,
    write_fixture_results,
    write_mini_batch_results,
    write_op_time_results,
)

from ttt_bench.report import figures, frames, mini_batch, time_split
from ttt_bench.report.build import build_report
from ttt_bench.report.palette import palette_of
from ttt_bench.results import MiB, load_results


def _points(results: Path) -> pd.DataFrame:
    return frames.scaling_points(frames.profile_rows(load_results(results)))


def _section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _legends_outside_the_axes(figure) -> None:
    figure.draw_without_rendering()
    axes = [ax for ax in figure.axes if ax.get_visible()]
    legends = [*figure.legends, *(ax.get_legend() for ax in axes if ax.get_legend() is not None)]
    assert legends
    for legend in legends:
        assert not any(legend.get_window_extent().overlaps(ax.get_window_extent()) for ax in axes)
    assert not any(ax.texts for ax in axes)


def _has_content(png: Path) -> None:
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert min(pixels.shape) > 500 and pixels.std() > 5


@pytest.fixture(scope="module")
def op_time_report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("op-time")
    build_report([write_op_time_results(root / "results")], root / "out")
    return root / "out"


def test_the_split_is_shown_at_the_largest_n_most_series_were_profiled_at(tmp_path):
    points = _points(write_op_time_results(tmp_path / "results"))
    assert time_split.profiled_seq_len(points) == 1024
    assert time_split.profiled_seq_len(points.assign(profiled_time_ms=math.nan)) is None


def test_shares_of_the_ceiling_and_of_the_profiled_call(tmp_path):
    points = _points(write_op_time_results(tmp_path / "results"))
    rows = time_split.shares(points[(points["seq_len"] == 1024) & (points["status"] == "ok")])
    for row in rows.itertuples(index=False):
        matmul, other, ops = SPLITS[row.series]
        factor = 3.0 if row.measurement == "forward_backward" else 1.0
        timed = time_ms(row.series, 1024) * factor
        achieved = 2e6 * 1024 * factor / (timed * 1e-3) / 1e12
        assert row.achieved_tflops_per_s == pytest.approx(achieved)
        assert row.ceiling_share == pytest.approx(achieved / CEILING_TFLOPS)
        assert row.matmul_time_share == pytest.approx(matmul) and row.other_time_share == pytest.approx(other)
        assert row.outside_time_share == pytest.approx(1 - matmul - other)
        assert row.profiler_inflation == pytest.approx(PROFILER_INFLATION)
        assert row.time_per_op_us == pytest.approx(1000 * timed / ops)


def test_the_section_draws_each_series_split_and_names_the_ones_without_one(op_time_report):
    text = (op_time_report / "report.md").read_text()
    section = _section(text, "Where the time goes")
    assert "N = 1024 tokens" in section and "compute-bound" in section and "overhead-bound" in section
    assert "(figures/time-split.png)" in section and "profiled / unprofiled time (x)" in section
    assert "| ttt-linear | forward_backward | timeout |" in section
    _has_content(op_time_report / "figures" / "time-split.png")
    ceiling = _section(text, "Achieved TFLOP/s")
    assert "share of the ceiling at N = 256 (fraction)" in ceiling and "share of the ceiling at N = 1024" in ceiling


def test_the_split_figure_stacks_the_three_shares_and_keeps_failures_as_labels(tmp_path):
    points = _points(write_op_time_results(tmp_path / "results"))
    at = time_split.shares(points[points["seq_len"] == 1024])
    figure = figures.time_split(at, "title")
    _legends_outside_the_axes(figure)
    forward = next(ax for ax in figure.axes if ax.get_title() == "forward")
    labels = [tick.get_text() for tick in forward.get_yticklabels()]
    assert labels[-1] == "attention-sdpa-causal"  # the largest matrix-product share on top
    failed = f"{OP_TIME_FAILED[0]}: timeout"
    assert failed in labels
    parts = [[patch.get_width() for patch in container] for container in forward.containers]
    assert len(parts) == 3  # matrix products, other operators, outside any operator
    for index, name in enumerate(labels):
        widths = [part[index] for part in parts]
        if name == failed:
            assert widths == [0, 0, 0]
            continue
        matmul, other, _ = SPLITS[name]
        assert widths == pytest.approx([matmul, other, 1 - matmul - other])


def test_without_operator_profiles_the_section_is_listed_as_absent(tmp_path):
    results = write_fixture_results(tmp_path / "results")
    build_report([results], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Where the time goes" not in text and not (tmp_path / "out" / "figures" / "time-split.png").exists()
    absent = text[text.index("Not in these results:"):text.index("\n## ")]
    assert "No operator profiles in these results" in absent and '"op_time"' in absent
    assert "## Time and memory vs mini-batch size" not in text and "mini-batch" not in absent


@pytest.fixture(scope="module")
def mini_batch_report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mini-batch")
    build_report([write_mini_batch_results(root / "results")], root / "out")
    return root / "out"


def test_mini_batch_rows_fall_in_one_series_per_layer_and_setting(tmp_path):
    rows = frames.profile_rows(load_results(write_mini_batch_results(tmp_path / "results")))
    swept = mini_batch.mini_batch_rows(rows)
    assert sorted(swept[mini_batch.KNOB].unique()) == list(MINI_BATCHES)
    assert set(swept["knobs"]) == {'{"form": "dual"}'}
    points = frames.scaling_points(swept, placed_by=(mini_batch.KNOB, "seq_len"))
    assert set(points["series"]) == {"ttt-linear (threads=1)", "ttt-linear (threads=2)", "ttt-mlp (threads=2)"}
    quiet = points[(points["series"] == "ttt-linear (threads=1)") & (points["measurement"] == "forward")]
    assert quiet["time_ms"].tolist() == pytest.approx([mini_batch_time_ms("ttt-linear", b) for b in MINI_BATCHES])
    assert quiet["peak_bytes"].tolist() == pytest.approx([mini_batch_peak_bytes("ttt-linear", b)
                                                          for b in MINI_BATCHES])
    busy = points[(points["series"] == "ttt-linear (threads=2)") & (points["measurement"] == "forward")]
    assert busy["time_ms"].tolist() == pytest.approx([1.25 * t for t in quiet["time_ms"]])  # never averaged
    layer, b = MINI_BATCH_FAILED
    failed = points[(points["series"] == f"{layer} (threads=2)") & (points[mini_batch.KNOB] == b)]
    assert set(failed["status"]) == {"timeout"}


def test_the_mini_batch_section_draws_time_and_memory_against_b(mini_batch_report, tmp_path):
    text = (mini_batch_report / "report.md").read_text()
    section = _section(text, "Time and memory vs mini-batch size")
    assert "(figures/mini-batch.png)" in section and "log2 axis" in section and "2 points did not finish" in section
    assert "| ttt-mlp (threads=2) | forward | 512 | 1 | timeout |" in section
    _has_content(mini_batch_report / "figures" / "mini-batch.png")
    rows = frames.profile_rows(load_results(write_mini_batch_results(tmp_path / "results")))
    points = frames.scaling_points(mini_batch.mini_batch_rows(rows), placed_by=(mini_batch.KNOB, "seq_len"))
    palette = palette_of(rows)
    palette.learn_series(points["series"], points["layer"])
    figure = figures.mini_batch(points, palette, "title")
    _legends_outside_the_axes(figure)
    time_axis, memory_axis = figure.axes[0], figure.axes[2]  # forward: time above, memory below
    assert time_axis.get_xscale() == "log" and time_axis.get_yscale() == "log"
    assert [int(t) for t in time_axis.get_xticks()] == list(MINI_BATCHES)
    assert time_axis.get_ylabel() == "time (ms)" and memory_axis.get_ylabel() == "peak tracked memory (MiB)"
    assert time_axis.get_xlabel() == "mini-batch size b (tokens)"
    lines = {line.get_label(): line for line in memory_axis.get_lines() if not line.get_label().startswith("_")}
    mlp = lines["ttt-mlp (threads=2)"]
    assert list(mlp.get_xdata()) == [b for b in MINI_BATCHES if b != MINI_BATCH_FAILED[1]]  # the timeout not drawn
    assert list(mlp.get_ydata()) == pytest.approx([mini_batch_peak_bytes("ttt-mlp", b) / MiB
                                                   for b in mlp.get_xdata()])


def test_no_mini_batch_section_without_a_sweep_of_it(tmp_path):
    results = write_mini_batch_results(tmp_path / "results")
    cells = results / "cells"
    for path in cells.glob("*.parquet"):
        if not re.match(r"ttt-(linear|mlp)-16-t2", path.stem):
            path.unlink()
    build_report([results], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "mini-batch size" not in text and not (tmp_path / "out" / "figures" / "mini-batch.png").exists()
