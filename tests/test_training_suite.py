"""Training suites: tasks, the backbone and the outer loop in a suite file, checked before anything runs,
and training cells in the runner beside the profiling rows (one results frame, one join)."""

import textwrap

import pandas as pd
import pytest
from checks import write_suite

from ttt_bench.cli import main
from ttt_bench.results import load_results
from ttt_bench.sweep.parse import load_suite, parse_suite
from ttt_bench.sweep.runner import run_suite
from ttt_bench.sweep.schema import SuiteError
from ttt_bench.sweep.shipped import shipped_suites
from ttt_bench.training import tasks

TINY = """
    name = "tiny-training"
    metrics = ["accuracy"]
    imports = ["faulty_layers"]
    layers = ["linear-attention-causal", "mttt-linear", "faulty-nan", "faulty-raises"]
    [grid]
    seq_len = [16]
    batch = 8
    d_model = 16
    n_heads = 2
    [model]
    n_layers = 1
    match_params = "linear-attention-causal"
    [train]
    steps = 3
    warmup_steps = 1
    eval_examples = 16
    eval_every = 2
    [measure]
    threads = 1
    timeout_s = 120
    [[only]]
    layer = ["faulty-*"]
    task = "digits"
    seq_len = 16
    [[exclude]]
    layer = "faulty-*"
    task = ["recall", "bytes-lm"]
    [[tasks]]
    name = "digits"
    [[tasks]]
    name = "mqar"
    label = "recall"
    options = { n_pairs = 2, vocab_size = 16, train_examples = 64, test_examples = 16 }
    [[tasks]]
    name = "bytes-lm"
    options = { train_bytes = 5000, test_windows = 4 }
"""


def parse(text, path="s.toml"):
    import tomllib
    from pathlib import Path

    return parse_suite(tomllib.loads(textwrap.dedent(text)), Path(path))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("training")
    path = write_suite(tmp_path, TINY)
    out = tmp_path / "out"
    summary = run_suite(load_suite(path), out, show_progress=False)
    return path, out, summary, load_results(out)


def test_training_cells_give_rows_with_status_and_units(tiny_run):
    _, _, summary, frame = tiny_run
    train = frame[frame.measurement == "train"].set_index(["task", "variant"])
    assert summary.total == 8 and len(train) == 8
    assert train.loc[("digits", "linear-attention-causal"), "status"] == "ok"
    assert train.loc[("recall", "mttt-linear"), "status"] == "skipped"
    assert "not causal" in train.loc[("recall", "mttt-linear"), "message"]
    assert train.loc[("digits", "mttt-linear"), "status"] == "ok"  # images may look both ways
    assert train.loc[("digits", "faulty-nan"), "status"] == "diverged"
    assert train.loc[("digits", "faulty-raises"), "status"] == "error"
    assert "injected failure in forward" in train.loc[("digits", "faulty-raises"), "message"]
    ok = train[train.status == "ok"]
    for column in ("eval_loss_nats", "train_loss_nats", "params", "flops_per_token", "train_flops",
                   "train_time_s", "tokens_per_s", "steps"):
        assert ok[column].notna().all() and (ok[column] > 0).all(), column
    assert (ok.steps == 3).all() and ok.accuracy.notna().all() and ok.accuracy.between(0, 1).all()
    assert set(ok.task_name) == {"digits", "mqar", "bytes-lm"} and ok.task_description.str.len().gt(0).all()


