"""Prefill and decode measured in a cell; the backend (eager, compile) and amp axes; their suite keys."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ttt_bench import layer_check
from ttt_bench.layers import names, registry
from ttt_bench.layers.linear import LinearAttention
from ttt_bench.profile.inference import DecodeSettings
from ttt_bench.profile.measure import Cell, TimingBudget, measure_cell, tidy_rows
from ttt_bench.results import load_results
from ttt_bench.sweep.parse import load_suite, parse_suite
from ttt_bench.sweep.schema import SuiteError

TINY = dict(d_model=16, n_heads=2)
FAST = TimingBudget(min_total_s=0.0, min_repeats=2, slow_call_s=1.0, slow_min_repeats=2, max_repeats=2)
INFERENCE = ("prefill", "decode")
DECODE = DecodeSettings(samples=32, prefill_chunk=16)


def _rows(cell: Cell, passes=INFERENCE, metrics=("memory", "time")):
    row = measure_cell(cell, FAST, passes=passes, metrics=metrics, decode=DECODE)
    return {tidy["measurement"]: tidy for tidy in tidy_rows(row, passes)}


@pytest.mark.parametrize("layer", ["ttt-linear", "attention-sdpa-causal", "delta-rule"])
def test_prefill_and_decode_rows_time_each_token_and_measure_the_state(layer):
    rows = _rows(Cell(layer, 40, batch=3, **TINY))
    for measurement, row in rows.items():
        assert row["status"] == "ok", row["message"]
        assert row["state_bytes"] == row["state_bytes_stated"] > 0, measurement
    decode = rows["decode"]
    assert decode["time_repeats"] == 32  # timed samples, each of tokens_per_sample generated tokens
    assert decode["tokens_per_sample"] >= 1
    assert decode["tokens_per_s"] == pytest.approx(3 / (decode["time_ms"] / 1000))
    assert decode["flops"] is None and decode["tflops_per_s"] is None  # a step's work is not stated
    assert rows["prefill"]["flops"] > 0 and rows["prefill"]["tokens_per_s"] > 0


def test_the_decode_peak_holds_the_state_and_one_prefill_chunk():
    """Tracked bytes are exact: a constant-state layer's serving peak does not grow with the context once the prompt
    spans a chunk, while attention's grows by at least its KV cache."""
    peaks = {}
    for layer in ("ttt-linear", "attention-sdpa-causal"):
        for seq_len in (256, 1024):  # whole blocks of the KV cache
            rows = _rows(Cell(layer, seq_len, **TINY), passes=("decode",), metrics=("memory",))
            peaks[layer, seq_len] = rows["decode"]["peak_bytes"], rows["decode"]["state_bytes"]
    assert peaks["ttt-linear", 256] == peaks["ttt-linear", 1024]
    (small, small_state), (large, large_state) = (peaks["attention-sdpa-causal", n] for n in (256, 1024))
    assert large_state == 4 * small_state and large - small >= large_state - small_state


@pytest.mark.parametrize("layer", ["attention-sdpa", "mttt-linear"])
def test_a_layer_that_cannot_decode_gets_a_skipped_decode_row_and_an_inference_forward(layer):
    rows = _rows(Cell(layer, 32, **TINY))
    assert rows["decode"]["status"] == "skipped"
    assert rows["decode"]["message"] == "no token-by-token decoding: it is not causal"
    assert rows["prefill"]["status"] == "ok" and rows["prefill"]["time_ms"] > 0
    assert rows["prefill"]["state_bytes"] is None


def test_amp_autocasts_float32_weights_and_its_rows_say_so():
    cell = Cell("ttt-linear", 32, dtype="bfloat16", amp=True, **TINY)
    assert cell.weights_dtype == torch.float32
    rows = _rows(cell, passes=("fwd", "prefill", "decode"))
    assert {row["status"] for row in rows.values()} == {"ok"}, [row["message"] for row in rows.values()]
    assert all(row["amp"] is True and row["dtype"] == "bfloat16" for row in rows.values())
    assert rows["decode"]["state_bytes_stated"] == rows["prefill"]["state_bytes_stated"]  # float32 weights' bytes


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_VARIANTS", dict(registry._VARIANTS))


