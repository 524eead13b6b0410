"""The delta rule (Schlag et al. 2021):  S_t = S_{t-1} - beta_t (S_{t-1} k_t - v_t) k_t^T,  o_t = S_t q_t,
and the gated delta rule (Yang, Kautz & Hatamizadeh 2025, knob `gate`):
    S_t = a_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,  o_t = S_t q_t,  a_t in (0, 1],
    log a_t = -exp(A_log_h) softplus(w_a x_t + dt_bias_h)  (per head and token, Mamba-2's parametrisation).

S_t: [e, d] per head (written as the paper does; the fast forms hold its transpose W = S^T: [d, e], so that
o = q W with row vectors). The delta rule is one SGD step per token on 1/2 ||S k_t - v_t||^2, which makes it
TTT-Linear with mini-batch 1 (tests/test_ttt_theorems.py); the gate decays S before that step.

Forms: `recurrent` (the reference: a loop over tokens) and `chunked` (the fast form, the WY form of Yang
et al. 2024): the chunk's pseudo-values U solve the unit lower-triangular system
(I + tril_strict(diag(beta) K K^T)) U = diag(beta) (V - K S), then O = Q S + tril(Q K^T) U and
S' = S + K^T U. Shapes: q, k: [B, H, N, d]; v: [B, H, N, e].
Gated, with chunk-local g_t = sum_{s<=t} log a_s, gamma = exp(g), Gamma_ts = exp(g_t - g_s) for s <= t (else 0):
W_t = a_t W_{t-1} + k_t^T u_t with u_t = beta_t (v_t - a_t k_t W_{t-1}); unrolled from the chunk's start W_0,
(I + tril_strict(diag(beta) (Gamma o K K^T))) U = diag(beta) V - diag(beta gamma) K W_0, then
O = diag(gamma) Q W_0 + (Gamma o Q K^T) U and W' = gamma_C W_0 + (diag(exp(g_C - g)) K)^T U.

Where the gated layer differs from the GDN paper and its official layer (flash-linear-attention's GatedDeltaNet): no
short causal convolutions on q, k, v and no SiLU after them; no output gate and no per-head output RMSNorm; q is not
scaled by d^-1/2; value heads are as wide as key heads (no expand_v); to_beta keeps its bias (the delta-rule layer's);
A is drawn from U(1, 16) (Mamba-2's range; the fla layer draws U(0, 16)); the decays are computed in the input's dtype
(their chunk-local sums in at least float32), fla's in float32.

Decoding: the state is W_t = S_t^T: [B, H, d, e], the same size at any context, gated or not.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ttt_bench.config import check_choice, check_integer, knob
from ttt_bench.layers.base import LayerCost, MixerConfig, autograd_backward_macs, projection_macs
from ttt_bench.layers.chunking import chunk_pairs, from_chunks, to_chunks
from ttt_bench.layers.linear import MatrixState, MatrixStateMixer
from ttt_bench.layers.registry import register


def delta_rule_recurrent(q, k, v, beta, initial_state: torch.Tensor | None = None, log_decay=None):
    """Reference: (o [B, H, N, e], final W = S_N^T [B, H, d, e]) from W_0 = initial_state ([B, H, d, e]; None:
    zeros); beta: [B, H, N]; log_decay: [B, H, N], log a_t (None: no decay, a_t = 1)."""
    if initial_state is None:
        state = q.new_zeros(*q.shape[:-2], v.shape[-1], q.shape[-1])  # S: [B, H, e, d]
    else:
        state = initial_state.transpose(-1, -2)
    decays = itertools.repeat(None) if log_decay is None else log_decay.exp().unbind(-1)
    outputs = []
    for q_t, k_t, v_t, beta_t, a_t in zip(q.unbind(-2), k.unbind(-2), v.unbind(-2), beta.unbind(-1), decays):
        if a_t is not None:
            state = a_t[..., None, None] * state  # a_t S_{t-1}, which the delta step then corrects
        error = (state @ k_t[..., :, None]).squeeze(-1) - v_t  # S k_t - v_t: [B, H, e]
        state = state - beta_t[..., None, None] * error[..., :, None] * k_t[..., None, :]
        outputs.append((state @ q_t[..., :, None]).squeeze(-1))
    return torch.stack(outputs, dim=-2), state.transpose(-1, -2)


def chunk_decays(log_decay: torch.Tensor, chunk_size: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """From log_decay: [B, H, N] the gated chunked form's factors, in `dtype`: gamma_t = exp(g_t) [B, H, M, C, 1],
    Gamma_ts = exp(g_t - g_s) for s <= t, else 0 [B, H, M, C, C], exp(g_C - g_t) [B, H, M, C, 1] and gamma_C
    [B, H, M, 1, 1], with g the chunk-local cumulative sum of log a. The padding's log a = 0 (a = 1) leaves g as it
    is. g is summed in at least float32 (a bfloat16 running sum loses the decay of a long chunk)."""
    sum_dtype = torch.promote_types(log_decay.dtype, torch.float32)
    g = to_chunks(log_decay[..., None].to(sum_dtype), chunk_size).cumsum(dim=-2)  # [B, H, M, C, 1]
    gaps = g - g.transpose(-1, -2)  # g_t - g_s
    future = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=g.device).triu(1)
    # -inf before exp, not a mask after it: above the diagonal g_t - g_s > 0 can overflow exp, and the mask's zero
    # gradient times inf is NaN.
    pair_decay = gaps.masked_fill(future, -math.inf).exp()
    chunk_end = g[..., -1:, :]
    return tuple(x.to(dtype) for x in (g.exp(), pair_decay, (chunk_end - g).exp(), chunk_end.exp()))


def delta_rule_chunked(q, k, v, beta, chunk_size: int, initial_state: torch.Tensor | None = None, log_decay=None):
    """Fast form of `delta_rule_recurrent`, same arguments and returns. The triangular solves of all chunks run
    at once (they do not depend on the state); the loop over chunks then takes two small matmuls each. The gate's
    factors are elementwise: folded into the Gram, Q K^T, the keys and the queries, they add no product."""
    n, e = q.shape[-2], v.shape[-1]
    q_c, k_c, v_c = (to_chunks(x, chunk_size) for x in (q, k, v))  # [B, H, M, C, .]
    beta_c = to_chunks(beta[..., None], chunk_size)  # [B, H, M, C, 1]; padding writes with strength 0
    keys_gram = k_c @ k_c.transpose(-1, -2)
    key_scale = beta_c
    if log_decay is not None:
        gamma, pair_decay, decay_to_end, chunk_decay = chunk_decays(log_decay, chunk_size, q.dtype)
        keys_gram = keys_gram * pair_decay
        key_scale = beta_c * gamma  # diag(beta gamma) K: W_0 reaches token t decayed by gamma_t
    system = torch.eye(chunk_size, dtype=q.dtype, device=q.device) + (beta_c * keys_gram).tril(-1)
    rhs = torch.cat([beta_c * v_c, key_scale * k_c], dim=-1)
    # The CPU has no triangular solve in bfloat16 or float16 (a cast layer, or autocast's matmuls, give those):
    # it runs in float32 and its result goes back to the right-hand side's dtype. A no-op in float32 and float64.
    solve_dtype = torch.promote_types(system.dtype, rhs.dtype)
    if solve_dtype in (torch.bfloat16, torch.float16):
        solve_dtype = torch.float32
    solved = torch.linalg.solve_triangular(
        system.to(solve_dtype), rhs.to(solve_dtype), upper=False, unitriangular=True
    ).to(rhs.dtype)
    del rhs  # freed as soon as it is solved, as before it had a name (peak memory)
    pseudo_values, key_weights = solved.split([e, solved.shape[-1] - e], dim=-1)  # U = U_v - W_k S
    # The padding in front (zero keys, beta = 0, a = 1) has zero pseudo-values U and does not decay, so it leaves
    # any W_0 as it was.
    state = q.new_zeros(*q.shape[:-2], q.shape[-1], e) if initial_state is None else initial_state
    starts, updates = [], []
    for m, (u_v, w_k, k_m) in enumerate(zip(pseudo_values.unbind(-3), key_weights.unbind(-3), k_c.unbind(-3))):
        u = u_v - w_k @ state
        starts.append(state)
        updates.append(u)
        if log_decay is None:
            state = state + k_m.transpose(-1, -2) @ u
        else:
            state = chunk_decay[..., m, :, :] * state + (decay_to_end[..., m, :, :] * k_m).transpose(-1, -2) @ u
    if log_decay is None:
        intra = (q_c @ k_c.transpose(-1, -2)).tril()
        reads = q_c
    else:
        intra = (q_c @ k_c.transpose(-1, -2)) * pair_decay  # zero above the diagonal
        reads = gamma * q_c
    out = reads @ torch.stack(starts, dim=-3) + intra @ torch.stack(updates, dim=-3)
    return from_chunks(out, n), state


def delta_rule_step(q, k, v, beta, state: torch.Tensor | None, log_decay=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token, the decoding step: q, k: [B, H, 1, d], v: [B, H, 1, e], beta and log_decay (None: a = 1):
    [B, H, 1], state W: [B, H, d, e] (None: zeros) -> (o = q W' [B, H, 1, e], W' = aW - beta k^T (k aW - v))."""
    if state is None:
        state = q.new_zeros(*q.shape[:-2], q.shape[-1], v.shape[-1])
    elif log_decay is not None:
        state = log_decay.exp()[..., None] * state
    state = state - (beta[..., None] * k).transpose(-1, -2) @ (k @ state - v)
    return q @ state, state


