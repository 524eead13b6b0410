"""`ttt-bench report`: every figure and both documents from a fixture with failed and OOM cells; the numbers
behind the figures (exponents, crossovers, frontier, Pareto front) against answers known in closed form."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from report_fixture import BUDGET_BYTES, MESSAGES, SEQ_LENS, write_fixture_results

from ttt_bench.cli import main
from ttt_bench.report import frames, frontier, pareto, scaling
from ttt_bench.report.build import ReportOptions, build_report, device_slug
from ttt_bench.report.figures import variant_palette
from ttt_bench.report.peaks import datasheet_tflops
from ttt_bench.report.tables import MISSING, format_number
from ttt_bench.results import load_results

FIGURES = ("accuracy-vs-flops", "time-vs-seq-len", "memory-vs-seq-len", "oom-frontier", "tflops-vs-seq-len",
           "loss-vs-position")
UNIT = re.compile(r"\(.+\)\s*$")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    results = write_fixture_results(root / "results")
    build_report([results], root / "out")
    return root / "out"


@pytest.fixture(scope="module")
def points(tmp_path_factory) -> pd.DataFrame:
    results = write_fixture_results(tmp_path_factory.mktemp("points") / "results")
    frame = load_results(results)
    return frames.scaling_points(frames.profile_rows(frame))


@pytest.mark.parametrize("stem", FIGURES)
def test_every_figure_is_a_decodable_image_with_content(report, stem):
    png = report / "figures" / f"{stem}.png"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
        dpi = image.info.get("dpi", (0, 0))[0]
    assert min(pixels.shape) > 500 and round(dpi) == 300, f"{stem}: {pixels.shape} px at {dpi} dpi"
    assert pixels.std() > 5, f"{stem}: looks blank (grey-level sd {pixels.std():.2f})"
    assert (pixels < 128).mean() > 0.002, f"{stem}: hardly any dark pixels: no lines or text"
    root = ElementTree.parse(report / "figures" / f"{stem}.svg").getroot()
    assert root.tag.endswith("svg") and len(list(root.iter())) > 50


def test_markdown_shows_every_figure_and_section(report):
    text = (report / "report.md").read_text()
    linked = set(re.findall(r"!\[[^]]*\]\((figures/[^)]+)\)", text))
    assert linked == {f"figures/{stem}.png" for stem in FIGURES}
    for title in ("Accuracy vs FLOPs", "Time vs N", "Memory vs N", "Out-of-memory frontier", "Crossover",
                  "Achieved TFLOP/s", "Loss vs token position", "Cells that did not finish"):
        assert f"## {title}" in text, title
    assert "Test CPU" in text and "abc123" in text and "2.13.0+cpu" in text


def test_failed_cells_are_listed_with_status_and_message(report):
    for document in ("report.md", "report.html"):
        text = (report / document).read_text()
        section = text[text.index("Cells that did not finish"):]
        for status, message in MESSAGES.items():
            assert status in section and message in section, (document, status)


class _Tables(HTMLParser):
    """Each <table> as (headings, rows of cells); the header-less environment table as (key, value) rows."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "table":
            self.tables.append({"head": [], "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("th", "td"):
            self._cell = [tag]
        elif tag == "img":
            self.images.append(attributes.get("src", ""))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            self.tables[-1]["rows"][-1].append((self._cell[0], "".join(self._cell[1:]).strip()))
            self._cell = None


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def test_html_is_self_contained(report):
    text = (report / "report.html").read_text()
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}|<link|<script|@import|url\(", text, re.IGNORECASE)
    parser = _Tables()
    parser.feed(text)
    assert len(parser.images) == len(FIGURES)
    for source in parser.images:
        assert source.startswith("data:image/png;base64,")


def test_every_html_table_gives_units_for_its_numbers(report):
    parser = _Tables()
    parser.feed((report / "report.html").read_text())
    assert len(parser.tables) >= 10
    for table in parser.tables:
        rows = [row for row in table["rows"] if row]
        if all(kind == "th" for kind, _ in rows[0]) and len(rows) > 1:  # a data table: headings, then rows
            headings = [text for _, text in rows[0]]
            for column, heading in enumerate(headings):
                values = [row[column][1] for row in rows[1:] if row[column][1] != MISSING]
                numeric = values and all(_is_number(v) for v in values)
                if numeric and heading != "seed":
                    assert UNIT.search(heading), f"numeric column without a unit: {heading!r}"
        else:  # the environment: a heading and a value per row
            for (_, key), (_, value) in rows:
                if _is_number(value):
                    assert UNIT.search(key), f"numeric fact without a unit: {key!r}"


def test_exponents_are_recovered_from_exact_power_laws(points):
    time = scaling.exponents(points, "time_ms").set_index(["variant", "measurement"])["exponent"]
    assert time["attention-sdpa-causal", "forward"] == pytest.approx(2.0, abs=1e-9)
    assert time["linear-attention-causal", "forward_backward"] == pytest.approx(1.0, abs=1e-9)
    assert math.isnan(scaling.fit_exponent([1024], [1.0]))
    # Only N within FIT_SPAN of the largest count: an overhead-dominated small N does not bend the slope.
    assert scaling.fit_exponent([16, 1024, 2048, 4096], [50.0, 1024, 2048, 4096]) == pytest.approx(1.0)


def test_crossovers_against_attention(points):
    table = scaling.crossovers(points, "attention-sdpa-causal").set_index(["variant", "measurement"])
    linear, ttt = table.loc["linear-attention-causal", "forward"], table.loc["ttt-linear", "forward"]
    assert linear["faster_from_seq_len"] == 1024
    # At N = 1024 ttt-linear takes 10.24 ms against attention's 10.49 ms: inside the p20-p80 bands, a tie.
    assert ttt["faster_from_seq_len"] == 4096
    assert linear["lighter_from_seq_len"] == 256 and ttt["lighter_from_seq_len"] == 1024
    assert ttt["compared_at_seq_len"] == 4096
    assert ttt["time_ratio"] == pytest.approx(1e-2 * 4096 / (1e-5 * 4096**2))


def test_attention_out_of_memory_counts_as_beaten():
    mine = pd.DataFrame({"seq_len": [1024, 2048], "status": ["ok", "ok"], "time_ms": [5.0, 10.0]})
    reference = pd.DataFrame({"seq_len": [1024, 2048], "status": ["ok", "oom"], "time_ms": [4.0, math.nan]})
    assert scaling.first_better_seq_len(mine, reference, "time_ms", "time_ms", "time_ms") == 2048
    slower_again = pd.DataFrame({"seq_len": [1024, 2048], "status": ["ok", "ok"], "time_ms": [4.0, 30.0]})
    assert math.isnan(scaling.first_better_seq_len(mine.assign(time_ms=[3.0, 40.0]), slower_again, "time_ms",
                                                   "time_ms", "time_ms"))


def test_frontier_from_a_sweep(points):
    fwd_bwd = points[points["measurement"] == "forward_backward"]
    table = frontier.frontier_from_points(fwd_bwd, BUDGET_BYTES).set_index("variant")
    attention, linear = table.loc["attention-sdpa-causal"], table.loc["linear-attention-causal"]
    assert attention["max_seq_len"] == max(SEQ_LENS) and attention["first_failing_seq_len"] == 16384
    assert math.isnan(linear["first_failing_seq_len"])  # a timeout is not out of memory
    assert linear["predicted_max_seq_len"] == pytest.approx((BUDGET_BYTES - 3e5) / 6000, rel=1e-6)
    c2, c1, c0 = 24.0, 300.0, 3e5 - BUDGET_BYTES
    assert attention["predicted_max_seq_len"] == pytest.approx((-c1 + math.sqrt(c1**2 - 4 * c2 * c0)) / (2 * c2),
                                                               rel=1e-6)
    assert frontier.budget_bytes(pd.DataFrame({"memory_budget_bytes": [BUDGET_BYTES] * 2})) == BUDGET_BYTES


def test_pareto_front_keeps_only_undominated_points():
    panel = pd.DataFrame({"variant": list("abcde"), "flops_per_token": [1.0, 2.0, 3.0, 3.0, 5.0],
                          "accuracy_mean": [0.5, 0.4, 0.7, 0.6, 0.7]})
    assert list(pareto.pareto_front(panel)["variant"]) == ["a", "c"]


def test_accuracy_points_average_seeds_and_drop_diverged(tmp_path):
    frame = load_results(write_fixture_results(tmp_path / "results"))
    points = pareto.accuracy_points(frames.train_rows(frame)).set_index(["task", "variant"])
    ttt = points.loc["mnist", "ttt-linear"]
    assert ttt["accuracy_mean"] == pytest.approx(0.86) and ttt["seeds"] == 2
    assert ttt["accuracy_sd"] == pytest.approx(np.std([0.85, 0.87], ddof=1))
    assert ("mnist", "ttt-mlp") not in points.index
    front = points.loc["mnist"]
    assert list(front.index[front["pareto"]]) == ["linear-attention-causal", "ttt-linear"]


def test_report_of_profiling_only_results_says_what_is_missing(tmp_path):
    results = write_fixture_results(tmp_path / "results")
    for path in (results / "cells").glob("*mnist*"):
        path.unlink()
    for path in (results / "cells").glob("*bytes-lm*"):
        path.unlink()
    (tmp_path / "out" / "figures").mkdir(parents=True)
    (tmp_path / "out" / "figures" / "accuracy-vs-flops.png").write_bytes(b"from an earlier report")
    build_report([results], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "No finished training rows" in text and "No per-position losses" in text
    assert not (tmp_path / "out" / "figures" / "accuracy-vs-flops.png").exists()


def test_a_given_peak_is_drawn_and_named(tmp_path):
    build_report([write_fixture_results(tmp_path / "results")], tmp_path / "out", ReportOptions(peak_tflops=1.5))
    text = (tmp_path / "out" / "report.md").read_text()
    assert "given peak 1.5 TFLOP/s" in text and "dense matmul measured here 0.35 TFLOP/s" in text


def test_cli_report_and_its_errors(tmp_path, capsys):
    results = write_fixture_results(tmp_path / "results")
    assert main(["report", str(results), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.html").exists()
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "out2")]) == 2
    assert "not a ttt-bench results folder" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_report_names_and_peaks():
    assert device_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert device_slug("NVIDIA H200") == "h200"
    assert device_slug("NVIDIA A100-SXM4-80GB") == "a100"
    assert device_slug("not available") == "cpu"
    assert datasheet_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert datasheet_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.5
    assert datasheet_tflops("Intel Xeon", "float32") is None


def test_number_formatting():
    assert format_number(16384) == "16,384"
    assert format_number(0.123456) == "0.1235"
    assert format_number(11322.4) == "11,322"
    assert format_number(6.6571993088e10) == "6.657e+10"
    assert format_number(float("nan")) == MISSING


def test_a_registered_layer_keeps_its_colour_in_every_report():
    alone = variant_palette(["ttt-linear"])
    crowded = variant_palette(["attention-sdpa-causal", "my-sweep-label", "ttt-linear", "delta-rule"])
    assert alone["ttt-linear"] == crowded["ttt-linear"]
    assert len(set(crowded.values())) == 4  # a label takes a colour no registered layer here has
