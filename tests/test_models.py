"""The backbone: every registered mixer fits in it, its analytic cost matches an operator count, and
parameter matching lands within 10%."""

import dataclasses

import pytest
import torch

from ttt_bench import layers
from ttt_bench.errors import ConfigError
from ttt_bench.profile.flops import count_with_flop_counter
from ttt_bench.training.models import (
    PARAM_MATCH_TOLERANCE,
    InputSpec,
    ModelConfig,
    ModelSettings,
    SequenceModel,
    count_parameters,
    parameter_count,
)

PIXELS = InputSpec("pixels", features=3, seq_len=20, n_outputs=7, per_token=False)
TOKENS = InputSpec("tokens", features=11, seq_len=20, n_outputs=11, per_token=True)
REGISTERED = [name for name in layers.names() if not name.startswith("faulty-")]


def inputs_for(spec, batch=2):
    if spec.kind == "tokens":
        return torch.randint(0, spec.features, (batch, spec.seq_len))
    return torch.randn(batch, spec.seq_len, spec.features)


@pytest.mark.parametrize("layer", REGISTERED)
@pytest.mark.parametrize("spec", [PIXELS, TOKENS], ids=["pooled-pixels", "per-token"])
def test_every_layer_fits_the_backbone_and_trains(layer, spec):
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(layer, {}, d_model=16, n_heads=2, n_layers=2, mlp_hidden=24), spec)
    logits = model(inputs_for(spec))
    expected = [2, spec.seq_len, spec.n_outputs] if spec.per_token else [2, spec.n_outputs]
    assert list(logits.shape) == expected
    logits.square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"


@pytest.mark.parametrize("layer", ["attention-sdpa-causal", "linear-attention", "ttt-linear", "mttt-mlp", "delta-rule"])
@pytest.mark.parametrize("spec", [PIXELS, TOKENS], ids=["pooled-pixels", "per-token"])
def test_analytic_cost_matches_the_operator_count(layer, spec):
    model = SequenceModel(ModelConfig(layer, {}, d_model=16, n_heads=2, n_layers=2, mlp_hidden=24), spec)
    x = inputs_for(spec, batch=3)
    cost = model.cost(batch=3)
    forward = count_with_flop_counter(lambda: model(x))
    assert forward.macs == cost.forward_macs
    both = count_with_flop_counter(lambda: model(x).sum().backward())
    assert both.macs == cost.forward_macs + cost.backward_macs
    assert cost.forward_flops_per_token == 2 * cost.forward_macs / (3 * spec.seq_len)


@pytest.mark.parametrize("pooling", ["last", "class"])
def test_last_and_class_pooling_leave_reading_the_sequence_to_the_mixer(pooling):
    """Without a mixer the head sees only what the last position holds; with one, earlier tokens count."""
    torch.manual_seed(0)
    config = ModelConfig("no-mixer", {}, d_model=16, n_heads=2, n_layers=2, mlp_hidden=24, pooling=pooling)
    model = SequenceModel(config, PIXELS)
    x = inputs_for(PIXELS)
    changed = x.clone()
    changed[:, :-1] = torch.randn_like(changed[:, :-1])
    assert torch.equal(model(x), model(changed))
    mixed = SequenceModel(dataclasses.replace(config, layer="attention-sdpa-causal"), PIXELS)
    assert not torch.allclose(mixed(x), mixed(changed))
    mean = SequenceModel(dataclasses.replace(config, pooling="mean"), PIXELS)
    assert not torch.allclose(mean(x), mean(changed))  # the mean reads every token even without a mixer


def test_class_token_is_mixed_and_counted():
    config = ModelConfig("ttt-linear", {}, d_model=16, n_heads=2, n_layers=2, mlp_hidden=24, pooling="class")
    model = SequenceModel(config, PIXELS)
    plain = SequenceModel(dataclasses.replace(config, pooling="last"), PIXELS)
    assert parameter_count(model) == parameter_count(plain) + 16 + 16  # the token and its position
    x = inputs_for(PIXELS, batch=3)
    cost = model.cost(batch=3)
    assert count_with_flop_counter(lambda: model(x)).macs == cost.forward_macs
    assert count_with_flop_counter(lambda: model(x).sum().backward()).macs == cost.forward_macs + cost.backward_macs
    assert model.state_bytes() == plain.state_bytes()  # TTT's state does not grow with N
    causal_attention = SequenceModel(dataclasses.replace(config, layer="attention-sdpa-causal"), PIXELS)
    # K and V as the KV cache allocates them, a block of 256 tokens at a time (N + 1 = 21 tokens: one block).
    assert causal_attention.state_bytes() == 2 * 2 * 256 * 16 * 4
    per_token = SequenceModel(config, TOKENS)  # a per-token head has no class token whatever the setting
    assert per_token.class_token is None and per_token.pooling == "per token"


def test_positions_start_at_the_stated_scale():
    torch.manual_seed(0)
    config = ModelConfig("no-mixer", {}, d_model=64, n_heads=2, position_init_std=0.02)
    spec = InputSpec("pixels", 1, 400, 10, per_token=False)
    assert SequenceModel(config, spec).positions.std().item() == pytest.approx(0.02, rel=0.05)
    with pytest.raises(ConfigError, match="pooling='max' is not allowed; choose one of mean, last, class"):
        ModelConfig("no-mixer", {}, 16, 2, pooling="max")


def test_parameter_count_without_allocating_matches_the_built_model():
    config = ModelConfig("ttt-mlp", {}, d_model=16, n_heads=2, n_layers=3, mlp_hidden=40)
    assert count_parameters(config, PIXELS) == parameter_count(SequenceModel(config, PIXELS))


@pytest.mark.parametrize("layer", REGISTERED)
def test_matching_brings_every_layer_within_ten_percent_of_the_reference(layer):
    settings = ModelSettings(n_layers=2, mlp_ratio=4, match_params="linear-attention", match_layer="linear-attention")
    spec = InputSpec("pixels", 1, 64, 10, per_token=False)
    reference = count_parameters(settings.model_config("linear-attention", {}, 32, 4, spec), spec)
    config = settings.model_config(layer, {}, 32, 4, spec)
    matched = count_parameters(config, spec)
    assert abs(matched - reference) <= PARAM_MATCH_TOLERANCE * reference
    for neighbour in (config.mlp_hidden - 1, config.mlp_hidden + 1):  # no other width comes closer
        other = ModelConfig(layer, {}, 32, 4, 2, neighbour)
        assert abs(count_parameters(other, spec) - reference) >= abs(matched - reference)


def test_matching_to_a_count_too_small_for_the_layer_is_refused():
    settings = ModelSettings(match_params=1000)
    with pytest.raises(ConfigError, match="cannot match 1,000 parameters with layer 'mttt-mlp'"):
        settings.model_config("mttt-mlp", {}, 32, 4, InputSpec("pixels", 1, 64, 10, per_token=False))


def test_bad_model_sizes_are_refused():
    with pytest.raises(ConfigError, match="n_layers=0 is not allowed"):
        ModelConfig("ttt-linear", {}, 16, 2, n_layers=0)
    with pytest.raises(ConfigError, match="input kind 'audio'"):
        SequenceModel(ModelConfig("ttt-linear", {}, 16, 2), InputSpec("audio", 1, 8, 2, per_token=False))
