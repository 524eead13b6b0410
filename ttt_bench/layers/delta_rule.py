"""The delta rule (Schlag et al. 2021):  S_t = S_{t-1} - beta_t (S_{t-1} k_t - v_t) k_t^T,  o_t = S_t q_t.

S_t: [e, d] per head (written as the paper does; the fast forms hold its transpose W = S^T: [d, e], so that
o = q W with row vectors). The delta rule is one SGD step per token on 1/2 ||S k_t - v_t||^2, which makes it
TTT-Linear with mini-batch 1 (tests/test_ttt_theorems.py).

Forms: `recurrent` (the reference: a loop over tokens) and `chunked` (the fast form, the WY form of Yang
et al. 2024): the chunk's pseudo-values U solve the unit lower-triangular system
(I + tril_strict(diag(beta) K K^T)) U = diag(beta) (V - K S), then O = Q S + tril(Q K^T) U and
S' = S + K^T U. Shapes: q, k: [B, H, N, d]; v: [B, H, N, e].

Decoding: the state is W_t = S_t^T: [B, H, d, e], the same size at any context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ttt_bench.config import check_choice, check_integer, knob
from ttt_bench.layers.base import LayerCost, MixerConfig, autograd_backward_macs, projection_macs
from ttt_bench.layers.chunking import chunk_pairs, from_chunks, to_chunks
from ttt_bench.layers.linear import MatrixState, MatrixStateMixer
from ttt_bench.layers.registry import register


def delta_rule_recurrent(q, k, v, beta, initial_state: torch.Tensor | None = None):
    """Reference: (o [B, H, N, e], final W = S_N^T [B, H, d, e]) from W_0 = initial_state ([B, H, d, e]; None:
    zeros); beta: [B, H, N]."""
    if initial_state is None:
        state = q.new_zeros(*q.shape[:-2], v.shape[-1], q.shape[-1])  # S: [B, H, e, d]
    else:
        state = initial_state.transpose(-1, -2)
    outputs = []
    for q_t, k_t, v_t, beta_t in zip(q.unbind(-2), k.unbind(-2), v.unbind(-2), beta.unbind(-1)):
        error = (state @ k_t[..., :, None]).squeeze(-1) - v_t  # S k_t - v_t: [B, H, e]
        state = state - beta_t[..., None, None] * error[..., :, None] * k_t[..., None, :]
        outputs.append((state @ q_t[..., :, None]).squeeze(-1))
    return torch.stack(outputs, dim=-2), state.transpose(-1, -2)


def delta_rule_chunked(q, k, v, beta, chunk_size: int, initial_state: torch.Tensor | None = None):
    """Fast form of `delta_rule_recurrent`, same arguments and returns. The triangular solves of all chunks run
    at once (they do not depend on the state); the loop over chunks then takes two small matmuls each."""
    n, e = q.shape[-2], v.shape[-1]
    q_c, k_c, v_c = (to_chunks(x, chunk_size) for x in (q, k, v))  # [B, H, M, C, .]
    beta_c = to_chunks(beta[..., None], chunk_size)  # [B, H, M, C, 1]; padding writes with strength 0
    keys_gram = k_c @ k_c.transpose(-1, -2)
    system = torch.eye(chunk_size, dtype=q.dtype, device=q.device) + (beta_c * keys_gram).tril(-1)
    rhs = torch.cat([beta_c * v_c, beta_c * k_c], dim=-1)
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
    # The padding in front (zero keys, beta = 0) has zero pseudo-values U, so it leaves any W_0 as it was.
    state = q.new_zeros(*q.shape[:-2], q.shape[-1], e) if initial_state is None else initial_state
    starts, updates = [], []
    for u_v, w_k, k_m in zip(pseudo_values.unbind(-3), key_weights.unbind(-3), k_c.unbind(-3)):
        u = u_v - w_k @ state
        starts.append(state)
        updates.append(u)
        state = state + k_m.transpose(-1, -2) @ u
    intra = (q_c @ k_c.transpose(-1, -2)).tril()
    out = q_c @ torch.stack(starts, dim=-3) + intra @ torch.stack(updates, dim=-3)
    return from_chunks(out, n), state


def delta_rule_step(q, k, v, beta, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token, the decoding step: q, k: [B, H, 1, d], v: [B, H, 1, e], beta: [B, H, 1], state W: [B, H, d, e]
    (None: zeros) -> (o = q W' [B, H, 1, e], W' = W - beta k^T (k W - v))."""
    if state is None:
        state = q.new_zeros(*q.shape[:-2], q.shape[-1], v.shape[-1])
    state = state - (beta[..., None] * k).transpose(-1, -2) @ (k @ state - v)
    return q @ state, state


@dataclass
class DeltaRuleConfig(MixerConfig):
    normalize_qk: bool = knob(True, "L2-normalise q and k per head (keeps the step 1 - beta ||k||^2 stable)")
    form: str = knob("chunked", "'chunked' (fast, WY form) or 'recurrent' (token loop, the reference)")
    chunk_size: int = knob(64, "chunked form: tokens per chunk C")

    def __post_init__(self) -> None:
        super().__post_init__()
        name = "delta-rule"
        check_choice(name, "normalize_qk", self.normalize_qk, [True, False])
        check_choice(name, "form", self.form, ["chunked", "recurrent"])
        check_integer(name, "chunk_size", self.chunk_size, 1)


@register("delta-rule")
class DeltaRule(MatrixStateMixer):
    """Delta rule: S_t = S_{t-1} - beta_t (S_{t-1} k_t - v_t) k_t^T with beta_t = sigmoid(theta_beta x_t)."""

    Config = DeltaRuleConfig
    reference_knobs = {"form": "recurrent"}

    def __init__(self, config: DeltaRuleConfig) -> None:
        super().__init__(config)
        self.to_beta = nn.Linear(config.d_model, config.n_heads)

    def mix_heads(
        self, x: torch.Tensor, state: MatrixState | None, step: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        q, k, v = self.qkv(x)
        if cfg.normalize_qk:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = torch.sigmoid(self.to_beta(x)).transpose(1, 2)  # [B, H, N]
        initial = None if state is None else state.weights
        if step:
            return delta_rule_step(q, k, v, beta, initial)
        if cfg.form == "recurrent":
            return delta_rule_recurrent(q, k, v, beta, initial)
        return delta_rule_chunked(q, k, v, beta, cfg.chunk_size, initial)

    def cost(self, batch: int, seq_len: int) -> LayerCost:
        cfg = self.config
        d = cfg.head_dim
        scale = batch * cfg.n_heads
        per_head = delta_rule_macs(seq_len, d, cfg.form, cfg.chunk_size)
        projections = self.projections_macs(batch, seq_len) + projection_macs(batch, seq_len, cfg.d_model, cfg.n_heads)
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
    no gradient: one product each."""
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
