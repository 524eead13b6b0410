"""`ttt-bench report`: every figure and both documents from a fixture with failed and OOM cells; the numbers
behind the figures (exponents, crossovers, frontier, Pareto front) against answers known in closed form; a folder
holding two thread settings and noisy timings (never averaged, marked, not fitted); the figures' legends, markers
and colours read from their matplotlib objects."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from PIL import Image
from report_fixture import (
    BUDGET_BYTES,
    BUSY_SDPA_512_MS,
    FALLING,
    FORWARD_SLOWER,
    MESSAGES,
    QUIET_SDPA_512_MS,
    SEQ_LENS,
    SPREADS,
    measure_settings_json,
    write_fixture_results,
    write_two_settings_results,
)

from ttt_bench import layers
from ttt_bench.cli import main
from ttt_bench.layers.control import CONTROL_LAYER
from ttt_bench.report import figures, frames, frontier, pareto, scaling, seed_stats
from ttt_bench.report.build import ReportOptions, build_report, default_report_name, device_slug
from ttt_bench.report.figures import NOISY_FACE
from ttt_bench.report.palette import LEAD_LAYERS, Palette, palette_of
from ttt_bench.report.peaks import datasheet_tflops
from ttt_bench.report.settings import series
from ttt_bench.report.tables import MISSING, format_number
from ttt_bench.results import ResultStore, load_results

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
    time = scaling.exponents(points, "time_ms").set_index(["series", "measurement"])["exponent"]
    assert time["attention-sdpa-causal", "forward"] == pytest.approx(2.0, abs=1e-9)
    assert time["linear-attention-causal", "forward_backward"] == pytest.approx(1.0, abs=1e-9)
    one_point = scaling.fit_exponent([1024], [1.0])
    assert math.isnan(one_point.value) and one_point.reason == "not fitted: fewer than 2 N measured"
    # Only N within FIT_SPAN of the largest count: an overhead-dominated small N does not bend the slope.
    assert scaling.fit_exponent([16, 1024, 2048, 4096], [50.0, 1024, 2048, 4096]).value == pytest.approx(1.0)


def test_an_exponent_is_refused_with_its_reason_from_noisy_or_falling_points():
    noisy = scaling.fit_exponent([256, 512, 1024, 2048], [1.0, 2.0, 4.0, 8.0], noisy=[False, True, False, True])
    assert math.isnan(noisy.value) and noisy.text() == "not fitted: 2 of 4 points noisy"
    falling = scaling.fit_exponent([256, 512, 1024, 2048], [1.0, 2.0, 3.1, 2.0])
    assert falling.text() == "not fitted: time falls with N (3.1 ms at 1024 > 2 ms at 2048)"
    memory = scaling.fit_exponent([1024, 2048], [2 * 2**20, 2**20], metric="peak_bytes")
    assert memory.reason == "not fitted: peak tracked memory falls with N (2 MiB at 1024 > 1 MiB at 2048)"
    # A noisy point outside the fitted span (below largest N / FIT_SPAN) does not refuse the fit.
    assert scaling.fit_exponent([16, 1024, 2048], [9.0, 1.0, 2.0], noisy=[True, False, False]).value == \
        pytest.approx(1.0)


def test_crossovers_against_attention(points):
    table = scaling.crossovers(points, "attention-sdpa-causal").set_index(["series", "measurement"])
    linear, ttt = table.loc["linear-attention-causal", "forward"], table.loc["ttt-linear", "forward"]
    assert linear["faster_from_seq_len"] == 1024
    # At N = 1024 ttt-linear takes 10.24 ms against attention's 10.49 ms: inside the p20-p80 bands, a tie.
    assert ttt["faster_from_seq_len"] == 4096
    assert linear["lighter_from_seq_len"] == 256 and ttt["lighter_from_seq_len"] == 1024
    assert ttt["compared_at_seq_len"] == 4096
    assert ttt["time_ratio"] == pytest.approx(1e-2 * 4096 / (1e-5 * 4096**2))
    assert (table["faster_refused"] == "").all()


def test_attention_out_of_memory_counts_as_beaten():
    mine = pd.DataFrame({"seq_len": [1024, 2048], "status": ["ok", "ok"], "time_ms": [5.0, 10.0]})
    reference = pd.DataFrame({"seq_len": [1024, 2048], "status": ["ok", "oom"], "time_ms": [4.0, math.nan]})
    assert scaling.first_better_seq_len(mine, reference, "time_ms", "time_ms", "time_ms") == 2048
    slower_again = pd.DataFrame({"seq_len": [1024, 2048], "status": ["ok", "ok"], "time_ms": [4.0, 30.0]})
    assert math.isnan(scaling.first_better_seq_len(mine.assign(time_ms=[3.0, 40.0]), slower_again, "time_ms",
                                                   "time_ms", "time_ms"))


def test_frontier_from_a_sweep(tmp_path):
    rows = frames.profile_rows(load_results(write_fixture_results(tmp_path / "results")))
    points = frames.scaling_points(rows)
    fwd_bwd = points[points["measurement"] == "forward_backward"]
    orders = frontier.declared_orders(rows, series(rows, placed_by=("seq_len",)).labels)
    table = frontier.frontier_from_points(fwd_bwd, orders, BUDGET_BYTES).set_index("variant")
    attention, linear = table.loc["attention-sdpa-causal"], table.loc["linear-attention-causal"]
    assert attention["max_seq_len"] == max(SEQ_LENS) and attention["first_failing_seq_len"] == 16384
    assert math.isnan(linear["first_failing_seq_len"])  # a timeout is not out of memory
    # Three lengths do not support a fit (docs/oom.md): no prediction, and the note says why.
    assert math.isnan(linear["predicted_max_seq_len"]) and linear["prediction_note"]
    assert frontier.budget_bytes(pd.DataFrame({"memory_budget_bytes": [BUDGET_BYTES] * 2})) == BUDGET_BYTES


def test_pareto_front_keeps_only_undominated_points():
    panel = pd.DataFrame({"variant": list("abcde"), "flops_per_token": [1.0, 2.0, 3.0, 3.0, 5.0],
                          "accuracy_mean": [0.5, 0.4, 0.7, 0.6, 0.7]})
    assert list(pareto.pareto_front(panel)["variant"]) == ["a", "c"]


def test_accuracy_points_average_seeds_and_drop_diverged(tmp_path):
    frame = load_results(write_fixture_results(tmp_path / "results"))
    statistics = seed_stats.seed_statistics(frames.train_rows(frame))
    assert statistics.loc[statistics["series"] == "ttt-linear", "accuracy_sd"].iloc[0] == pytest.approx(
        np.std([0.85, 0.87], ddof=1))
    points = pareto.accuracy_points(statistics).set_index(["task", "variant"])
    ttt = points.loc["mnist", "ttt-linear"]
    assert ttt["accuracy_mean"] == pytest.approx(0.86) and ttt["seeds"] == 2
    assert ("mnist", "ttt-mlp") not in points.index
    front = points.loc["mnist"]
    assert list(front.index[front["pareto"]]) == ["linear-attention-causal", "ttt-linear"]


def _headings(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, re.MULTILINE)


def _assert_no_empty_section(text: str) -> None:
    for block in text.split("\n## ")[1:]:
        assert "![" in block or "\n| " in block, f"section without a figure or a table: {block.splitlines()[0]!r}"


def test_report_of_profiling_only_results_has_no_accuracy_heading_and_says_what_is_missing(tmp_path):
    results = write_fixture_results(tmp_path / "results")
    for path in (results / "cells").glob("*mnist*"):
        path.unlink()
    for path in (results / "cells").glob("*bytes-lm*"):
        path.unlink()
    (tmp_path / "out" / "figures").mkdir(parents=True)
    (tmp_path / "out" / "figures" / "accuracy-vs-flops.png").write_bytes(b"from an earlier report")
    (tmp_path / "out" / ".ttt-bench-report.json").write_text('{"files": ["figures/accuracy-vs-flops.png"]}')
    build_report([results], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    headings = _headings(text)
    assert not any(h.startswith(("Accuracy", "Loss vs token position")) for h in headings), headings
    assert any(h.startswith("Time vs N") for h in headings)
    absent = text[text.index("Not in these results:"):text.index("\n## ")]
    assert "No finished training rows" in absent and "No per-position losses" in absent
    _assert_no_empty_section(text)
    assert not (tmp_path / "out" / "figures" / "accuracy-vs-flops.png").exists()


def test_report_without_failures_or_profiling_has_neither_heading(tmp_path):
    store = ResultStore(tmp_path / "results")
    source = load_results(write_fixture_results(tmp_path / "fixture"))
    for config_hash, rows in source[(source["measurement"] == "train") & (source["status"] == "ok")].groupby(
            "config_hash"):
        store.write_cell(str(config_hash), rows.to_dict("records"))
    build_report([tmp_path / "results"], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert _headings(text) == ["Accuracy vs FLOPs", "Accuracy over seeds", "Which series the intervals separate"]
    assert "No profiling rows in these results" in text
    _assert_no_empty_section(text)


def test_a_given_peak_is_drawn_and_named(tmp_path):
    build_report([write_fixture_results(tmp_path / "results")], tmp_path / "out", ReportOptions(peak_tflops=1.5))
    text = (tmp_path / "out" / "report.md").read_text()
    assert "given peak 1.5 TFLOP/s" in text and "dense matmul measured here 0.35 TFLOP/s" in text


def test_cli_report_of_a_missing_folder_is_one_line(tmp_path, capsys):
    # A report through the CLI that succeeds: test_report_without_out_writes_beside_the_results_...
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "out2")]) == 2
    error = capsys.readouterr().err
    assert "not a ttt-bench results folder" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out2").exists()


def test_report_without_out_writes_beside_the_results_never_over_a_committed_report(tmp_path, capsys,
                                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = write_fixture_results(tmp_path / "results" / "quick")
    committed = tmp_path / "reports" / default_report_name([results])
    committed.mkdir(parents=True)
    (committed / "report.md").write_text("the committed report\n")
    assert main(["report", str(results)]) == 0
    printed = capsys.readouterr().out
    assert (results / "report" / "report.html").exists() and (results / "report" / "report.md").exists()
    assert (committed / "report.md").read_text() == "the committed report\n"
    assert sorted(path.name for path in committed.iterdir()) == ["report.md"]
    assert f"--out reports/{committed.name}" in printed


def test_the_report_is_named_after_the_suite_not_the_folder(report, tmp_path):
    text = (report / "report.md").read_text()  # from a folder named 'results'
    assert text.startswith("# ttt-bench report: fixture, fixture-train\n")
    assert "Suite `fixture" in text and "results`" not in text
    results = write_fixture_results(tmp_path / "some-folder")
    assert default_report_name([results]) == "cpu-fixture"
    # A folder from before rows carried their suite: the name in its suite.toml.
    for path in (results / "cells").glob("*.parquet"):
        frame = pd.read_parquet(path).drop(columns="suite")
        frame.to_parquet(path, index=False)
    (results / "suite.toml").write_text('name = "older-suite"\n')
    assert default_report_name([results]) == "cpu-older-suite"


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


def test_a_layer_keeps_its_colour_in_every_report_and_its_variants_differ_by_style():
    alone = Palette({"ttt-linear": "ttt-linear"})
    crowded = Palette({"attention-sdpa-causal": "attention-sdpa-causal", "my-sweep-label": "ttt-linear",
                       "ttt-linear": "ttt-linear", "delta-rule": "delta-rule", "mine": "my-own-layer"})
    for name in ("attention-sdpa-causal", "my-sweep-label", "delta-rule", "mine"):
        crowded.style(name)  # drawn before ttt-linear: the order of a report does not move a layer's colour
    assert alone.style("ttt-linear").colour == crowded.style("ttt-linear").colour
    assert crowded.style("my-sweep-label").colour == crowded.style("ttt-linear").colour  # one layer, one hue
    assert (crowded.style("my-sweep-label").linestyle, crowded.style("my-sweep-label").marker) != (
        crowded.style("ttt-linear").linestyle, crowded.style("ttt-linear").marker)
    colours = {crowded.style(name).colour for name in ("attention-sdpa-causal", "ttt-linear", "delta-rule", "mine")}
    assert len(colours) == 4
    # A layer the registry does not know (a user's own) takes a colour from its name alone.
    assert Palette({}).style("my-own-layer").colour == crowded.style("mine").colour
    series_palette = Palette({"ttt-linear": "ttt-linear"})
    series_palette.learn_series(["ttt-linear (threads=1)", "ttt-linear (threads=2)"], ["ttt-linear"] * 2)
    one, two = series_palette.style("ttt-linear (threads=1)"), series_palette.style("ttt-linear (threads=2)")
    assert one.colour == two.colour == alone.style("ttt-linear").colour and one.linestyle != two.linestyle


@pytest.fixture(scope="module")
def two_settings(tmp_path_factory) -> Path:
    return write_two_settings_results(tmp_path_factory.mktemp("two-settings") / "results")


@pytest.fixture(scope="module")
def two_settings_points(two_settings) -> pd.DataFrame:
    return frames.scaling_points(frames.profile_rows(load_results(two_settings)))


def test_rows_measured_under_other_threads_are_separate_series_never_averaged(two_settings_points):
    at_512 = two_settings_points.query("variant == 'attention-sdpa-causal' and measurement == 'forward' and "
                                       "seq_len == 512").set_index("series")["time_ms"]
    assert at_512.to_dict() == {"attention-sdpa-causal (threads=1)": QUIET_SDPA_512_MS,
                                "attention-sdpa-causal (threads=2)": BUSY_SDPA_512_MS}
    assert set(two_settings_points["series"]) == {f"{variant} (threads={threads})" for threads in (1, 2)
                                                  for variant in ("attention-sdpa-causal", "ttt-linear")}
    assert len(two_settings_points) == 2 * 2 * 2 * 4  # variants x threads x passes x N: nothing merged


def test_a_series_names_only_the_settings_that_differ(tmp_path):
    frame = load_results(write_fixture_results(tmp_path / "results"))
    profile = frames.profile_rows(frame)
    assert set(series(profile, placed_by=("seq_len",)).labels) == set(profile["variant"])  # one setting: bare names
    knobbed = profile.assign(knobs=np.where(profile["seq_len"] == 256, '{"mini_batch": 8}', '{"mini_batch": 16}'))
    found = series(knobbed[knobbed["variant"] == "ttt-linear"], placed_by=("seq_len",))
    assert set(found.labels) == {"ttt-linear (mini_batch=8)", "ttt-linear (mini_batch=16)"}
    assert found.differing == {"mini_batch": ["8", "16"]}
    # Rows of a folder from before measure settings beside rows with them: said, not hidden.
    recorded = profile.assign(measure_settings=np.where(profile["seq_len"] == 256, measure_settings_json(2), None))
    labels = series(recorded[recorded["variant"] == "ttt-linear"], placed_by=("seq_len",)).labels
    assert set(labels) == {"ttt-linear", "ttt-linear (measure settings not recorded)"}
    # A suite that left threads unset ran on torch's default: named apart from a suite that set the same count.
    unset = profile.assign(measure_settings=np.where(profile["seq_len"] == 256, measure_settings_json(2),
                                                     json_without_threads()))
    labels = series(unset[unset["variant"] == "ttt-linear"], placed_by=("seq_len",)).labels
    assert set(labels) == {"ttt-linear (threads=2)", "ttt-linear (threads=torch default 2)"}


def json_without_threads() -> str:
    return measure_settings_json(2).replace('"threads": 2', '"threads": null')


def test_noisy_timings_are_flagged_with_the_reason(two_settings_points):
    noisy = two_settings_points[two_settings_points["noisy"]].set_index(["series", "measurement", "seq_len"])
    busy = "attention-sdpa-causal (threads=2)"
    expected = {(busy, "forward", n) for (_, n) in SPREADS} | {(busy, m, FORWARD_SLOWER[1])
                                                                for m in ("forward", "forward_backward")}
    assert set(noisy.index) == expected
    assert noisy.loc[(busy, "forward", 512), "noise"] == "spread p80/p20 17x > 1.5"
    assert noisy.loc[(busy, "forward_backward", 1024), "noise"].startswith("forward 31.2 ms > forward + backward")


def test_an_older_folder_is_flagged_from_its_p20_and_p80():
    rows = pd.DataFrame({"config_hash": ["a", "b"], "measurement": ["forward"] * 2, "status": ["ok"] * 2,
                         "time_ms": [1.0, 1.0], "time_p20_ms": [0.5, 0.98], "time_p80_ms": [2.0, 1.02]})
    assert frames.noise_reasons(rows).tolist() == ["spread p80/p20 4x > 1.5", ""]


def test_no_exponent_or_crossover_is_read_from_noise(two_settings_points):
    time = scaling.exponents(two_settings_points, "time_ms").set_index(["series", "measurement"])
    assert time.loc[("attention-sdpa-causal (threads=1)", "forward"), "exponent"] == pytest.approx(2.0)
    assert time.loc[("attention-sdpa-causal (threads=2)", "forward"), "not_fitted"] == \
        "not fitted: 3 of 4 points noisy"
    (low, high), (t_low, t_high) = sorted(FALLING), (FALLING[min(FALLING)], FALLING[max(FALLING)])
    assert time.loc[("ttt-linear (threads=2)", "forward"), "not_fitted"] == \
        f"not fitted: time falls with N ({t_low:g} ms at {low} > {t_high:g} ms at {high})"
    memory = scaling.exponents(two_settings_points, "peak_bytes")
    assert memory["exponent"].notna().all()  # memory is not a timing: a noisy clock does not spoil it
    crossing = scaling.crossovers(two_settings_points, "attention-sdpa-causal").set_index(["series", "measurement"])
    quiet, busy = crossing.loc["ttt-linear (threads=1)", "forward"], crossing.loc["ttt-linear (threads=2)", "forward"]
    assert quiet["faster_from_seq_len"] == 1024 and quiet["faster_refused"] == ""
    assert math.isnan(busy["faster_from_seq_len"]) and math.isnan(busy["time_ratio"])
    assert busy["faster_refused"] == "not given: 3 of 8 timings noisy"
    assert busy["lighter_from_seq_len"] == quiet["lighter_from_seq_len"]  # memory crossovers stand


def test_the_report_names_the_setting_lists_noisy_cells_and_refuses_fits(two_settings, tmp_path):
    build_report([two_settings], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    headings = _headings(text)
    assert headings[0] == "Noisy timings" and "Cells that did not finish" not in headings
    noisy = text[text.index("## Noisy timings"):text.index("\n## ", text.index("## Noisy timings") + 1)]
    assert f"`ttt-bench run fixture-two-settings --out {two_settings} --retry-noisy`" in noisy
    assert "fewer threads" in noisy and "a load average of 3.5" in noisy
    assert noisy.count("| attention-sdpa-causal (threads=2) |") == 4
    assert len(re.findall(r"several settings: threads \((1, 2|2, 1)\)", text)) == 1
    assert "| attention-sdpa-causal (threads=2) | forward | not fitted: 3 of 4 points noisy |" in text
    assert "| ttt-linear (threads=2) | forward | not given: 3 of 8 timings noisy |" in text
    assert "13.95" not in text
    _assert_no_empty_section(text)


def _drawn(figure):
    figure.draw_without_rendering()
    return figure


def _assert_legends_outside_the_axes(figure) -> int:
    axes = [ax for ax in figure.axes if ax.get_visible()]
    legends = [*figure.legends, *(ax.get_legend() for ax in axes if ax.get_legend() is not None)]
    for legend in legends:
        box = legend.get_window_extent()
        for ax in axes:
            assert not box.overlaps(ax.get_window_extent()), f"a legend covers the axes of {ax.get_title()!r}"
    for ax in axes:
        assert not ax.texts, f"text drawn over the data of {ax.get_title()!r}: {[t.get_text() for t in ax.texts]}"
    return len(legends)


def test_the_scaling_figure_marks_noisy_points_hollow_and_keeps_its_legend_off_the_data(two_settings_points):
    exponents = scaling.exponents(two_settings_points, "time_ms")
    marks = pd.DataFrame(columns=["series", "measurement", "seq_len"])
    palette = Palette({"attention-sdpa-causal": "attention-sdpa-causal", "ttt-linear": "ttt-linear"})
    palette.learn_series(two_settings_points["series"], two_settings_points["variant"])
    figure = _drawn(figures.scaling(two_settings_points, "time_ms", exponents, marks, palette, "title"))
    assert _assert_legends_outside_the_axes(figure) == 2
    forward = figure.axes[0]
    labels = [text.get_text() for text in forward.get_legend().get_texts()]
    assert "attention-sdpa-causal (threads=1)  N^2.00" in labels
    assert "attention-sdpa-causal (threads=2)  not fitted: 3 of 4 points noisy" in labels
    assert any(label.startswith("noisy timing") for label in labels)
    hollow = [line for line in forward.lines if line.get_markerfacecolor() == NOISY_FACE]
    assert sorted(x for line in hollow for x in line.get_xdata()) == sorted([*(n for _, n in SPREADS),
                                                                             FORWARD_SLOWER[1]])
    busy = palette.style("attention-sdpa-causal (threads=2)")
    assert all(to_rgba(line.get_markeredgecolor()) == to_rgba(busy.colour) for line in hollow)
    quiet = palette.style("attention-sdpa-causal (threads=1)")
    assert quiet.colour == busy.colour and quiet.linestyle != busy.linestyle


def test_every_figure_keeps_its_legends_outside_the_axes(tmp_path, two_settings_points):
    frame = load_results(write_fixture_results(tmp_path / "results"))
    palette = palette_of(frame)
    accuracy = pareto.accuracy_points(seed_stats.seed_statistics(frames.train_rows(frame)))
    positions = frames.position_rows(frame).assign(series=lambda rows: rows["variant"])
    table = pd.DataFrame({"variant": ["a", "b"], "max_seq_len": [1024.0, 4096.0], "searched": [False, True],
                          "first_failing_seq_len": [2048.0, math.nan], "predicted_max_seq_len": [3000.0, 5000.0]})
    drawn = [figures.accuracy_vs_flops(accuracy, palette), figures.loss_by_position(positions, palette),
             figures.throughput(two_settings_points, palette, "title", {"dense matmul": 0.3, "peak": 0.5}),
             figures.oom_frontier(table, palette, "title")]
    for figure in drawn:
        assert _assert_legends_outside_the_axes(_drawn(figure)) >= 1
    labels = [text.get_text() for text in drawn[2].legends[0].get_texts()]
    assert "dense matmul: 0.3 TFLOP/s" in labels and "noisy timing (hollow)" in labels


def test_a_flat_stretch_within_the_timing_band_is_no_fall():
    seq_lens, times = [64, 128, 256], [0.361, 0.356, 0.9]
    assert scaling.fit_exponent(seq_lens, times).reason.startswith("not fitted: time falls with N (0.361 ms at 64")
    within = scaling.fit_exponent(seq_lens, times, low=[0.35, 0.35, 0.88], high=[0.37, 0.36, 0.92])
    assert within.reason == "" and math.isfinite(within.value)
    beyond = scaling.fit_exponent(seq_lens, times, low=[0.36, 0.35, 0.88], high=[0.362, 0.357, 0.92])
    assert beyond.reason.startswith("not fitted: time falls with N")


def test_no_time_crossover_is_read_where_a_time_falls_with_n():
    def series_points(name, variant, times):
        return pd.DataFrame({"series": name, "variant": variant, "settings": "", "measurement": "forward",
                             "seq_len": [256, 512, 1024], "status": "ok", "time_ms": times,
                             "time_p20_ms": [0.99 * t for t in times], "time_p80_ms": [1.01 * t for t in times],
                             "peak_bytes": [1.0, 2.0, 4.0], "noisy": False})
    attention = series_points("attention-sdpa-causal", "attention-sdpa-causal", [1.0, 40.0, 16.0])
    mine = series_points("ttt-linear", "ttt-linear", [2.0, 4.0, 8.0])
    row = scaling.crossovers(pd.concat([attention, mine]), "attention-sdpa-causal").iloc[0]
    assert math.isnan(row["faster_from_seq_len"]) and math.isnan(row["time_ratio"])
    assert row["faster_refused"] == ("not given: attention-sdpa-causal's time falls with N (40 ms at 512 > 16 ms "
                                     "at 1024)")
    assert row["memory_ratio"] == 1.0  # memory is not a timing: still compared


def test_the_layers_reports_compare_most_take_distinct_strong_colours():
    palette = Palette({})
    lead = [palette.layer_colour(name) for name in LEAD_LAYERS]
    assert len(set(lead)) == len(lead)
    shipped = [name for name in layers.names() if layers.is_shipped(name)]
    every = {palette.layer_colour(name) for name in shipped if name != CONTROL_LAYER}
    assert len(every) == len(shipped) - 1  # 25 hues: no two of the shipped layers share one
    luminance = lambda c: 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
    assert all(luminance(c) <= 0.7 and max(c) - min(c) >= 0.1 for c in every)  # no pale shade, no grey
