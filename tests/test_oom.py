"""The out-of-memory frontier: the search on a known memory curve, the lengths the memory fit probes, `ttt-bench oom`
end to end on the CPU's tracked-bytes budget (checked against direct measurements and against itself at another
budget), what it prints before and while it searches, and the frontier tables the report draws from it."""

import contextlib
import io
import math
import re
import textwrap

import pandas as pd
import pytest

from ttt_bench.cli import main
from ttt_bench.profile.measure import QUICK_BUDGET, Cell, measure_cell
from ttt_bench.profile.memory_fit import CARD_BUDGETS_GIB, fit_memory, points_needed
from ttt_bench.report import frontier
from ttt_bench.report.tables import format_number
from ttt_bench.results import GiB, ResultStore
from ttt_bench.sweep.oom import Probe, fit_seq_lens, search_frontier, settings_lines
from ttt_bench.sweep.parse import load_suite
from ttt_bench.sweep.schema import OomSettings


def curve_probe(bytes_at, budget, calls=None, fail_at=None):
    def probe(seq_len):
        if calls is not None:
            calls.append(seq_len)
        if fail_at is not None and seq_len >= fail_at:
            return Probe(seq_len, "timeout", math.nan, math.nan, "too slow")
        peak = bytes_at(seq_len)
        return Probe(seq_len, "ok" if peak <= budget else "oom", peak if peak <= budget else math.nan, math.nan)
    return probe


@pytest.mark.parametrize("start", [1024, 16384])
@pytest.mark.parametrize("per_token, per_token_sq", [(1000.0, 0.0), (100.0, 3.0), (0.0, 40.0)])
def test_search_brackets_the_true_frontier_within_the_resolution(start, per_token, per_token_sq):
    budget = 50e6
    bytes_at = lambda n: 2e5 + per_token * n + per_token_sq * n * n  # noqa: E731
    truth = max(n for n in range(1, 200_000, 1) if bytes_at(n) <= budget) if per_token_sq == 0 else (
        (-per_token + math.sqrt(per_token**2 + 4 * per_token_sq * (budget - 2e5))) / (2 * per_token_sq))
    calls = []
    settings = OomSettings(start_seq_len=start, resolution=64, min_seq_len=16, max_seq_len=2**20)
    frontier = search_frontier(curve_probe(bytes_at, budget, calls), settings)
    assert frontier.status == "found"
    assert frontier.max_seq_len <= truth < frontier.first_failing_seq_len
    assert frontier.first_failing_seq_len - frontier.max_seq_len <= 64
    assert frontier.at_max.seq_len == frontier.max_seq_len and frontier.probes == len(set(calls)) == len(calls)
    assert len(calls) <= 2 * math.log2(2**20 / 64) + 2  # doubling plus bisection, not a scan


def test_search_reports_a_cap_none_fitting_and_a_failing_probe():
    linear = lambda n: 1000.0 * n  # noqa: E731
    capped = search_frontier(curve_probe(linear, 1e12), OomSettings(start_seq_len=1024, max_seq_len=8192))
    assert capped.status == "capped" and capped.max_seq_len == 8192 and capped.first_failing_seq_len is None
    none = search_frontier(curve_probe(linear, 1000.0), OomSettings(start_seq_len=1024, min_seq_len=16))
    assert none.status == "none fits" and none.max_seq_len is None and none.first_failing_seq_len == 16
    stopped = search_frontier(curve_probe(linear, 1e12, fail_at=4096), OomSettings(start_seq_len=1024))
    assert stopped.status == "timeout" and stopped.max_seq_len == 2048 and stopped.message == "too slow"


@pytest.mark.parametrize("largest", [96, 256, 1000, 1024, 1312, 2656, 32512])
@pytest.mark.parametrize("order", [1, 2])
def test_fit_lengths_spread_over_the_upper_half_below_the_frontier_in_whole_grains(largest, order):
    count = points_needed(order)
    lengths = fit_seq_lens(largest, count, min_seq_len=1)
    spacing = largest / 2 / (count - 1)
    grain = 2 ** math.floor(math.log2(spacing))
    assert len(lengths) == len(set(lengths)) == count and lengths == sorted(lengths)
    assert all(n % grain == 0 for n in lengths) and grain <= spacing < 2 * grain
    assert largest - grain < lengths[-1] <= largest and largest / 2 - grain < lengths[0] <= largest / 2
    assert all(b - a < 2 * spacing for a, b in zip(lengths, lengths[1:]))  # even: no gap of two spacings
    assert fit_seq_lens(largest, count, min_seq_len=lengths[1]) == lengths[1:]


