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