def test_every_evaluation_is_an_eval_row_and_the_last_is_the_result(tiny_run):
    frame = tiny_run[3]
    evals = frame[frame.measurement == "eval"]
    train = frame[(frame.measurement == "train") & (frame.status == "ok")]
    for _, row in train.iterrows():
        curve = evals[evals.config_hash == row.config_hash].sort_values("step")
        assert curve.step.tolist() == [2, 3]  # every 2 steps, and the end
        assert curve.tokens_seen.tolist() == [2 * 8 * 16, 3 * 8 * 16]  # B x N per step
        assert curve.train_flops.iloc[-1] == pytest.approx(row.train_flops)
        assert curve.accuracy.iloc[-1] == row.accuracy and curve.eval_loss_nats.iloc[-1] == row.eval_loss_nats
        assert curve.train_time_s.is_monotonic_increasing and curve.train_time_s.iloc[-1] == row.train_time_s
        for band in ("chance_accuracy", "floor_accuracy"):
            assert (curve[band] == row[band]).all()
    diverged = frame[(frame.variant == "faulty-nan") & (frame.measurement == "train")].config_hash.iloc[0]
    assert evals[evals.config_hash == diverged].empty  # it diverged at step 1, before any evaluation


def test_train_rows_carry_the_task_bands_the_state_and_the_resolved_lr(tiny_run):
    import json

    from ttt_bench.training.tasks import task_kind

    train = tiny_run[3]
    train = train[(train.measurement == "train") & (train.status == "ok")].set_index(["task", "variant"])
    digits = train.loc[("digits", "linear-attention-causal")]
    assert digits.chance_accuracy == 0.1 and digits.floor_accuracy >= 0.1 and "class" in digits.floor_name
    recall = train.loc[("recall", "linear-attention-causal")]
    assert recall.chance_accuracy == 1 / 8 and recall.chance_accuracy < recall.floor_accuracy < 1
    # Two pairs of 2 x (8 + 1) floats (the 'sum' normaliser's column) per head, fp32, in each of the 1 block.
    assert recall.state_bytes_stated == 2 * (8 * 9) * 4
    assert digits.state_bytes_stated == recall.state_bytes_stated
    assert pd.isna(train.loc[("digits", "mttt-linear"), "state_bytes_stated"])  # not causal: no decode state
    assert (train.step_time_ms > 0).all()
    for (task, _), row in train.iterrows():
        name = "mqar" if task == "recall" else task
        assert json.loads(row.train_settings)["lr"] == task_kind(name).default_lr  # the suite sets none
        assert json.loads(row.model_settings) == {"mlp_ratio": 4.0, "pooling": "mean", "position_init_std": 1.0}


def test_parameters_are_matched_to_the_named_layer(tiny_run):
    frame = tiny_run[3]
    ok = frame[(frame.measurement == "train") & (frame.status == "ok")]
    for _, group in ok.groupby("task"):
        reference = group[group.variant == "linear-attention-causal"].params.iloc[0]
        assert ((group.params - reference).abs() <= 0.1 * reference).all()


def test_per_token_tasks_add_loss_by_position_rows(tiny_run):
    frame = tiny_run[3]
    positions = frame[frame.measurement == "loss_by_position"]
    lm = positions[(positions.task == "bytes-lm") & (positions.variant == "linear-attention-causal")]
    assert lm.position.tolist() == [0, 1, 2, 4, 8] and lm.position_end.tolist() == [1, 2, 4, 8, 16]
    assert lm.eval_loss_nats.notna().all()
    recall = positions[positions.task == "recall"]
    assert recall.position.min() >= 4  # queries come after the 2 pairs: nothing is scored earlier
    assert positions[positions.task == "digits"].empty


def test_rerun_trains_nothing_and_profiling_rows_join_in_one_frame(tiny_run, tmp_path):
    path, out, _, frame = tiny_run
    assert run_suite(load_suite(path), out, show_progress=False).ran == 0
    profile = write_suite(tmp_path, """
        layers = ["linear-attention-causal"]
        [grid]
        seq_len = 16
        d_model = 16
        n_heads = 2
        [measure]
        repeats = 1
        min_time_s = 0.001
        count_flops_max_seq_len = 16
    """)
    run_suite(load_suite(profile), out, show_progress=False)
    both = load_results(out)
    assert {"train", "loss_by_position", "forward", "forward_backward"} <= set(both.measurement)
    joined = both[both.measurement == "train"].merge(
        both[both.measurement == "forward"], on=["layer", "seq_len", "d_model", "n_heads"], suffixes=("", "_profile"))
    assert len(joined) == 3 and joined.flops_profile.gt(0).all()


