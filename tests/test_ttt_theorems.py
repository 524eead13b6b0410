"""The papers' equivalences, each at the exact settings under which it holds (layer level, float64)."""

import math

import pytest
import torch
from checks import RTOL, assert_rel_close

from ttt_bench.layers import build

D_MODEL, HEADS = 16, 2
HEAD_DIM = D_MODEL // HEADS


def run_both(a, b, n, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(2, n, D_MODEL, dtype=torch.float64)
    return a(x), b(x)


@pytest.mark.parametrize("n", [1, 63, 200])
def test_e1_linear_learner_one_step_is_linear_attention(n):
    """Linear learner, W0 = 0, eta = 1, one full-batch GD step, no bias/LN, non-causal == linear
    attention with identity map and the constant normaliser: (1/n) (Q K^T) V, with V = x g^T."""
    ttt = build("mttt-linear", d_model=D_MODEL, n_heads=HEADS, eta_over_head_dim=False).double()
    assert ttt.config.eta_base == 1.0 and not ttt.config.learn_w0 and ttt.config.inner_steps == 1
    attn = build("linear-attention", d_model=D_MODEL, n_heads=HEADS, feature_map="identity",
                 normalizer="count", causal=False).double()
    with torch.no_grad():
        value_rows = ttt.decoder.reshape(D_MODEL, D_MODEL)  # head h's values are x g_h^T
        attn.to_qkv.weight.copy_(torch.cat([ttt.to_qkv.weight, value_rows]))
        attn.to_out.weight.copy_(ttt.to_out.weight)
    out_ttt, out_attn = run_both(ttt, attn, n)
    assert_rel_close(out_ttt, out_attn, RTOL[torch.float64], "MTTT-Linear vs linear attention")


@pytest.mark.parametrize("n", [1, 63, 200])
def test_e2_causal_prefix_gd_is_unnormalised_causal_linear_attention(n):
    """Causal linear learner, one GD step over the whole prefix (a mini-batch as long as the sequence,
    no 1/i scaling), W0 = 0, eta = 1, no LN/residual == sum_{s<=t} v_s k_s^T q_t."""
    ttt = build("ttt-linear", d_model=D_MODEL, n_heads=HEADS, mini_batch=n, token_index_scale=False,
                learn_w0=False, inner_bias=False, ln_residual=False, learn_eta=False, eta_base=1.0,
                eta_over_head_dim=False).double()
    attn = build("linear-attention", d_model=D_MODEL, n_heads=HEADS, feature_map="identity",
                 normalizer="none", causal=True).double()
    assert not ttt.inner_weight0.any(), "W0 must be the fixed zero matrix"
    with torch.no_grad():
        attn.to_qkv.weight.copy_(ttt.to_qkv.weight)
        attn.to_out.weight.copy_(ttt.to_out.weight)
    out_ttt, out_attn = run_both(ttt, attn, n)
    assert_rel_close(out_ttt, out_attn, RTOL[torch.float64], "causal TTT-Linear vs linear attention")


@pytest.mark.parametrize("attention", ["attention-sdpa", "attention-naive"])
@pytest.mark.parametrize("causal", [True, False])
def test_e3_kernel_estimator_is_softmax_attention(attention, causal):
    """Nadaraya-Watson with kappa(k, q) = exp(k^T q) == softmax attention, with the 1/sqrt(d) scale
    folded into theta_Q."""
    kernel = build("ttt-kernel" if causal else "mttt-kernel", d_model=D_MODEL, n_heads=HEADS).double()
    attn = build(attention + ("-causal" if causal else ""), d_model=D_MODEL, n_heads=HEADS).double()
    attn.load_state_dict(kernel.state_dict())
    with torch.no_grad():
        kernel.to_qkv.weight[:D_MODEL] /= math.sqrt(HEAD_DIM)
    out_kernel, out_attn = run_both(kernel, attn, 63)
    assert_rel_close(out_kernel, out_attn, RTOL[torch.float64], "kernel learner vs softmax attention")


@pytest.mark.parametrize("n", [1, 63, 130])
def test_e4_ttt_linear_with_batch_one_is_the_delta_rule(n):
    """TTT-Linear with b = 1, no LN/residual, W0 = 0, the 1/2 squared loss and eta_t = beta_t == the
    delta rule S_t = S_{t-1} - beta_t (S_{t-1} k_t - v_t) k_t^T (keys not normalised on either side)."""
    ttt = build("ttt-linear", d_model=D_MODEL, n_heads=HEADS, mini_batch=1, ln_residual=False,
                inner_bias=False, learn_w0=False, eta_base=1.0, eta_over_head_dim=False).double()
    delta = build("delta-rule", d_model=D_MODEL, n_heads=HEADS, normalize_qk=False).double()
    with torch.no_grad():
        delta.to_qkv.weight.copy_(ttt.to_qkv.weight)
        delta.to_out.weight.copy_(ttt.to_out.weight)
        delta.to_beta.weight.copy_(ttt.to_lr.weight)
        delta.to_beta.bias.copy_(ttt.to_lr.bias)
    out_ttt, out_delta = run_both(ttt, delta, n)
    assert_rel_close(out_ttt, out_delta, RTOL[torch.float64], "TTT-Linear (b=1) vs delta rule")


@pytest.mark.parametrize("learner", ["linear", "mlp"])
def test_e5_dual_equals_primal_with_official_semantics(learner):
    """Dual form == primal form with learned eta, 1/i scaling, LN and residual (more cases, with
    gradients, in test_ttt_forms.py)."""
    dual = build("ttt-" + learner, d_model=D_MODEL, n_heads=HEADS).double()
    primal = build("ttt-" + learner, d_model=D_MODEL, n_heads=HEADS, form="primal").double()
    primal.load_state_dict(dual.state_dict())
    assert dual.config.learn_eta and dual.config.token_index_scale and dual.config.ln_residual
    out_dual, out_primal = run_both(dual, primal, 75)
    assert_rel_close(out_dual, out_primal, RTOL[torch.float64], "dual vs primal")


@pytest.mark.parametrize("form", ["dual", "primal"])
def test_e6_titans_without_momentum_or_forgetting_is_ttt_mlp_without_the_token_scale(form):
    """Titans' update with mu_t = 0 and alpha_t = 0 (their gates' biases at -inf: sigmoid gives exactly 0) is TTT's
    mini-batch GD step without the 1/i scale, through the whole layer."""
    titans = build("titans-mlp", d_model=D_MODEL, n_heads=HEADS, form=form).double()
    ttt = build("ttt-mlp", d_model=D_MODEL, n_heads=HEADS, token_index_scale=False, form=form).double()
    missing = ttt.load_state_dict(titans.state_dict(), strict=False)
    gates = {f"to_{gate}.{p}" for gate in ("momentum", "forget") for p in ("weight", "bias")}
    assert set(missing.unexpected_keys) == gates
    with torch.no_grad():
        for gate in (titans.to_momentum, titans.to_forget):
            gate.weight.zero_()
            gate.bias.fill_(-math.inf)
    out_titans, out_ttt = run_both(titans, ttt, 45)
    assert_rel_close(out_titans, out_ttt, RTOL[torch.float64], "Titans (mu = alpha = 0) vs TTT-MLP without 1/i")


def test_e7_lact_chunks_of_one_without_orthogonalisation_are_ttt_linear_read_one_token_late():
    """LaCT with newton_schulz_steps = 0, no weight norm, b = 1 and a linear learner: its state after every token is
    TTT-Linear's (b = 1, whose token reads its own update), and token t reads the weights before its own update
    (tests/test_ttt_muon.py holds the outputs one token apart). Here through the layers' decode API."""
    lact = build("lact-swiglu", d_model=D_MODEL, n_heads=HEADS, learner="linear", mini_batch=1,
                 newton_schulz_steps=0, weight_norm=False).double()
    ttt = build("ttt-linear", d_model=D_MODEL, n_heads=HEADS, mini_batch=1, inner_bias=False).double()
    ttt.load_state_dict(lact.state_dict())
    torch.manual_seed(3)
    x = torch.randn(2, 30, D_MODEL, dtype=torch.float64)
    lact_state, ttt_state = lact.prefill(x[:, :1])[1], ttt.prefill(x[:, :1])[1]
    for t in range(1, 30):
        assert_rel_close(lact_state.weights[0], ttt_state.weights[0], 1e-12, f"the inner weights after {t} tokens")
        lact_state, ttt_state = lact.step(x[:, t : t + 1], lact_state)[1], ttt.step(x[:, t : t + 1], ttt_state)[1]