@dataclass
class DeltaRuleConfig(MixerConfig):
    normalize_qk: bool = knob(True, "L2-normalise q and k per head (keeps the step 1 - beta ||k||^2 stable)")
    form: str = knob("chunked", "'chunked' (fast, WY form) or 'recurrent' (token loop, the reference)")
    chunk_size: int = knob(64, "chunked form: tokens per chunk C")
    gate: bool = knob(
        False, "gated delta rule: decay the state by a_t in (0, 1] per head and token before each step "
        "(log a_t = -exp(A_log) softplus(w_a x_t + dt_bias), Yang et al. 2025)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        name = "delta-rule"
        check_choice(name, "normalize_qk", self.normalize_qk, [True, False])
        check_choice(name, "form", self.form, ["chunked", "recurrent"])
        check_integer(name, "chunk_size", self.chunk_size, 1)
        check_choice(name, "gate", self.gate, [True, False])


@register("delta-rule")
@register("gated-delta-rule", gate=True)
class DeltaRule(MatrixStateMixer):
    """Delta rule: S_t = S_{t-1} - beta_t (S_{t-1} k_t - v_t) k_t^T with beta_t = sigmoid(theta_beta x_t); gated
    (`gate`): S_{t-1} is first decayed by a_t = exp(-exp(A_log) softplus(w_a x_t + dt_bias)) per head."""

    Config = DeltaRuleConfig
    reference_knobs = {"form": "recurrent"}

    def __init__(self, config: DeltaRuleConfig) -> None:
        super().__init__(config)
        self.to_beta = nn.Linear(config.d_model, config.n_heads)
        if config.gate:
            heads = config.n_heads
            # No bias of its own: dt_bias is its bias, as in the GDN code, so that A_log and dt_bias are the two
            # per-head parameters Mamba-2 initialises. After to_beta: gate=False draws the same parameters as before.
            self.to_decay = nn.Linear(config.d_model, heads, bias=False)
            # GDN's (and Mamba-2's) initialisation: A ~ U(1, 16); dt log-uniform in [0.001, 0.1] and dt_bias its
            # inverse softplus, so that softplus(dt_bias) = dt where w_a x = 0 (a_t starts in [exp(-1.6), 0.999]).
            self.A_log = nn.Parameter(torch.empty(heads).uniform_(1.0, 16.0).log())
            dt = torch.empty(heads).uniform_(math.log(1e-3), math.log(1e-1)).exp()
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))

    def mix_heads(
        self, x: torch.Tensor, state: MatrixState | None, step: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        q, k, v = self.qkv(x)
        if cfg.normalize_qk:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = torch.sigmoid(self.to_beta(x)).transpose(1, 2)  # [B, H, N]
        log_decay = None
        if cfg.gate:
            time_step = F.softplus(self.to_decay(x) + self.dt_bias)
            log_decay = (-self.A_log.exp() * time_step).transpose(1, 2)  # [B, H, N]
        initial = None if state is None else state.weights
        if step:
            return delta_rule_step(q, k, v, beta, initial, log_decay)
        if cfg.form == "recurrent":
            return delta_rule_recurrent(q, k, v, beta, initial, log_decay)
        return delta_rule_chunked(q, k, v, beta, cfg.chunk_size, initial, log_decay)

    def cost(self, batch: int, seq_len: int) -> LayerCost:
        cfg = self.config
        d = cfg.head_dim
        scale = batch * cfg.n_heads
        per_head = delta_rule_macs(seq_len, d, cfg.form, cfg.chunk_size)
        per_head_projections = 2 if cfg.gate else 1  # to_beta, and the gate's to_decay: D -> H each
        projections = (self.projections_macs(batch, seq_len)
                       + per_head_projections * projection_macs(batch, seq_len, cfg.d_model, cfg.n_heads))
        forward = projections + scale * per_head.executed
        backward = autograd_backward_macs(forward, scale * per_head.final_state) + scale * per_head.backward_extra
        return LayerCost(
            batch * seq_len, forward, projections + scale * per_head.useful, backward, cfg.n_heads * d * d,
            final_state_macs=scale * per_head.final_state,
        )


@dataclass(frozen=True)
class DeltaRuleMacs:
    """Per head and sequence (value width e = d)."""

    executed: int
    useful: int
    final_state: int  # the last chunk's state write K^T U, which no output reads
    backward_extra: int  # backward MACs beyond two per product, for the forward work that reaches the output


def delta_rule_macs(seq_len: int, d: int, form: str, chunk_size: int) -> DeltaRuleMacs:
    """Per token: the state read by the key (W_k S), the write (K^T U) and the read by the query (Q S),
    d^2 each. Chunked, per chunk: the key Gram K K^T (C^2 d), the unit-triangular solve for [U_v, W_k]
    (C(C-1)/2 per column, 2d columns), Q K^T (C^2 d) and its product with U (C^2 d).

    Backward, beyond two products per product: a solve's backward is a solve with the transposed system
    (the forward's size) and the product dA = -dB X^T (C^2 per column), C(C+1)/2 per column more than two
    solves; the first chunk's W_k S (and, with one chunk, Q S) reads the zero initial state, which needs
    no gradient: one product each.

    The gate adds no product here: its decay factors scale the Gram, Q K^T, the keys and the queries elementwise
    (not counted); its projection to_decay (D -> H per token) is counted with the layer's projections."""
    per_token = 3 * d * d
    if form == "recurrent":
        return DeltaRuleMacs(seq_len * per_token, seq_len * per_token, 0, 0)
    c = chunk_size
    chunks = -(-seq_len // c)
    dense_pairs, useful_pairs = chunk_pairs(seq_len, c)  # pairs s <= t, the diagonal included
    strict_pairs = useful_pairs - seq_len  # pairs s < t: the Gram's strict lower part, the solve
    executed = chunks * (c * per_token + 3 * c * c * d + c * (c - 1) // 2 * 2 * d)
    useful = seq_len * per_token + useful_pairs * 2 * d + strict_pairs * 3 * d
    backward_extra = chunks * 2 * d * c * (c + 1) // 2 - c * d * d
    if chunks == 1:
        backward_extra -= c * d * d  # Q S then reads only the zero initial state
    return DeltaRuleMacs(executed, useful, c * d * d, backward_extra)