class FailsToCompile(LinearAttention):
    def compile_forms(self, **options):
        raise RuntimeError("InductorError: CppCompileError: C++ compile error\nthe rest of a long log")


class CompilesSomethingElse(LinearAttention):
    def compile_forms(self, **options):
        forms = super().compile_forms(**options)
        return {"forward": lambda x: 1.01 * self(x), "decode": forms["decode"]}


def test_a_layer_that_fails_to_compile_is_an_error_row_with_the_compilers_first_line(scratch_registry):
    registry.register("fails-to-compile", causal=True)(FailsToCompile)
    rows = _rows(Cell("fails-to-compile", 16, backend="compile", **TINY), passes=("fwd", "prefill"))
    assert {row["status"] for row in rows.values()} == {"error"}
    assert rows["forward"]["message"] == "RuntimeError: InductorError: CppCompileError: C++ compile error"


def test_compiled_outputs_that_differ_from_eager_are_not_timed(scratch_registry):
    registry.register("compiles-something-else", causal=True)(CompilesSomethingElse)
    rows = _rows(Cell("compiles-something-else", 16, backend="compile", **TINY), passes=("fwd",))
    assert rows["forward"]["status"] == "error" and rows["forward"]["time_ms"] is None
    assert "the compiled forward differs from eager by 1.00e-02" in rows["forward"]["message"]


def test_a_compiled_cell_records_compile_time_apart_and_checks_against_eager():
    rows = _rows(Cell("linear-attention-causal", 24, backend="compile", **TINY), passes=("fwd", "prefill", "decode"))
    for measurement, row in rows.items():
        assert row["status"] == "ok", row["message"]
        assert row["compile_s"] > 0 and row["compile_error"] <= 1e-4, measurement
        assert row["peak_bytes"] is None  # tracked bytes are an eager measurement
        assert row["time_ms"] < 1000 * row["compile_s"]  # the compiling call was not among the timed ones
        # The eager layer is timed in the same cell, in rounds interleaved with the compiled calls.
        assert row["eager_time_ms"] > 0 and row["compile_speedup"] > 0 and row["compile_speedup_spread"] >= 1
    assert rows["decode"]["state_bytes"] == rows["decode"]["state_bytes_stated"]


def _suite(tmp_path: Path, text: str):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_suite(path)


def test_measurements_choose_the_passes_and_inference_settings_enter_only_decoding_cells(tmp_path):
    suite = _suite(tmp_path, 'layers = ["ttt-linear"]\nmeasurements = ["decode", "forward"]\n[grid]\nseq_len = 64\n'
                             '[measure]\ndecode_samples = 40\nprefill_chunk = 32\n')
    (cell,) = suite.cells()
    assert cell.passes == ("fwd", "decode") and cell.measurements == ("forward", "decode")
    assert {"decode_samples": 40, "prefill_chunk": 32}.items() <= cell.measure_settings.items()
    training_only = _suite(tmp_path, 'layers = ["ttt-linear"]\n[grid]\nseq_len = 64\n').cells()[0]
    assert "decode_samples" not in training_only.measure_settings


def test_hashes_of_cells_from_before_the_backend_and_amp_axes_stay_valid():
    """A results folder written before these axes resumes: the quick suite's first cells keep their hashes (taken
    from the commit before the axes), and only a non-default backend or amp changes a hash."""
    cells = load_suite(Path(__file__).parent.parent / "suites" / "quick.toml").cells()
    assert [cell.config_hash for cell in cells[:2]] == ["6eaffb5d84834874", "47fcba945956cd4e"]
    compiled = dataclasses.replace(cells[0], cell=dataclasses.replace(cells[0].cell, backend="compile"))
    assert compiled.config_hash != cells[0].config_hash