OOM_SUITE = """
    name = "oom-test"
    layers = ["linear-attention-causal", "attention-naive-causal"]
    [grid]
    d_model = 16
    n_heads = 2
    [measure]
    threads = 1
    [oom]
    budget_gib = {budget_gib}
    start_seq_len = 128
    resolution = 32
"""


def run_oom(tmp_path, budget_mib: float, *flags: str) -> tuple[pd.DataFrame, ResultStore]:
    path = tmp_path / f"oom-{budget_mib:g}.toml"
    path.write_text(textwrap.dedent(OOM_SUITE.format(budget_gib=budget_mib / 1024)))
    out = tmp_path / f"out-{budget_mib:g}"
    assert main(["oom", str(path), "--out", str(out), *flags]) == 0
    return pd.read_csv(out / "oom_frontier.csv").set_index("variant"), ResultStore(out)


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[pd.DataFrame, ResultStore, str]:
    """`ttt-bench oom` at 2 MiB of tracked bytes, its table, its folder and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        table, store = run_oom(tmp_path_factory.mktemp("oom"), 2.0, "--quiet")
    return table, store, printed.getvalue()


def test_oom_command_finds_frontiers_that_direct_measurements_confirm(searched):
    table, store, printed = searched
    assert "linear-attention-causal" in printed and "oom_frontier.csv" in printed and "memory_order" in printed
    budget = int(2.0 * 2**20)
    for variant, row in table.iterrows():
        assert row.status == "found" and row.budget_bytes == budget
        assert row.first_failing_seq_len - row.max_seq_len <= 32
        fits = measure_cell(Cell(variant, int(row.max_seq_len), d_model=16, n_heads=2), QUICK_BUDGET,
                            memory_budget_bytes=budget, metrics=("memory",), passes=("fwd_bwd",))
        fails = measure_cell(Cell(variant, int(row.first_failing_seq_len), d_model=16, n_heads=2), QUICK_BUDGET,
                             memory_budget_bytes=budget, metrics=("memory",), passes=("fwd_bwd",))
        assert fits["status"] == "ok" and fits["fwd_bwd_peak_bytes"] == row.peak_bytes_at_max
        assert fails["status"] == "oom"
        # The fit rests on 3 lengths per coefficient of the declared order, all below the frontier, with the
        # peaks measured there, and predicts the measured bracket.
        lengths = [int(n) for n in str(row.fit_seq_lens).split(",")]
        assert len(lengths) == points_needed(row.memory_order) and max(lengths) <= row.max_seq_len
        assert isinstance(row.prediction_note, float) and math.isnan(row.prediction_note)  # empty: it predicts
        at = dict(zip(lengths, (float(p) for p in row.fit_peak_bytes.split(","))))
        assert at[lengths[0]] == measure_cell(Cell(variant, lengths[0], d_model=16, n_heads=2), QUICK_BUDGET,
                                              metrics=("memory",), passes=("fwd_bwd",))["fwd_bwd_peak_bytes"]
        assert 0.9 * row.max_seq_len <= row.predicted_max_seq_len <= 1.1 * row.first_failing_seq_len
        assert row.predicted_max_seq_len_at_80_gib > row.max_seq_len
    naive, linear = table.loc["attention-naive-causal"], table.loc["linear-attention-causal"]
    assert (naive.memory_order, linear.memory_order) == (2, 1)
    assert naive.max_seq_len < linear.max_seq_len and naive.fit_bytes_per_token_sq > 0 == linear.fit_bytes_per_token_sq

    probes = store.modification_times()
    fit_probes = sum(points_needed(order) for order in table.memory_order)
    assert table.probes.sum() <= len(probes) <= table.probes.sum() + fit_probes  # the searches' and the fits'
    table_again, _ = run_oom(store.root.parent, 2.0, "--quiet")
    assert store.modification_times() == probes  # the rerun took every probe from the folder
    pd.testing.assert_frame_equal(table_again, table)


def test_predictions_from_a_small_budget_agree_with_a_larger_one(searched, tmp_path):
    """The issue's case: at a small budget naive attention's frontier is short, and a line through two points
    predicted 26 times too far at 80 GiB. The fit of the declared order, on points probed below the frontier,
    predicts what the fit at four times the budget does."""
    small, _, _ = searched
    large, _ = run_oom(tmp_path, 8.0, "--quiet")
    assert (small.max_seq_len < large.max_seq_len).all()
    for gib in CARD_BUDGETS_GIB:
        column = f"predicted_max_seq_len_at_{gib:g}_gib"
        assert small[column].to_dict() == pytest.approx(large[column].to_dict(), rel=1e-3)


def test_a_suite_without_an_oom_table_prints_the_defaults_and_a_line_per_probe(tmp_path, capsys):
    path = tmp_path / "plain.toml"
    path.write_text('name = "plain"\nlayers = ["linear-attention-causal"]\n[grid]\nd_model = 8\nn_heads = 2\n')
    defaults = OomSettings()
    lines = settings_lines(load_suite(path))
    assert "every [oom] key at its default" in lines[0]
    assert f"{defaults.cpu_budget_gib:.4g} GiB of tracked tensor bytes on cpu (cpu_budget_gib: default)" in lines[1]
    assert f"{defaults.measurement} (measurement: default)" in lines[2]
    assert (f"doubling from {defaults.start_seq_len}, within {defaults.min_seq_len} ... {defaults.max_seq_len}"
            in lines[3] and f"{defaults.resolution} apart" in lines[3] and lines[3].endswith("resolution: default)"))
    assert f"{points_needed(1)} for memory ~ N, {points_needed(2)} for ~ N^2" in lines[4]
    assert ", ".join(f"{g:g}" for g in defaults.predict_budget_gib) + " GiB (predict_budget_gib: default)" in lines[4]

    out = tmp_path / "out"
    assert main(["oom", str(path), "--out", str(out), "--budget-gib", str(0.5 / 1024)]) == 0
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    assert "other than the defaults (by the suite or the command line): budget_gib (docs" in printed[0]
    assert printed[1] == f"  budget: {0.5 / 1024:.4g} GiB on cpu (budget_gib)" and printed[2:5] == lines[2:5]
    row = pd.read_csv(out / "oom_frontier.csv").iloc[0]
    probe_line = r"  linear-attention-causal B=1 D=8 H=2 float32 cpu \({}\) N = (\d+): (fits, peak [\d.]+ MiB|oom)$"
    searched = re.findall(probe_line.format("search"), captured.err, re.MULTILINE)
    fitted = re.findall(probe_line.format("fit"), captured.err, re.MULTILINE)
    assert len(searched) == row.probes and (str(row.max_seq_len), "oom") not in searched
    assert {int(n) for n, _ in searched + fitted} >= {int(n) for n in row.fit_seq_lens.split(",")}
    assert len(ResultStore(out).modification_times()) == len(searched) + len(fitted)  # a line per probe made
    assert "[1/1] linear-attention-causal" in captured.err


def test_the_report_shows_each_prediction_with_its_points_or_why_not(searched, tmp_path):
    table, store, _ = searched
    assert main(["report", str(store.root), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    section = text[text.index("## Out-of-memory frontier, bisected (oom-test)"):]
    for gib in CARD_BUDGETS_GIB:
        assert f"predicted largest N at {gib:g} GiB (tokens)" in section
    assert "fitted to (N: peak MiB)" in section and "why no prediction" in section
    for variant, row in table.iterrows():
        cells = next(line for line in section.splitlines() if line.startswith(f"| {variant} |")).split(" | ")
        assert [point.split(": ")[0] for point in cells[-2].split(", ")] == row.fit_seq_lens.split(",")
        assert format_number(row.predicted_max_seq_len_at_80_gib) in cells

    # A refused fit keeps its points and says why; a table from before the fit's checks predicts nothing.
    csv = pd.read_csv(store.root / frontier.SEARCH_FILE).astype(object)
    refused = fit_memory([64, 128], [1e6, 2e6], order=1)
    for column, value in refused.columns().items():
        csv.loc[0, column] = value
    csv.to_csv(tmp_path / "refused.csv", index=False)
    first = frontier.frontier_from_search(tmp_path / "refused.csv").iloc[0]
    assert first.prediction_note == refused.note and first.fit_points == "64: 0.954, 128: 1.91"
    assert all(math.isnan(first[column]) for column in ["predicted_max_seq_len", *frontier.CARD_COLUMNS])
    csv.drop(columns=["memory_order", "fit_peak_bytes", "prediction_note"]).to_csv(tmp_path / "old.csv", index=False)
    old = frontier.frontier_from_search(tmp_path / "old.csv")
    assert old["prediction_note"].str.contains("older ttt-bench").all()
    assert old[frontier.CARD_COLUMNS].isna().all().all()


def test_a_sweeps_frontier_fits_its_points_with_the_declared_order():
    lengths = [256 * i for i in range(1, 10)]
    quadratic = [1e5 + 300.0 * n + 24.0 * n * n for n in lengths]
    points = pd.DataFrame({
        "variant": ["naive"] * 9 + ["short"] * 3 + ["mine"] * 9, "measurement": "forward_backward",
        "seq_len": lengths + lengths[:3] + lengths, "status": "ok", "peak_bytes": quadratic + quadratic[:3] + quadratic,
    })
    orders = {"naive": (2, ""), "short": (2, ""), "mine": (None, "not registered here")}
    table = frontier.frontier_from_points(points, orders, 2**30).set_index("variant")
    naive = table.loc["naive"]
    assert naive.predicted_max_seq_len == pytest.approx((-300 + math.sqrt(300**2 + 96 * (2**30 - 1e5))) / 48)
    assert naive.predicted_max_seq_len_at_80_gib == pytest.approx(
        (-300 + math.sqrt(300**2 + 96 * (80 * GiB - 1e5))) / 48)
    assert naive.memory_order == 2 and naive.prediction_note == "" and naive.fit_points.startswith("256: ")
    short, mine = table.loc["short"], table.loc["mine"]
    assert "needs 9" in short.prediction_note and math.isnan(short.predicted_max_seq_len)
    assert mine.prediction_note == "not registered here" and math.isnan(mine.memory_order)
    rows = pd.DataFrame({"variant": ["a", "b"], "layer": ["attention-naive-causal", "no-such-layer"], "d_model": 16,
                         "n_heads": 2, "knobs": "{}"})
    known = frontier.declared_orders(rows, rows["variant"])
    assert known["a"] == (2, "") and known["b"][0] is None and "no-such-layer" in known["b"][1]


DECODE_SUITE = """
    name = "decode-frontier"
    layers = ["attention-sdpa-causal", "linear-attention-causal", "attention-sdpa"]
    [grid]
    batch = [1, 4]
    d_model = 16
    n_heads = 2
    [measure]
    prefill_chunk = 32
    [oom]
    measurement = "decode"
    budget_gib = {budget_gib}
    start_seq_len = 256
    max_seq_len = 2048
    resolution = 128
    [[only]]
    layer = "linear-attention-causal"
    batch = 1
