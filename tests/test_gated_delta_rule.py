"""The gated delta rule (ttt_bench/layers/delta_rule.py, knob `gate`): S_t = a_t S_{t-1} (I - beta_t k_t k_t^T)
+ beta_t v_t k_t^T. The chunked form and the decoding step against the token loop (outputs, final state and every
gradient, float64), its theorems (a = 1 is the delta rule, beta = 0 is pure decay, the layer with its decay forced to
1 is the delta-rule layer), the padding's transparency to an initial state, and the analytic cost."""

import pytest
import torch

from ttt_bench.errors import ConfigError
from ttt_bench.layers import build
from ttt_bench.layers.delta_rule import delta_rule_chunked, delta_rule_recurrent, delta_rule_step
from ttt_bench.profile.flops import count_with_flop_counter, count_with_fvcore

B, H, D = 2, 3, 5  # batch, heads, head width (d = e)
TIGHT = dict(rtol=1e-10, atol=1e-10)


def inputs(n, seed=0, beta_zero=False):
    """float64 q, k (unit rows), v, beta in (0, 1), log a in [-0.6, -0.01] and an initial state W_0, all leaves."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=gen, dtype=torch.float64) for _ in range(3))
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    beta = torch.zeros(B, H, n, dtype=torch.float64) if beta_zero else torch.rand(
        B, H, n, generator=gen, dtype=torch.float64)
    log_decay = -(0.01 + 0.59 * torch.rand(B, H, n, generator=gen, dtype=torch.float64))
    initial = torch.randn(B, H, D, D, generator=gen, dtype=torch.float64)
    tensors = dict(q=q, k=k, v=v, beta=beta, log_decay=log_decay, initial_state=initial)
    return {name: t.requires_grad_() for name, t in tensors.items()}


def detached(args):
    return {name: t.detach() for name, t in args.items()}


def outputs_and_gradients(form, args, with_initial):
    """(o, final state, gradients of a random projection of both w.r.t. every input)."""
    if not with_initial:
        args = {**args, "initial_state": None}
    out, state = form(**args)
    gen = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum() + (
        state * torch.randn(state.shape, generator=gen, dtype=state.dtype)).sum()
    leaves = {name: t for name, t in args.items() if t is not None}
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out, state, dict(zip(leaves, grads))


@pytest.mark.parametrize("n", [1, 37, 100])
@pytest.mark.parametrize("chunk", [7, 16])
@pytest.mark.parametrize("with_initial", [False, True])
def test_chunked_matches_recurrent_on_outputs_state_and_every_gradient(n, chunk, with_initial):
    args = inputs(n, seed=n + chunk)
    ref_out, ref_state, ref_grads = outputs_and_gradients(delta_rule_recurrent, args, with_initial)
    out, state, grads = outputs_and_gradients(
        lambda **a: delta_rule_chunked(chunk_size=chunk, **a), args, with_initial)
    torch.testing.assert_close(out, ref_out, **TIGHT)
    torch.testing.assert_close(state, ref_state, **TIGHT)
    assert set(grads) == {"q", "k", "v", "beta", "log_decay"} | ({"initial_state"} if with_initial else set())
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        decays_nothing = name == "log_decay" and n == 1 and not with_initial  # a_1 scales the zero state W_0
        assert decays_nothing or grad.abs().max() > 0, f"{name}: zero gradient, nothing checked"
        torch.testing.assert_close(grad, ref_grads[name], **TIGHT, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("n", [1, 37])
def test_decoding_steps_match_the_recurrent_form(n):
    args = detached(inputs(n, seed=3))
    ref_out, ref_state = delta_rule_recurrent(**args)
    state, outs = args["initial_state"], []
    for t in range(n):
        token = {name: args[name][..., t : t + 1, :] for name in ("q", "k", "v")}
        o, state = delta_rule_step(
            **token, beta=args["beta"][..., t : t + 1], state=state, log_decay=args["log_decay"][..., t : t + 1])
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, dim=-2), ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, ref_state, rtol=1e-12, atol=1e-12)


def test_padding_leaves_a_nonzero_initial_state_unchanged():
    # N = 5 in a chunk of 16: 11 padded tokens in front. The real tokens neither write (beta = 0) nor decay
    # (log a = 0), so the final state must be W_0 to the bit: the padding must neither decay nor write it.
    args = detached(inputs(5, seed=4, beta_zero=True))
    args["log_decay"] = torch.zeros_like(args["log_decay"])
    out, state = delta_rule_chunked(chunk_size=16, **args)
    assert torch.equal(state, args["initial_state"])
    torch.testing.assert_close(out, args["q"] @ args["initial_state"], rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("form", ["chunked", "recurrent"])
@pytest.mark.parametrize("split", [1, 17, 20])
def test_prefill_continuing_from_a_state_equals_one_pass(form, split):
    # The second piece (37 - split tokens) is padded in front of its first chunk, and starts from a nonzero state.
    torch.manual_seed(0)
    layer = build("gated-delta-rule", d_model=12, n_heads=3, form=form, chunk_size=16).double()
    x = torch.randn(2, 37, 12, dtype=torch.float64)
    whole = layer(x)
    first, state = layer.prefill(x[:, :split])
    assert state.weights.abs().max() > 0
    second, state = layer.prefill(x[:, split:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-12, atol=1e-12)
    assert state.weights.shape == (2, 3, 4, 4) and state.tokens == 37


@pytest.mark.parametrize("n", [1, 37])
def test_theorem_unit_decay_is_the_delta_rule_exactly(n):
    """a_t = 1 (log a = 0) turns the gated rule into the delta rule: both forms, to the bit."""
    args = detached(inputs(n, seed=5))
    del args["log_decay"]
    unit = torch.zeros(B, H, n, dtype=torch.float64)
    for form in (delta_rule_recurrent, lambda **a: delta_rule_chunked(chunk_size=16, **a)):
        ungated_out, ungated_state = form(**args)
        gated_out, gated_state = form(**args, log_decay=unit)
        assert torch.equal(gated_out, ungated_out) and torch.equal(gated_state, ungated_state)


@pytest.mark.parametrize("n", [1, 37])
def test_theorem_zero_write_strength_is_pure_decay(n):
    """beta = 0: W_t = (prod_{s<=t} a_s) W_0 and o_t = (prod_{s<=t} a_s) q_t W_0."""
    args = detached(inputs(n, seed=6, beta_zero=True))
    kept = args["log_decay"].cumsum(-1).exp()  # prod_{s<=t} a_s: [B, H, N]
    expected_out = kept[..., None] * (args["q"] @ args["initial_state"])
    expected_state = kept[..., -1, None, None] * args["initial_state"]
    for form in (delta_rule_recurrent, lambda **a: delta_rule_chunked(chunk_size=16, **a)):
        out, state = form(**args)
        torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state, expected_state, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", ["chunked", "recurrent"])
def test_theorem_the_layer_with_its_decay_forced_to_one_is_the_delta_rule_layer(form):
    # exp(A_log) = 0 makes log a_t = -0 * softplus(.) = 0, whatever to_decay and dt_bias produce.
    torch.manual_seed(0)
    plain = build("delta-rule", d_model=12, n_heads=3, form=form, chunk_size=16).double()
    torch.manual_seed(0)
    gated = build("gated-delta-rule", d_model=12, n_heads=3, form=form, chunk_size=16).double()
    shared, gate_only = plain.state_dict(), gated.state_dict()
    # The gate's parameters are drawn after the delta rule's, so the same seed gives the same shared ones.
    assert set(gate_only) - set(shared) == {"to_decay.weight", "A_log", "dt_bias"}
    assert all(torch.equal(shared[name], gate_only[name]) for name in shared)
    x = torch.randn(2, 37, 12, dtype=torch.float64)
    assert not torch.allclose(gated(x), plain(x), rtol=1e-6, atol=1e-6)  # the gate does act when it is on
    with torch.no_grad():
        gated.A_log.fill_(-float("inf"))
    assert torch.equal(gated(x), plain(x))
    _, plain_state = plain.prefill(x[:, :36])
    _, gated_state = gated.prefill(x[:, :36])
    torch.testing.assert_close(gated.step(x[:, 36:], gated_state)[0], plain.step(x[:, 36:], plain_state)[0],
                               rtol=0, atol=0)


def test_initialisation_is_the_gdn_one_and_seeded():
    torch.manual_seed(0)
    layer = build("gated-delta-rule", d_model=64, n_heads=16)
    a = layer.A_log.exp()
    dt = torch.nn.functional.softplus(layer.dt_bias)  # dt_bias is the inverse softplus of dt
    assert ((a >= 1) & (a <= 16)).all() and ((dt >= 1e-3 - 1e-9) & (dt <= 0.1 + 1e-9)).all()
    assert layer.to_decay.bias is None and layer.to_decay.weight.shape == (16, 64)
    torch.manual_seed(0)
    again = build("gated-delta-rule", d_model=64, n_heads=16)
    assert all(torch.equal(p, again.state_dict()[name]) for name, p in layer.state_dict().items())


def test_gated_delta_rule_cost_by_hand():
    # As tests/test_layer_cost.py's delta-rule case (B=1, H=1, D=d=e=4, N=8, C=4), plus the decay projection
    # to_decay: D -> H per token, 8 * 4 * 1 = 32 MACs. Projections: q, k, v, out 8 * 4 * 16 = 512, to_beta 32,
    # to_decay 32: 576. Every decay factor is elementwise (not counted) and folded into an operand of a product
    # the delta rule already runs, so the per-chunk work is unchanged: 432 per chunk, 864 executed, 688 useful.
    cost = build("gated-delta-rule", d_model=4, n_heads=1, chunk_size=4).cost(batch=1, seq_len=8)
    assert cost.forward_macs == 576 + 864
    assert cost.useful_forward_macs == 576 + 688
    # Backward: two products per product, none for the last chunk's write (K o exp(g_C - g))^T U (64, final state
    # only); each chunk's solve backward adds 80 (10 per column, 8 columns); the first chunk's W_k W_0 reads the
    # zero initial state: one product (-64).
    assert cost.final_state_macs == 64
    assert cost.backward_macs == 2 * (576 + 864 - 64) + 2 * 80 - 64
    recurrent = build("gated-delta-rule", d_model=4, n_heads=1, form="recurrent").cost(batch=1, seq_len=8)
    assert recurrent.forward_macs == recurrent.useful_forward_macs == 576 + 8 * 3 * 16
    assert cost.state_numel == 16
    ungated = build("delta-rule", d_model=4, n_heads=1, chunk_size=4).cost(batch=1, seq_len=8)
    assert cost.forward_macs - ungated.forward_macs == 32 and cost.state_numel == ungated.state_numel


@pytest.mark.parametrize("seq_len", [5, 37])
def test_counters_agree_with_the_cost_at_a_chunk_that_does_not_divide_n(seq_len):
    torch.manual_seed(0)
    layer = build("gated-delta-rule", d_model=8, n_heads=2, chunk_size=7)
    x = torch.randn(2, seq_len, 8, requires_grad=True)
    cost = layer.cost(2, seq_len)
    forward = count_with_flop_counter(lambda: layer(x))
    forward_backward = count_with_flop_counter(lambda: layer(x).sum().backward())
    fvcore = count_with_fvcore(layer, x)
    for count in (forward, forward_backward, fvcore):
        assert count.uncounted_ops == {}
    assert forward.macs == cost.forward_macs
    assert forward_backward.macs == cost.forward_backward_macs
    assert fvcore.macs == cost.forward_macs - cost.final_state_macs


@pytest.mark.parametrize("value", ["yes", None, "True"])
def test_a_bad_gate_value_names_the_knob_and_what_is_allowed(value):
    with pytest.raises(ConfigError, match=r"gate=.* is not allowed; choose one of \[True, False\]"):
        build("delta-rule", gate=value)