def test_amp_with_a_float32_grid_point_is_skipped_with_the_reason(tmp_path):
    suite = _suite(tmp_path, 'layers = ["ttt-linear"]\n[grid]\nseq_len = 64\ndtype = ["float32", "bfloat16"]\n'
                             'amp = [false, true]\n')
    reasons = {(c.cell.dtype, c.cell.amp): c.skip_reason for c in suite.cells()}
    assert reasons[("bfloat16", True)] is None and reasons[("float32", False)] is None
    assert "with dtype float32 there is nothing to autocast to" in reasons[("float32", True)]


@pytest.mark.parametrize("text, named", [
    ('measurements = ["decoding"]', "key 'measurements[0]': value 'decoding' is not allowed"),
    ('measurements = ["decode", "decode"]', "each measurement may appear once"),
    ('[grid]\nseq_len = 8\nbackend = "jit"', "key 'grid.backend[0]'"),
    ('[grid]\nseq_len = 8\namp = 1', "key 'grid.amp[0]': value 1 is not allowed; use true or false"),
    ('[measure]\ndecode_samples = 8', "decode_samples"),
])
def test_inference_keys_refuse_mistakes_naming_the_key(tmp_path, text, named):
    with pytest.raises(SuiteError, match=named.replace("[", r"\[").replace("]", r"\]")):
        _suite(tmp_path, f'layers = ["ttt-linear"]\n{text}\n' + ("" if "[grid]" in text else "[grid]\nseq_len = 8\n"))


def test_a_training_suite_refuses_the_profiling_axes(tmp_path):
    with pytest.raises(SuiteError, match="a training suite leaves it at"):
        parse_suite({"layers": ["ttt-linear"], "tasks": ["mqar"], "grid": {"seq_len": [64], "backend": "compile"}},
                    tmp_path / "t.toml")


def test_a_run_writes_inference_rows_that_load_as_results(tmp_path, monkeypatch):
    from ttt_bench.sweep.runner import run_suite

    suite = _suite(tmp_path, 'layers = ["linear-attention-causal", "attention-sdpa"]\nmetrics = ["memory", "time"]\n'
                             'measurements = ["prefill", "decode"]\n[grid]\nseq_len = 32\nd_model = 16\nn_heads = 2\n'
                             '[measure]\nrepeats = 2\nmin_time_s = 0.01\nprefill_chunk = 8\n')
    run_suite(suite, tmp_path / "out", show_progress=False)
    frame = load_results(tmp_path / "out")
    assert sorted(zip(frame["variant"], frame["measurement"], frame["status"])) == [
        ("attention-sdpa", "decode", "skipped"), ("attention-sdpa", "prefill", "ok"),
        ("linear-attention-causal", "decode", "ok"), ("linear-attention-causal", "prefill", "ok")]
    assert set(frame["backend"]) == {"eager"} and not frame["amp"].any()
    settings = json.loads(frame["measure_settings"].iloc[0])
    assert settings["prefill_chunk"] == 8 and settings["decode_samples"] == 32


@pytest.mark.parametrize("name", names())
def test_every_layer_runs_under_autocast_to_bfloat16_close_to_float32(name):
    """amp = true: autocast lowers each matmul to bfloat16; the layer must run (the CPU has no bfloat16 triangular
    solve, and TTT's inner LayerNorm gradient mixes dtypes) and stay within bfloat16's precision of float32."""
    layer = layer_check.small(name, torch.float32)
    x = torch.randn(2, 40, layer_check.D_MODEL, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer(x)
        if layer.decodes:
            _, state = layer.prefill(x[:, :20])
            step, _ = layer.step(x[:, 20:21], state)
    assert layer_check.relative_error(low.float(), layer(x)) < 0.05
    if layer.decodes:
        assert layer_check.relative_error(step.float(), layer(x)[:, 20:21]) < 0.05