"""


def test_the_decode_frontier_falls_with_the_batch_for_a_kv_cache_only(tmp_path, capsys):
    """Serving a context: attention's KV cache (2 x B x N x D floats, grown a block of 256 tokens at a time) sets its
    frontier, which shrinks as the batch grows; linear attention's fixed state fits at every length searched. A
    layer that cannot decode is left out with a line saying so."""
    path = tmp_path / "decode.toml"
    budget = 2**19  # 512 KiB: a KV cache of B x N x 128 bytes plus a prefill chunk's work
    path.write_text(textwrap.dedent(DECODE_SUITE.format(budget_gib=budget / GiB)))
    assert main(["oom", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "attention-sdpa: left out of the decode frontier: it does not decode" in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "out" / "oom_frontier.csv").set_index(["variant", "batch"])
    assert set(table.index.get_level_values("variant")) == {"attention-sdpa-causal", "linear-attention-causal"}
    assert table.loc[("linear-attention-causal", 1), "status"] == "capped"
    attention = table.loc["attention-sdpa-causal"]
    assert (attention["status"] == "found").all() and (attention["peak_bytes_at_max"] <= budget).all()
    one, four = attention.loc[1, "max_seq_len"], attention.loc[4, "max_seq_len"]
    assert 256 <= four < 512 <= 1024 <= one < 2048
    searched = frontier.frontier_from_search(tmp_path / "out" / "oom_frontier.csv")  # named by batch in a report
    assert set(searched["variant"]) == {f"{name} (batch={batch})" for name, batch in table.index}
