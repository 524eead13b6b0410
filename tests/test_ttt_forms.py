"""TTT fast forms (dual, primal, full-batch) against the autograd reference loops: outputs, final
weights and every gradient, float64 (1e-10) and float32 (1e-4), odd lengths, fresh random inputs."""

import pytest
import torch
from checks import RTOL, assert_forms_agree, assert_rel_close

from ttt_bench.errors import ConfigError
from ttt_bench.layers import build
from ttt_bench.layers.ttt import inner_loop, learners, reference
from ttt_bench.layers.ttt.reconstruction import InputReconstruction, ViewsReconstruction

BH, D_HEAD, D_MODEL = 3, 6, 12


def random_inputs(seed, n, learner, bias, dtype, target_dim=D_HEAD, ln=True):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, scale=1.0: scale * torch.randn(*shape, generator=g, dtype=dtype)
    inputs = {
        "q": rand(BH, n, D_HEAD),
        "k": rand(BH, n, D_HEAD),
        "target": rand(BH, n, target_dim),
        "eta": 0.3 * torch.rand(BH, n, generator=g, dtype=dtype),
    }
    for i, (d_in, d_out) in enumerate(learners.layer_widths(learner, D_HEAD)):
        inputs[f"w{i}"] = rand(BH, d_in, d_out, scale=d_in**-0.5)
        if bias:
            inputs[f"c{i}"] = rand(BH, 1, d_out, scale=0.1)
    if ln:
        inputs["ln_w"] = 1.0 + rand(BH, 1, target_dim, scale=0.1)
        inputs["ln_b"] = rand(BH, 1, target_dim, scale=0.1)
    return inputs


def unpack(learner, kw):
    n_layers = len(learners.layer_widths(learner, D_HEAD))
    params = [(kw.pop(f"w{i}"), kw.pop(f"c{i}", None)) for i in range(n_layers)]
    return params, kw.pop("ln_w", None), kw.pop("ln_b", None)


def causal_form(run, learner, mini_batch, token_index_scale):
    def form(q, k, target, eta, **weights):
        params, ln_w, ln_b = unpack(learner, weights)
        out, final = run(q, k, target, eta, params, ViewsReconstruction(ln_w, ln_b), mini_batch, token_index_scale)
        return out, [p for layer in final for p in layer if p is not None]

    return form


CAUSAL_CASES = [
    # learner, bias, ln_residual, token_index_scale, mini_batch, n
    ("linear", True, True, True, 16, 63),
    ("linear", False, False, False, 16, 63),
    ("linear", True, True, True, 7, 1),
    ("linear", True, True, True, 1, 20),
    ("linear", True, True, True, 64, 63),
    ("mlp", True, True, True, 16, 63),
    ("mlp", False, False, True, 5, 23),
    ("linear", True, True, True, 16, 500),
    ("mlp", True, True, True, 16, 500),
    ("swiglu", True, True, True, 16, 63),
    ("swiglu", False, True, False, 5, 23),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("form", ["dual", "primal"])
@pytest.mark.parametrize("learner,bias,ln,scale,b,n", CAUSAL_CASES)
def test_causal_forms_match_reference(dtype, form, learner, bias, ln, scale, b, n):
    run = inner_loop.causal_dual if form == "dual" else inner_loop.causal_primal
    inputs = random_inputs(seed=n * 31 + b, n=n, learner=learner, bias=bias, dtype=dtype, ln=ln)
    assert_forms_agree(
        causal_form(run, learner, b, scale),
        causal_form(reference.causal_reference, learner, b, scale),
        inputs,
        RTOL[dtype],
    )


def full_batch_form(run, learner, steps, order, input_reconstruction):
    def form(q, k, target, eta, decoder=None, decoder_bias=None, **weights):
        params, ln_w, ln_b = unpack(learner, weights)
        if input_reconstruction:
            head = InputReconstruction(decoder, decoder_bias, ln_w, ln_b)
        else:
            head = ViewsReconstruction(ln_w, ln_b)
        out, final = run(q, k, target, eta, params, head, steps, order)
        return out, [p for layer in final for p in layer if p is not None]

    return form


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "learner,steps,sgd,input_reconstruction,ln,n",
    [
        ("linear", 1, False, True, False, 63),
        ("linear", 3, False, False, True, 63),
        ("mlp", 2, False, True, True, 63),
        ("mlp", 3, True, True, True, 500),
        ("linear", 4, True, False, False, 7),
    ],
)
def test_full_batch_matches_reference(dtype, learner, steps, sgd, input_reconstruction, ln, n):
    target_dim = D_MODEL if input_reconstruction else D_HEAD
    inputs = random_inputs(seed=steps * 7 + n, n=n, learner=learner, bias=True, dtype=dtype,
                           target_dim=target_dim, ln=ln)
    if input_reconstruction:
        g = torch.Generator().manual_seed(n)
        inputs["decoder"] = torch.randn(BH, D_HEAD, D_MODEL, generator=g, dtype=dtype) * D_HEAD**-0.5
        inputs["decoder_bias"] = 0.1 * torch.randn(1, 1, D_MODEL, generator=g, dtype=dtype)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(steps)) if sgd else None
    assert_forms_agree(
        full_batch_form(inner_loop.full_batch, learner, steps, order, input_reconstruction),
        full_batch_form(reference.full_batch_reference, learner, steps, order, input_reconstruction),
        inputs,
        RTOL[dtype],
    )


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n", [2, 63])  # at N = 1 the gradient of q is exactly 0: no relative error
def test_kernel_estimator_matches_reference(causal, n):
    from ttt_bench.layers.attention import softmax_attention_sdpa

    g = torch.Generator().manual_seed(n)
    inputs = {name: 0.5 * torch.randn(2, 3, n, 5, generator=g, dtype=torch.float64) for name in "qkv"}
    assert_forms_agree(
        lambda q, k, v: softmax_attention_sdpa(q, k, v, causal, scale=1.0),
        lambda q, k, v: reference.kernel_estimator_reference(q, k, v, causal),
        inputs,
        RTOL[torch.float64],
    )


