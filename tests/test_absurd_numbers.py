"""Absurd numbers are refused before anything runs: every numeric key has a declared range (finite, integral where
it must be, bounded so that no derived size leaves an int64), and a value outside it is one line, exit 2, nothing
written. A hypothesis test drives extreme values through every numeric key of [grid] and [measure]."""

import math
import threading

import pytest
from checks import write_suite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttt_bench import layers
from ttt_bench.cli import main
from ttt_bench.config import Integer, Number, Optional, declared_fields
from ttt_bench.errors import ConfigError
from ttt_bench.profile.measure import analytic_columns
from ttt_bench.sweep.parse import load_suite
from ttt_bench.sweep.schema import GRID_AXES, MeasureSettings, SuiteError

BASE = """
name = "absurd"
layers = [{LAYERS}]
[grid]
seq_len = {SEQ_LEN}
batch = {BATCH}
d_model = 16
n_heads = 2
[measure]
repeats = 1
min_time_s = 0.01
threads = 1
{MEASURE}
"""


def suite_text(seq_len="32", batch="1", measure="", layers='"linear-attention-causal"') -> str:
    return (BASE.replace("{SEQ_LEN}", seq_len).replace("{BATCH}", batch).replace("{MEASURE}", measure)
            .replace("{LAYERS}", layers))


ISSUE_CASES = {
    "seq_len = 2**70": (suite_text(seq_len=str(2**70)), "key 'grid.seq_len[0]'"),
    "batch = 2**62": (suite_text(batch=str(2**62)), "key 'grid.batch[0]'"),
    "timeout_s = inf": (suite_text(measure="timeout_s = inf"), "key 'measure.timeout_s'"),
    "memory_budget_gib = inf": (suite_text(measure="memory_budget_gib = inf"), "key 'measure.memory_budget_gib'"),
    "threads = 100000": (suite_text().replace("threads = 1", "threads = 100000"), "key 'measure.threads'"),
    "mini_batch = 16.5": (suite_text(layers='{ name = "ttt-linear", knobs = { mini_batch = 16.5 } }'),
                          "mini_batch=16.5 is not allowed; it must be an integer"),
    "eta_base = inf": (suite_text(layers='{ name = "ttt-linear", knobs = { eta_base = inf } }'),
                       "eta_base=inf is not allowed; it must be a number > 0 and finite"),
    # within every axis's bound, but attention's work grows as N**2: its FLOPs would not fit an int64 column
    "attention FLOPs past int64": (suite_text(seq_len=str(2**24), batch=str(2**20), layers='"attention-sdpa-causal"'),
                                   "more than an int64 result column holds"),
    "deep nesting": ('name = "absurd"\na = ' + "[" * 10000 + "]" * 10000 + "\n", "nested too deeply"),
}


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("case", ISSUE_CASES)
def test_each_absurd_number_of_the_issue_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case, dry_run):
    text, message = ISSUE_CASES[case]
    out = tmp_path / "results"
    path = write_suite(tmp_path, text)
    assert main(["run", str(path), "--out", str(out), "--quiet", *(["--dry-run"] if dry_run else [])]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error and "Traceback" not in error
    assert not out.exists()


def test_bounds_are_inclusive_and_the_largest_grid_still_plans(tmp_path):
    """The declared maxima themselves are allowed: the bounds refuse typos, not big runs."""
    text = suite_text(seq_len=str(GRID_AXES["seq_len"].allowed.maximum), measure="timeout_s = 604800.0")
    suite = load_suite(write_suite(tmp_path, text))
    assert [cell.cell.seq_len for cell in suite.cells()] == [2**24]


INT64_MAX = 2**63 - 1


def _numeric(allowed):
    """The Integer or Number a declaration allows (through Optional), or None for a key that is not a number."""
    inner = allowed.inner if isinstance(allowed, Optional) else allowed
    return inner if isinstance(inner, (Integer, Number)) else None


# Every numeric key of [grid] and [measure], read from their declarations: (table, key, what it allows).
NUMERIC_KEYS = [("grid", axis, spec.allowed) for axis, spec in GRID_AXES.items() if _numeric(spec.allowed)] + [
    ("measure", field.name, _numeric(field.metadata["allowed"]))
    for field in declared_fields(MeasureSettings) if _numeric(field.metadata["allowed"])
]


def extremes(allowed: Integer | Number) -> list:
    """Values at and past the edges of a declared range: huge, zero, negative, NaN, inf, fractional, a bool. The
    declared maximum itself is left out: building a layer at d_model = 2**14 takes GiBs (test above for seq_len)."""
    low = allowed.minimum if isinstance(allowed, Integer) else allowed.low
    high = allowed.maximum if isinstance(allowed, Integer) else allowed.high
    return [0, -1, 1, low, low - 1, low + 0.5, float(low), high + 1, 2**62, 2**70, -(2**70), 10**400, 16.5, 1e300,
            -1e300, math.nan, math.inf, -math.inf, True]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return repr(value)


assignments = st.sampled_from(NUMERIC_KEYS).flatmap(
    lambda key: st.tuples(st.just(key), st.sampled_from(extremes(key[2]))))


def test_every_numeric_key_of_grid_and_measure_is_driven():
    """The hypothesis test below reaches every numeric key the schema declares, not a hand-picked list."""
    keys = {(table, key) for table, key, _ in NUMERIC_KEYS}
    assert {("grid", axis) for axis in ("seq_len", "batch", "d_model", "n_heads", "seed")} <= keys
    assert {("measure", name) for name in ("timeout_s", "threads", "memory_budget_gib", "min_time_s")} <= keys


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(assignments, min_size=1, max_size=3, unique_by=lambda a: a[0][:2]))
def test_extreme_values_are_refused_as_config_errors_or_plan(tmp_path, chosen):
    tables = {"grid": {"seq_len": "32", "d_model": "16", "n_heads": "2"}, "measure": {"repeats": "1"}}
    for (table, key, _), value in chosen:
        tables[table][key] = toml_value(value)
    text = 'name = "absurd"\nlayers = ["linear-attention-causal", "attention-sdpa-causal"]\n' + "".join(
        f"[{table}]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items()) for table, keys in tables.items())
    try:
        suite = load_suite(write_suite(tmp_path, text))
    except SuiteError as error:
        assert isinstance(error, ConfigError) and "\n" not in str(error)
        return
    cells = suite.cells()  # planned without an exception
    assert cells
    for planned in cells:  # and what each cell will write and wait for fits: int64 columns, a finite timeout
        cell = planned.cell
        assert 0 < planned.settings.timeout_s <= threading.TIMEOUT_MAX
        assert all(abs(v) <= INT64_MAX for v in (cell.seq_len, cell.batch, cell.d_model, cell.n_heads, cell.seed))
        layer = layers.build(cell.layer, d_model=cell.d_model, n_heads=cell.n_heads, **cell.overrides)
        cost = analytic_columns(layer.cost(cell.batch, cell.seq_len))
        assert all(v <= INT64_MAX for v in cost.values() if isinstance(v, int)), cost
