"""The out-of-memory frontier: the search on a known memory curve, the memory polynomial, and `ttt-bench oom`
end to end on the CPU's tracked-bytes budget, checked against direct measurements."""

import math
import textwrap

import pandas as pd
import pytest

from ttt_bench.cli import main
from ttt_bench.profile.measure import QUICK_BUDGET, Cell, measure_cell
from ttt_bench.profile.memory_fit import fit_memory
from ttt_bench.results import ResultStore
from ttt_bench.sweep.oom import Probe, search_frontier
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


def test_memory_fit_predicts_lines_and_parabolas_and_ignores_small_n_overheads():
    lengths = [512, 1024, 2048, 4096]
    line = fit_memory(lengths, [4e4 + 4776.0 * n for n in lengths])
    assert line.coefficients[2] == 0 and line.max_seq_len(2**30) == pytest.approx((2**30 - 4e4) / 4776)
    parabola = fit_memory(lengths, [1e5 + 64.0 * n + 16.0 * n * n for n in lengths])
    assert parabola.max_seq_len(2**30) == pytest.approx((-64 + math.sqrt(64**2 + 64 * (2**30 - 1e5))) / 32)
    # Linear memory with a fixed overhead that fades at small N (as measured for chunked layers):
    lengths = [128, 256, 512]
    overhead = fit_memory(lengths, [621064, 1225736, 2445312])
    assert overhead.coefficients[2] == 0 and overhead.max_seq_len(2**26) == pytest.approx(2**26 / 4776, rel=0.01)
    assert fit_memory([1024, 1024], [1.0, 1.0]) is None


def test_oom_command_finds_frontiers_that_direct_measurements_confirm(tmp_path, capsys):
    budget_gib = 2.0 / 1024  # 2 MiB of tracked bytes
    path = tmp_path / "oom.toml"
    path.write_text(textwrap.dedent(f"""
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
        fit_seq_lens = [64, 128, 256]
        predict_budget_gib = [80]
    """))
    out = tmp_path / "out"
    assert main(["oom", str(path), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "linear-attention-causal" in printed and "oom_frontier.csv" in printed
    table = pd.read_csv(out / "oom_frontier.csv").set_index("variant")
    budget = int(budget_gib * 2**30)
    for variant, row in table.iterrows():
        assert row.status == "found" and row.budget_bytes == budget
        assert row.first_failing_seq_len - row.max_seq_len <= 32
        fits = measure_cell(Cell(variant, int(row.max_seq_len), d_model=16, n_heads=2), QUICK_BUDGET,
                            memory_budget_bytes=budget, metrics=("memory",), passes=("fwd_bwd",))
        fails = measure_cell(Cell(variant, int(row.first_failing_seq_len), d_model=16, n_heads=2), QUICK_BUDGET,
                             memory_budget_bytes=budget, metrics=("memory",), passes=("fwd_bwd",))
        assert fits["status"] == "ok" and fits["fwd_bwd_peak_bytes"] == row.peak_bytes_at_max
        assert fails["status"] == "oom"
        # The fit from N <= 256 predicts the measured bracket, up to five times further out, within 10%
        # (at this tiny width fixed overheads weigh more than at D = 256).
        assert 0.9 * row.max_seq_len <= row.predicted_max_seq_len <= 1.1 * row.first_failing_seq_len
        assert row.predicted_max_seq_len_at_80_gib > row.max_seq_len
    naive, linear = table.loc["attention-naive-causal"], table.loc["linear-attention-causal"]
    assert naive.max_seq_len < linear.max_seq_len and naive.fit_bytes_per_token_sq > 0 == linear.fit_bytes_per_token_sq

    store = ResultStore(out)
    probes = store.modification_times()
    assert table.probes.sum() <= len(probes) <= table.probes.sum() + 2 * 3  # the searches' and the fits' probes
    assert main(["oom", str(path), "--out", str(out), "--quiet"]) == 0
    assert store.modification_times() == probes  # the rerun took every probe from the folder
    pd.testing.assert_frame_equal(pd.read_csv(out / "oom_frontier.csv").set_index("variant"), table)