def test_dry_run_lists_training_cells(tiny_run, capsys):
    path, out, _, _ = tiny_run
    assert main(["run", str(path), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr()
    assert "recall mttt-linear N=16" in printed.out and "8 cells, 0 to run" in printed.err


@pytest.mark.parametrize("change, message", [
    ('metrics = ["accuracy", "time"]', "a suite with 'tasks' trains models: its metrics are \\['accuracy'\\]"),
    ('tasks = ["cifar"]', "key 'tasks\\[0\\].name': value 'cifar' is not allowed; choose one of"),
    ('tasks = [{ name = "mqar", options = { pairs = 2 } }]', "unknown key 'tasks.0..options.pairs'; allowed keys"),
    ('tasks = [{ name = "mqar", options = { n_pairs = 0 } }]',
     "key 'tasks.0.' .task 'mqar'. at grid.seq_len 32: task 'mqar': n_pairs=0 is not allowed"),
    ('tasks = ["mnist"]', "key 'tasks.0.' .task 'mnist'. at grid.seq_len 32: .*N = r x r.*only.* rule"),
    ('train = { steps = -1 }', "key 'train.steps': value -1 is not allowed; it must be an integer >= 1"),
    ('train = { epochs = 3 }', "unknown key 'train.epochs'; allowed keys here: steps"),
    ('model = { match_params = "nonesuch" }', "key 'model.match_params': value 'nonesuch' is not allowed"),
    ('model = { n_layers = 0 }', "key 'model.n_layers': value 0 is not allowed"),
    ('model = { pooling = "max" }', "key 'model.pooling': value 'max' is not allowed; choose one of"),
    ('tasks = [{ name = "digits", train = { lr = -1 } }]', "key 'train.lr': value -1 is not allowed"),
    ('tasks = [{ name = "digits", train = { epochs = 3 } }]', "unknown key 'tasks.0..train.epochs'"),
    ('tasks = [{ name = "digits", model = { match_params = 100 } }]', "unknown key 'tasks.0..model.match_params'"),
    ('tasks = [{ name = "digits", model = { pooling = "max" } }]', "key 'model.pooling': value 'max' is not allowed"),
])
def test_training_suite_mistakes_name_the_key(change, message):
    key = change.split(" = ")[0]
    base = {
        "metrics": 'metrics = ["accuracy"]', "tasks": 'tasks = ["digits"]', "train": "", "model": "",
    }
    base[key] = change
    text = "\n".join(line for line in base.values() if line) + '\nlayers = ["linear-attention-causal"]\n' \
        "[grid]\nseq_len = 32\n"
    with pytest.raises(SuiteError, match=message):
        parse(text)


def test_accuracy_without_tasks_and_training_keys_in_a_profiling_suite_are_refused():
    with pytest.raises(SuiteError, match="key 'tasks' is missing; 'accuracy' trains a model on tasks"):
        parse('metrics = ["accuracy"]\nlayers = ["ttt-linear"]\n[grid]\nseq_len = 16\n')
    with pytest.raises(SuiteError, match="key 'train' applies to training suites only"):
        parse('layers = ["ttt-linear"]\n[grid]\nseq_len = 16\n[train]\nsteps = 3\n')


def test_task_sweeps_and_labels_expand():
    suite = parse("""
        layers = ["ttt-linear"]
        tasks = [{ name = "mqar", label = "recall", sweep = { n_pairs = [2, 4] } }]
        [grid]
        seq_len = [16, 32]
        [[only]]
        task = "recall-n_pairs=4"
        seq_len = 32
    """)
    cells = suite.cells()
    assert [(c.training.task.label, c.cell.seq_len) for c in cells] == [
        ("recall-n_pairs=2", 16), ("recall-n_pairs=2", 32), ("recall-n_pairs=4", 32)]
    assert all(c.cell.batch == 32 and c.metrics == ("accuracy",) for c in cells)  # the training batch default
    assert len({c.config_hash for c in cells}) == 3


def test_a_task_may_set_its_own_training_and_model_settings_over_the_suite():
    suite = parse("""
        layers = ["ttt-linear"]
        [grid]
        seq_len = 16
        [train]
        steps = 10
        warmup_steps = 2
        [model]
        pooling = "last"
        [[tasks]]
        name = "digits"
        [[tasks]]
        name = "mqar"
        options = { n_pairs = 2 }
        train = { steps = 50, lr = 2e-3 }
        model = { position_init_std = 0.02 }
    """)
    digits, mqar = (cell.training for cell in suite.cells())
    digits_lr = tasks.task_kind("digits").default_lr
    assert (digits.train.steps, digits.train.lr, digits.train.warmup_steps) == (10, digits_lr, 2)
    assert (mqar.train.steps, mqar.train.lr, mqar.train.warmup_steps) == (50, 2e-3, 2)
    assert (digits.model.pooling, digits.model.position_init_std) == ("last", 1.0)
    assert (mqar.model.pooling, mqar.model.position_init_std) == ("last", 0.02)


def test_hashes_of_training_cells_from_before_the_recipe_settings_stay_valid():
    """A training results folder written before pooling, position_init_std and compile existed resumes: the shipped
    suites' first cells keep their hashes (taken from the commit before), and a non-default setting changes one."""
    import dataclasses

    first = {name: load_suite(next(p for p in shipped_suites() if p.stem == name)).cells()[0]
             for name in ("regression-accuracy", "accuracy-mnist")}
    assert {name: cell.config_hash for name, cell in first.items()} == {
        "regression-accuracy": "418dfb9c31c5883b", "accuracy-mnist": "aacfad41c677b666"}
    cell = first["regression-accuracy"]
    for changed in (dataclasses.replace(cell.training, model=dataclasses.replace(cell.training.model, pooling="last")),
                    dataclasses.replace(cell.training, train=dataclasses.replace(cell.training.train, compile=True))):
        assert dataclasses.replace(cell, training=changed).config_hash != cell.config_hash


def test_shipped_training_suites_are_valid():
    suites = {path.stem: path for path in shipped_suites()}
    assert {"accuracy-quick", "accuracy-cpu", "accuracy-recipe", "accuracy-mnist"} <= set(suites)
    for name in ("accuracy-quick", "accuracy-cpu"):
        run = [c for c in load_suite(suites[name]).cells() if c.skip_reason is None]
        assert {c.training.task.task for c in run} == {"mnist", "mqar"}
        assert {c.cell.layer for c in run} >= {"no-mixer", "attention-sdpa-causal", "delta-rule", "ttt-linear"}
        assert {c.cell.seed for c in run} == {0, 1, 2}  # intervals need seeds
        for cell in run:  # one recipe for every layer: the head reads the last token
            assert cell.training.model.pooling == "last" and cell.training.train.lr == 3e-3
    cpu = load_suite(suites["accuracy-cpu"]).cells()
    assert {c.training.task.options["n_pairs"] for c in cpu if c.training.task.task == "mqar"} == {2, 4, 8, 16}


def test_cli_lists_tasks_and_refuses_an_oom_search_of_a_training_suite(tmp_path, capsys):
    assert main(["ls", "--knobs"]) == 0
    listed = capsys.readouterr().out
    assert "mqar" in listed and "n_pairs = 8" in listed and "accuracy-quick" in listed and "training cells" in listed
    path = write_suite(tmp_path, 'layers = ["ttt-linear"]\ntasks = ["digits"]\n[grid]\nseq_len = 16\n')
    assert main(["oom", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "this suite trains models" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
