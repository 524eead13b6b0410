"""The public contract, checked for every registered layer by the checks `ttt-bench check` runs on a user's layers
(ttt_bench/layer_check.py; 'build' includes every knob having a doc): a new layer is enrolled by registering it.
Each check is shown to fail on a layer that breaks its clause, and `register` refuses a class `build` could not
make."""

import dataclasses
import re

import contract_breakers
import pytest
import torch

from ttt_bench import layer_check
from ttt_bench.errors import ConfigError, UnknownLayerError
from ttt_bench.layers import build, config, is_causal, names, register, registry
from ttt_bench.layers.base import MixerConfig, SequenceMixer

ALL = names()
# FLOP counts are checked in tests/test_flops.py, at more knob settings than the registered variants.
CONTRACT = [check for check in layer_check.CHECKS if check not in ("flop-counter", "fvcore")]


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made during the test are forgotten after it."""
    monkeypatch.setattr(registry, "_VARIANTS", dict(registry._VARIANTS))


def test_registry_holds_every_family():
    for family in ("attention-naive", "attention-sdpa", "linear-attention", "fast-weights", "delta-rule",
                   "mttt-linear", "mttt-mlp", "ttt-linear", "ttt-mlp", "ttt-kernel"):
        assert family in ALL, f"{family} is not registered"


@pytest.mark.parametrize("check", CONTRACT)
@pytest.mark.parametrize("name", ALL)
def test_contract(name, check):
    try:
        layer_check.CHECKS[check](name)
    except layer_check.CheckSkipped as why:
        pytest.skip(str(why))


@pytest.mark.parametrize("name", ALL)
def test_backward_is_about_two_products_per_forward_product(name):
    cost = layer_check.small(name).cost(2, 64)
    # A fused attention kernel recomputes its scores: 2.5.
    assert 1.5 * cost.forward_macs <= cost.backward_macs <= 2.5 * cost.forward_macs
    if is_causal(name) and name.startswith("attention"):
        assert cost.useful_forward_macs < cost.forward_macs  # the mask drops the pairs s > t


@pytest.mark.parametrize("check", list(layer_check.CHECKS))
def test_each_check_fails_on_a_layer_that_breaks_its_clause(scratch_registry, check):
    broken, named = contract_breakers.CONTRACT_BREAKERS[check]
    register("broken-layer")(broken)
    with pytest.raises(layer_check.ContractViolation, match=re.escape(named)):
        layer_check.CHECKS[check]("broken-layer")


def test_a_sound_layer_passes_every_check(scratch_registry):
    register("sound-layer")(contract_breakers.Sound)
    outcomes = {result.check: result.outcome for result in layer_check.run_checks("sound-layer")}
    assert outcomes == {**dict.fromkeys(layer_check.CHECKS, layer_check.PASSED), "reference": layer_check.SKIPPED}


def test_a_layer_registered_non_causal_must_see_the_future(scratch_registry):
    register("claims-non-causal")(contract_breakers.ClaimsNonCausal)
    with pytest.raises(layer_check.ContractViolation, match="causal=False but its outputs"):
        layer_check.check_causality("claims-non-causal")


def test_a_layer_that_does_not_build_gets_no_other_check(scratch_registry):
    class FailsToBuild(contract_breakers.Sound):
        def __init__(self, config):
            raise RuntimeError("no weights today")

    register("fails-to-build")(FailsToBuild)
    results = list(layer_check.run_checks("fails-to-build"))
    assert (results[0].outcome, results[0].detail) == (layer_check.FAILED, "RuntimeError: no weights today")
    assert {result.outcome for result in results[1:]} == {layer_check.NOT_RUN}
    assert "1 layer, 11 checks: 1 FAILED, 10 not run; failed: fails-to-build build" == layer_check.summary(results)


def test_unknown_layer_lists_the_registered_ones():
    with pytest.raises(UnknownLayerError) as err:
        build("attenshun")
    message = str(err.value)
    assert "attenshun" in message and "ttt-linear" in message and "attention-sdpa" in message


@pytest.mark.parametrize("typo, meant", [("ttt-linaer", "ttt-linear"), ("deltarule", "delta-rule"),
                                         ("attention-spda", "attention-sdpa")])
def test_a_misspelled_layer_gets_a_did_you_mean(typo, meant):
    with pytest.raises(UnknownLayerError) as err:
        build(typo)
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert f"unknown layer {typo!r} (did you mean {meant!r}" in message
    assert message.endswith(", ".join(names()))


def test_a_name_like_none_gets_no_guess():
    assert "did you mean" not in str(registry.unknown_layer("zzzz"))


def test_unknown_knob_lists_the_knobs():
    with pytest.raises(ConfigError) as err:
        build("ttt-linear", mini_bach=8)
    assert "mini_bach" in str(err.value) and "mini_batch" in str(err.value)


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match="d_model=10 is not divisible by n_heads=4"):
        build("attention-sdpa", d_model=10, n_heads=4)


@pytest.mark.parametrize("name", ["attention-sdpa", "ttt-linear", "delta-rule"])
@pytest.mark.parametrize("shape", [(4, 16), (2, 5, 17), (1, 2, 3, 16)])
def test_wrong_input_shape_is_named(name, shape):
    with pytest.raises(ValueError) as err:
        layer_check.small(name)(torch.randn(*shape, dtype=torch.float64))
    assert str(list(shape)) in str(err.value) and "d_model = 16" in str(err.value)


@pytest.mark.parametrize(
    "name,knob,value,allowed",
    [
        ("ttt-linear", "learner", "rnn", "linear"),
        ("ttt-linear", "form", "fast", "dual"),
        ("ttt-linear", "mini_batch", 0, ">= 1"),
        ("ttt-linear", "eta_base", -1.0, "> 0"),
        ("ttt-linear", "inner_steps", 3, "causal=False"),
        ("mttt-linear", "form", "dual", "causal=True"),
        ("ttt-kernel", "ln_residual", True, "ln_residual=False"),
        ("fast-weights", "decay", 1.0, "strictly between 0 and 1"),
        ("fast-weights", "fast_lr", 0.0, "> 0"),
        ("linear-attention", "feature_map", "relu", "elu+1"),
        ("linear-attention-identity", "normalizer", "sum", "elu+1"),
        ("linear-attention", "chunk_size", 0, ">= 1"),
        ("delta-rule", "form", "parallel", "chunked"),
        ("attention-sdpa", "impl", "flash", "naive"),
    ],
)
def test_bad_knob_value_names_field_and_allowed(name, knob, value, allowed):
    with pytest.raises(ConfigError) as err:
        build(name, **{knob: value})
    assert knob in str(err.value) and allowed in str(err.value)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register("ttt-linear")(SequenceMixer)


@dataclasses.dataclass
class PlainConfig:  # what a layer written without MixerConfig had: no d_model, no n_heads
    decay: float = 0.5


class NotDecorated(MixerConfig):
    decay: float = 0.5


class NotAMixer(torch.nn.Module):
    Config = MixerConfig


Sound = contract_breakers.Sound
REFUSED = [
    (NotAMixer, "'NotAMixer' is not a subclass of ttt_bench.layers.base.SequenceMixer"),
    (type("NoMix", (SequenceMixer,), {"cost": Sound.cost}), "NoMix does not define mix"),
    (type("NoCost", (SequenceMixer,), {"mix": Sound.mix}), "NoCost does not define cost"),
    (type("Plain", (Sound,), {"Config": PlainConfig}), "not a subclass of ttt_bench.layers.base.MixerConfig"),
    (type("Undecorated", (Sound,), {"Config": NotDecorated}), "not decorated with @dataclass"),
]


@pytest.mark.parametrize("layer_cls, named", REFUSED, ids=[cls.__name__ for cls, _ in REFUSED])
def test_register_refuses_a_class_build_could_not_make(scratch_registry, layer_cls, named):
    with pytest.raises(ConfigError, match="layer 'mine': ") as err:
        register("mine")(layer_cls)
    assert named in str(err.value)
    assert "mine" not in names()


def test_configs_are_dataclasses_with_plain_values():
    for name in ALL:
        cfg = config(name)
        assert dataclasses.is_dataclass(cfg)
        for value in dataclasses.asdict(cfg).values():
            assert isinstance(value, (int, float, str, bool)), f"{name}: knob value {value!r} is not plain"
