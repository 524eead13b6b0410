"""`ttt-bench ls`: every registered layer listed with its settings; a user error exits 2 in one line."""

from ttt_bench.cli import main
from ttt_bench.layers import names


def test_ls_lists_every_layer_with_its_settings(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in names():
        assert name in out
    assert "SoftmaxAttention(impl='naive', causal=True)" in out


def test_ls_knobs_shows_defaults_and_docs(capsys):
    assert main(["ls", "ttt-mlp", "--knobs"]) == 0
    out = capsys.readouterr().out
    assert "learner = 'mlp'" in out and "eta_base = 0.1" in out and "mini_batch = 16  # " in out


def test_unknown_layer_exits_2_without_traceback(capsys):
    assert main(["ls", "attenshun"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ttt-bench: error: unknown layer 'attenshun'") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
