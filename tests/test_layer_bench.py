"""suites/layer_bench.py end to end on a tiny grid: files written, every cell present, and a cell that
runs out of its memory budget recorded as 'oom' while the others finish."""

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "suites" / "layer_bench.py"


@pytest.fixture(scope="module")
def layer_bench():
    spec = importlib.util.spec_from_file_location("layer_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_sweep_records_an_oom_cell_and_finishes_the_rest(layer_bench, tmp_path):
    # Naive attention at N=256 holds B*H*N^2*4 bytes = 1 MiB of scores: over a 0.9 MiB budget.
    # Linear attention and TTT-Linear peak near 0.55 MiB there: under it.
    argv = [
        "--layers", "attention-naive-causal,linear-attention-causal,ttt-linear",
        "--seq-lens", "32,256", "--heads", "4", "--head-dim", "8", "--threads", "1",
        "--quick", "--memory-budget-gib", str(0.9 / 1024), "--out", str(tmp_path),
    ]
    assert layer_bench.main(argv) == 0
    frame = pd.read_csv(tmp_path / "layer_bench.csv")
    assert len(frame) == 6 and set(frame.status) <= {"ok", "oom"}
    status = frame.set_index(["layer", "seq_len"]).status
    assert status["attention-naive-causal", 256] == "oom"
    assert status["attention-naive-causal", 32] == "ok"
    assert (frame[frame.layer != "attention-naive-causal"].status == "ok").all()
    ok = frame[frame.status == "ok"]
    assert (ok.fwd_bwd_ms > 0).all() and (ok.fwd_bwd_peak_bytes > 0).all()
    assert (ok.fwd_bwd_p20_ms <= ok.fwd_bwd_ms).all() and (ok.fwd_bwd_ms <= ok.fwd_bwd_p80_ms).all()
    assert (ok.fwd_macs_flop_counter == ok.fwd_macs).all() and (ok.fwd_bwd_macs_flop_counter == ok.fwd_bwd_macs).all()
    assert (ok.fwd_bwd_tokens_per_s == ok.seq_len / (ok.fwd_bwd_ms / 1000)).all()
    assert (ok.uncounted_ops.isna()).all()  # an empty list of uncounted ops reads back as NaN
    assert (frame.git_commit == layer_bench.environment()["git_commit"]).all()
    assert "torch_version" in json.loads((tmp_path / "env.json").read_text())
    oom = frame[frame.status == "oom"].iloc[0]
    assert "budget" in oom.message
    report = (tmp_path / "layer_bench.md").read_text()
    assert "| attention-naive-causal | 256 | oom |" in report and "## Targets" in report


def test_unknown_layer_is_a_usage_error(layer_bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        layer_bench.main(["--layers", "attenshun", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "attenshun" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
