"""The outer loop: it learns, it is deterministic on the CPU, it stops early at a target, a NaN ends the
run as 'diverged', and its schedule and settings are what they say."""

import dataclasses
import math

import faulty_layers  # noqa: F401  (registers faulty-nan)
import pytest
import torch

from ttt_bench.errors import ConfigError
from ttt_bench.sweep.cell import position_bins
from ttt_bench.training import tasks
from ttt_bench.training.models import ModelConfig
from ttt_bench.training.train import TrainSettings, train_model


@pytest.fixture(scope="module")
def digits():
    return tasks.load_task("digits", {}, 16)  # 4 x 4 pixels: tiny and fast


def small(layer, **knobs):
    return ModelConfig(layer, knobs, d_model=16, n_heads=2, n_layers=1, mlp_hidden=32)


def test_training_learns_far_above_chance(digits):
    result = train_model(small("linear-attention"), digits, TrainSettings(steps=150, lr=1e-2, warmup_steps=10),
                         batch_size=32, seed=0)
    assert result.status == "ok" and result.steps == 150
    assert result.evaluation.accuracy > 0.5  # chance is 0.1
    assert result.train_loss < math.log(10) - 0.8
    assert result.tokens_per_s > 0 and result.params > 0


def test_same_seed_gives_the_same_numbers_and_another_seed_does_not(digits):
    settings = TrainSettings(steps=12, lr=1e-3, warmup_steps=2)
    first = train_model(small("ttt-linear"), digits, settings, batch_size=16, seed=7)
    again = train_model(small("ttt-linear"), digits, settings, batch_size=16, seed=7)
    other = train_model(small("ttt-linear"), digits, settings, batch_size=16, seed=8)
    assert first.losses == again.losses
    assert first.evaluation.accuracy == again.evaluation.accuracy and first.evaluation.loss == again.evaluation.loss
    assert first.losses != other.losses


def test_early_stopping_at_the_target(digits):
    settings = TrainSettings(steps=100, eval_every=5, target_accuracy=0.11, lr=1e-2, warmup_steps=2)
    result = train_model(small("linear-attention"), digits, settings, batch_size=32, seed=0)
    assert result.steps_to_target is not None and result.steps == result.steps_to_target < 100
    assert result.steps_to_target % 5 == 0 and result.evaluation.accuracy >= 0.11


def test_compiled_training_learns_like_eager_and_keeps_its_compile_out_of_the_step_time(digits):
    settings = TrainSettings(steps=4, lr=1e-2, warmup_steps=1)
    eager = train_model(small("linear-attention"), digits, settings, batch_size=16, seed=0)
    compiled = train_model(small("linear-attention"), digits, dataclasses.replace(settings, compile=True),
                           batch_size=16, seed=0)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)  # the same model, other kernels
    assert eager.compile_s is None and eager.step_time_s == eager.train_time_s / 4
    assert 0 < compiled.compile_s < compiled.train_time_s
    assert compiled.step_time_s == pytest.approx((compiled.train_time_s - compiled.compile_s) / 3)


def test_a_nan_loss_ends_the_run_as_diverged(digits):
    result = train_model(small("faulty-nan"), digits, TrainSettings(steps=20, lr=1e-3), batch_size=8, seed=0)
    assert result.status == "diverged" and result.steps == 1
    assert "the training loss became nan at step 1" in result.message
    assert result.evaluation is None  # no stale accuracy beside a diverged run


def test_loss_by_position_on_a_per_token_task():
    data = tasks.load_task("bytes-lm", {"train_bytes": 20_000, "test_windows": 8}, 32)
    settings = TrainSettings(steps=3, lr=1e-3, warmup_steps=1)
    result = train_model(small("delta-rule"), data, settings, batch_size=4, seed=0)
    losses = result.evaluation.loss_by_position
    assert len(losses) == 32 and all(math.isfinite(loss) for loss in losses)
    assert abs(sum(losses) / 32 - result.evaluation.loss) < 1e-4  # every position scored, equally weighted


def test_schedule_warms_up_then_follows_a_cosine_to_the_floor():
    settings = TrainSettings(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert settings.learning_rate(0) == pytest.approx(0.1) and settings.learning_rate(9) == pytest.approx(1.0)
    assert settings.learning_rate(10) == pytest.approx(1.0)
    assert settings.learning_rate(60) == pytest.approx(0.55)  # halfway down the cosine
    assert settings.learning_rate(110) == pytest.approx(0.1)


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "key 'train.steps': value 0 is not allowed; it must be an integer >= 1"),
    ("lr", 0.0, "key 'train.lr': value 0.0 is not allowed; it must be a number > 0"),
    ("target_accuracy", 1.5, "key 'train.target_accuracy': value 1.5 is not allowed; it must be a number >= 0 and <= "
                             "1"),
    ("warmup_steps", 2.5, "key 'train.warmup_steps': value 2.5 is not allowed"),
])
def test_bad_settings_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainSettings(**{field: value})


def test_a_batch_larger_than_the_training_set_is_refused(digits):
    with pytest.raises(ConfigError, match="batch=5000 is not allowed; the task has 1500 training examples"):
        train_model(small("linear-attention"), digits, TrainSettings(steps=1, lr=1e-3), batch_size=5000, seed=0)


def test_position_bins_double_in_width():
    assert position_bins(10) == [(0, 1), (1, 2), (2, 4), (4, 8), (8, 10)]
    assert position_bins(1) == [(0, 1)]


def test_training_is_deterministic_across_processes(digits, tmp_path):
    """Same seed in a fresh interpreter (the runner's workers) gives the same numbers."""
    import subprocess
    import sys

    script = (
        "import torch; torch.set_num_threads(2)\n"
        "from ttt_bench.training import tasks\nfrom ttt_bench.training.models import ModelConfig\n"
        "from ttt_bench.training.train import TrainSettings, train_model\n"
        "r = train_model(ModelConfig('ttt-mlp', {}, 16, 2, 1, 32), tasks.load_task('digits', {}, 16), "
        "TrainSettings(steps=5, lr=1e-3, warmup_steps=1), batch_size=16, seed=3)\nprint(repr(r.losses))\n"
    )
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and runs[0].startswith("[")
    torch.set_num_threads(2)
    settings = TrainSettings(steps=5, lr=1e-3, warmup_steps=1)
    here = train_model(ModelConfig("ttt-mlp", {}, 16, 2, 1, 32), digits, settings,
                       batch_size=16, seed=3)
    assert repr(here.losses) + "\n" == runs[0]


def test_importing_the_layers_settles_mkl_vector_math_first():
    """The warm-up behind the cross-process determinism above (see ttt_bench/layers/vml_warmup.py)."""
    import subprocess
    import sys

    script = "import ttt_bench.layers, ttt_bench.layers.vml_warmup as w; print(w._resolved)"
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout == "True\n"