# The official layers' outer differences as knobs: the full-width LayerNorm before the output projection and the
# tanh GELU of TTT-MLP.
OFFICIAL = {"ttt-linear": {"post_norm": True}, "ttt-mlp": {"post_norm": True, "gelu_approximate": "tanh"}}


@pytest.mark.parametrize("official", [False, True], ids=["defaults", "official-knobs"])
@pytest.mark.parametrize("name", ["ttt-linear", "ttt-mlp"])
@pytest.mark.parametrize("n", [63, 100])
def test_layer_dual_equals_primal_with_official_semantics(name, n, official):
    """E5: with learned per-token eta, 1/i scaling, LN and residual, dual == primal, outputs and every
    parameter gradient, at a length that is not a multiple of the mini-batch."""
    torch.manual_seed(n)
    knobs = OFFICIAL[name] if official else {}
    dual = build(name, d_model=16, n_heads=2, form="dual", **knobs).double()
    primal = build(name, d_model=16, n_heads=2, form="primal", **knobs).double()
    primal.load_state_dict(dual.state_dict())
    x = torch.randn(2, n, 16, dtype=torch.float64)
    outs = [layer(x) for layer in (dual, primal)]
    assert_rel_close(outs[0], outs[1], RTOL[torch.float64], "output")
    weight = torch.randn_like(outs[0])
    for out in outs:
        (out * weight).sum().backward()
    for (pname, p_dual), p_primal in zip(dual.named_parameters(), primal.parameters()):
        assert p_dual.grad is not None and p_dual.grad.abs().sum() > 0, f"{pname} got no gradient"
        assert_rel_close(p_dual.grad, p_primal.grad, RTOL[torch.float64], f"gradient of {pname}")


@pytest.mark.parametrize(
    ("name", "knobs"),
    [("ttt-linear", {}), ("ttt-mlp", {}), ("mttt-mlp", {}), ("mttt-linear", {}),
     ("ttt-mlp", OFFICIAL["ttt-mlp"]), ("mttt-mlp", {"gelu_approximate": "tanh"})],
)
def test_layer_matches_its_reference_loop(name, knobs):
    """The layer's own wiring (views, rates, W0, heads) through the fast loop and the reference loop."""
    torch.manual_seed(0)
    layer = build(name, d_model=16, n_heads=2, **knobs).double()
    x = torch.randn(2, 37, 16, dtype=torch.float64)
    batch = x.shape[0]
    flat = lambda t: t.flatten(0, 1)
    cfg = layer.config
    if cfg.reconstruction == "input":
        q, k = (layer.split_heads(t) for t in layer.to_qkv(x).chunk(2, dim=-1))
        target = flat(x.unsqueeze(1).expand(batch, cfg.n_heads, *x.shape[1:]))
    else:
        q, k, v = layer.qkv(x)
        target = flat(v) - flat(k) if cfg.ln_residual else flat(v)
    args = (flat(q), flat(k), target, flat(layer.inner_rates(x)), layer.initial_weights(batch), layer.head(batch))
    fast, _ = layer.inner_loop(*args)
    slow, _ = layer.inner_loop(*args, use_reference=True)
    assert_rel_close(fast, slow, RTOL[torch.float64], "inner loop output")
    expected = layer.merge_heads_and_project(fast.unflatten(0, (batch, cfg.n_heads)))
    assert_rel_close(layer(x), expected, RTOL[torch.float64], "layer output")


def test_post_norm_is_a_full_width_layer_norm_before_the_output_projection():
    torch.manual_seed(0)
    layer = build("ttt-linear", d_model=16, n_heads=2, post_norm=True).double()
    with torch.no_grad():
        layer.post_norm.weight.uniform_(0.5, 1.5)
        layer.post_norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 37, 16, dtype=torch.float64)
    q, k, v = layer.qkv(x)
    flat = lambda t: t.flatten(0, 1)
    o, _ = layer.inner_loop(flat(q), flat(k), flat(v) - flat(k), flat(layer.inner_rates(x)),
                            layer.initial_weights(2), layer.head(2))
    merged = o.unflatten(0, (2, 2)).transpose(1, 2).reshape(2, 37, 16)
    normed = torch.nn.functional.layer_norm(merged, (16,), layer.post_norm.weight, layer.post_norm.bias, eps=1e-6)
    assert_rel_close(layer(x), layer.to_out(normed), RTOL[torch.float64], "post-normed output")


def test_tanh_gelu_changes_ttt_mlp_outputs_a_little():
    """The knob reaches the learner: the same weights give outputs that differ, by about the forms' gap."""
    torch.manual_seed(0)
    exact = build("ttt-mlp", d_model=16, n_heads=2).double()
    tanh = build("ttt-mlp", d_model=16, n_heads=2, gelu_approximate="tanh").double()
    tanh.load_state_dict(exact.state_dict())
    x = torch.randn(2, 37, 16, dtype=torch.float64)
    gap = (exact(x) - tanh(x)).abs().max().item()
    assert 1e-9 < gap < 1e-2


@pytest.mark.parametrize("name", ["ttt-linear", "ttt-kernel", "mttt-linear"])
def test_tanh_gelu_is_refused_where_there_is_no_gelu(name):
    with pytest.raises(ConfigError, match="gelu_approximate='tanh' needs learner='mlp'"):
        build(name, d_model=16, n_heads=2, gelu_approximate="tanh")
