"""The public contract, checked for every registered layer: a new layer is enrolled by registering it."""

import dataclasses

import pytest
import torch

from ttt_bench.errors import ConfigError, UnknownLayerError
from ttt_bench.layers import build, config, knobs, names, register
from ttt_bench.layers.base import LayerCost, SequenceMixer

D_MODEL, HEADS = 16, 2
ALL = names()


def small(name, **overrides):
    torch.manual_seed(0)
    return build(name, d_model=D_MODEL, n_heads=HEADS, **overrides).double()


def is_causal(name):
    return getattr(config(name), "causal", True)


def test_registry_holds_every_family():
    for family in ("attention-naive", "attention-sdpa", "linear-attention", "fast-weights", "delta-rule",
                   "mttt-linear", "mttt-mlp", "ttt-linear", "ttt-mlp", "ttt-kernel"):
        assert family in ALL, f"{family} is not registered"


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n", [1, 37])
def test_shape_and_dtype(name, n):
    x = torch.randn(3, n, D_MODEL, dtype=torch.float64)
    y = small(name)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL)
def test_gradient_reaches_input_and_every_parameter(name):
    layer = small(name)
    x = torch.randn(2, 21, D_MODEL, dtype=torch.float64, requires_grad=True)
    (layer(x) * torch.randn(2, 21, D_MODEL, dtype=torch.float64)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{pname} got no finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize("name", ALL)
def test_deterministic(name):
    x = torch.randn(2, 19, D_MODEL, dtype=torch.float64)
    layer = small(name)
    torch.manual_seed(5)
    first = layer(x)
    torch.manual_seed(5)
    assert torch.equal(first, layer(x))
    twin = small(name)
    twin.load_state_dict(layer.state_dict())
    torch.manual_seed(5)
    assert torch.equal(first, twin(x))


@pytest.mark.parametrize("name", ALL)
def test_causality(name):
    """Causal layers: output at t does not depend on inputs after t. Non-causal ones must depend."""
    layer = small(name)
    n, t = 40, 17
    x = torch.randn(2, n, D_MODEL, dtype=torch.float64)
    changed = x.clone()
    changed[:, t + 1 :] += torch.randn(2, n - t - 1, D_MODEL, dtype=torch.float64)
    before, after = layer(x)[:, : t + 1], layer(changed)[:, : t + 1]
    if is_causal(name):
        torch.testing.assert_close(after, before, rtol=0, atol=1e-12)
    else:
        assert (after - before).abs().max() > 1e-6, f"{name} is registered non-causal but ignores the future"


@pytest.mark.parametrize("name", ALL)
def test_cost_is_stated(name):
    layer = small(name)
    cost = layer.cost(batch=2, seq_len=64)
    assert isinstance(cost, LayerCost)
    assert cost.forward_macs > 0 and 0 < cost.useful_forward_macs <= cost.forward_macs
    assert cost.forward_flops == 2 * cost.forward_macs
    assert 0 <= cost.final_state_macs < cost.forward_macs
    # Backward runs about two products per forward product (a fused attention kernel 2.5).
    assert 1.5 * cost.forward_macs <= cost.backward_macs <= 2.5 * cost.forward_macs
    assert cost.forward_backward_flops == 2 * (cost.forward_macs + cost.backward_macs)
    assert cost.forward_macs_per_token == cost.forward_macs / (2 * 64)
    if is_causal(name) and name.startswith("attention"):
        assert cost.useful_forward_macs < cost.forward_macs
    assert cost.state_numel is None or cost.state_numel > 0
    doubled = layer.cost(batch=4, seq_len=64)
    assert (doubled.forward_macs, doubled.backward_macs) == (2 * cost.forward_macs, 2 * cost.backward_macs)


@pytest.mark.parametrize("name", ALL)
def test_every_knob_is_documented(name):
    for k in knobs(name):
        assert k.doc, f"{name}: knob {k.name} has no doc"


def test_unknown_layer_lists_the_registered_ones():
    with pytest.raises(UnknownLayerError) as err:
        build("attenshun")
    message = str(err.value)
    assert "attenshun" in message and "ttt-linear" in message and "attention-sdpa" in message


def test_unknown_knob_lists_the_knobs():
    with pytest.raises(ConfigError) as err:
        build("ttt-linear", mini_bach=8)
    assert "mini_bach" in str(err.value) and "mini_batch" in str(err.value)


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match="d_model=10 is not divisible by n_heads=4"):
        build("attention-sdpa", d_model=10, n_heads=4)


@pytest.mark.parametrize("name", ["attention-sdpa", "ttt-linear", "delta-rule"])
@pytest.mark.parametrize("shape", [(4, D_MODEL), (2, 5, D_MODEL + 1), (1, 2, 3, D_MODEL)])
def test_wrong_input_shape_is_named(name, shape):
    with pytest.raises(ValueError) as err:
        small(name)(torch.randn(*shape, dtype=torch.float64))
    assert str(list(shape)) in str(err.value) and f"d_model = {D_MODEL}" in str(err.value)


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


def test_configs_are_dataclasses_with_plain_values():
    for name in ALL:
        cfg = config(name)
        assert dataclasses.is_dataclass(cfg)
        for value in dataclasses.asdict(cfg).values():
            assert isinstance(value, (int, float, str, bool)), f"{name}: knob value {value!r} is not plain"
