"""The side-by-side benchmark: layer specs, rows and the command's errors (no timing asserted)."""

import pytest

from ttt_bench.errors import ConfigError
from ttt_bench.profile import side_by_side


def test_layer_specs_take_knobs_as_python_literals():
    spec = side_by_side.parse_layer("ttt-mlp:checkpoint_group=4,gelu_approximate='tanh',form=primal")
    assert spec.name == "ttt-mlp"
    assert spec.knobs == {"checkpoint_group": 4, "gelu_approximate": "tanh", "form": "primal"}
    assert side_by_side.parse_layer("ttt-linear") == side_by_side.LayerSpec("ttt-linear", "ttt-linear", {})
    with pytest.raises(ConfigError, match="not key=value"):
        side_by_side.parse_layer("ttt-linear:mini_batch")


def test_rows_per_pass_and_layer_with_ratios_to_the_first():
    specs = [side_by_side.parse_layer(text) for text in ("linear-attention-causal", "ttt-linear:mini_batch=8")]
    rows = side_by_side.side_by_side(specs, seq_len=24, d_model=16, n_heads=2, rounds=2)
    assert [(row["pass"], row["layer"]) for row in rows] == [
        ("train", "linear-attention-causal"), ("train", "ttt-linear:mini_batch=8"),
        ("infer", "linear-attention-causal"), ("infer", "ttt-linear:mini_batch=8"),
    ]
    for row in rows:
        assert 0 < row["time_p20_ms"] <= row["time_ms"] <= row["time_p80_ms"]
        assert row["peak_bytes_per_token"] > 0
    assert rows[0]["ratio_to_first"] == 1.0 and rows[2]["ratio_to_first"] == 1.0
    # Training keeps activations for the backward: more bytes than the inference forward of the same layer.
    assert rows[1]["peak_bytes_per_token"] > rows[3]["peak_bytes_per_token"]
    table = side_by_side.markdown(rows, "linear-attention-causal")
    assert table.count("\n") == len(rows) + 1 and "ratio to linear-attention-causal" in table


@pytest.mark.parametrize("argv", [["nope", "--seq-len", "16"], ["ttt-linear:mini_batch=0", "--seq-len", "16"],
                                  ["ttt-linear:mini_batch", "--seq-len", "16"]])
def test_bad_layers_are_one_error_and_exit_2(argv, capsys):
    assert side_by_side.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_profiled_rows_split_the_time_and_count_the_operators():
    specs = [side_by_side.parse_layer("ttt-linear:mini_batch=4")]
    (row,) = side_by_side.side_by_side(specs, seq_len=16, d_model=16, n_heads=2, rounds=1, passes=("infer",),
                                       memory=False, profile=True)
    # Four mini-batches of a sequential scan: at least a few operators each, and shares of one profiled time.
    assert row["ops_per_call"] >= 4 * 4
    assert 0 < row["matmul_share"] and 0 < row["other_share"] and row["matmul_share"] + row["other_share"] <= 1
    assert row["unprofiled_us_per_op"] > 0
    table = side_by_side.markdown([row], "ttt-linear:mini_batch=4")
    assert "operators per call (count)" in table and table.splitlines()[1].count("|---") == 9
