"""Linear attention (Katharopoulos et al. 2020): softmax(q.k) replaced by phi(q).phi(k).

    causal:      o_t = phi(q_t) S_t / n_t,   S_t = sum_{s<=t} phi(k_s)^T v_s   (a d x e recurrent state)
    non-causal:  o_t = phi(q_t) S_N / n_t

The normaliser n_t is 'sum' (phi(q_t) . sum_s phi(k_s), the paper's), 'count' (the number of summed
tokens: t causal, N non-causal) or 'none' (1). 'sum' is computed by appending a ones column to v, so
the denominator comes out of the same products as the numerator (e = d + 1).

Forms: `recurrent` (the reference: a loop over tokens that reads like the equation) and `chunked`
(the fast form: dense within chunks of C tokens, the state carried between them by a prefix sum).
Shapes: q, k: [B, H, N, d]; v: [B, H, N, e].

Decoding (causal variants): the state is S_t: [B, H, d, e], the same size at any context; the 'count'
normaliser's t is the state's token count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ttt_bench.config import check_choice, check_integer, knob
from ttt_bench.errors import ConfigError
from ttt_bench.layers.base import LayerCost, MixerConfig, SequenceMixer, autograd_backward_macs, with_ones
from ttt_bench.layers.chunking import chunk_pairs, from_chunks, to_chunks
from ttt_bench.layers.registry import register
from ttt_bench.layers.state import DecodeState

FEATURE_MAPS = {
    "identity": lambda x: x,
    "elu+1": lambda x: F.elu(x) + 1.0,
}


def linear_attention_recurrent(
    q, k, v, causal: bool, initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: (o [B, H, N, e], final state S_N [B, H, d, e]), one token at a time from S_0 = initial_state
    ([B, H, d, e]; None: zeros)."""
    state = q.new_zeros(*q.shape[:-2], q.shape[-1], v.shape[-1]) if initial_state is None else initial_state
    outputs = []
    for k_t, v_t, q_t in zip(k.unbind(-2), v.unbind(-2), q.unbind(-2)):
        state = state + k_t[..., :, None] * v_t[..., None, :]
        if causal:
            outputs.append((q_t[..., None, :] @ state).squeeze(-2))
    if not causal:
        return q @ state, state
    return torch.stack(outputs, dim=-2), state


def linear_attention_chunked(
    q, k, v, causal: bool, chunk_size: int, initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast form, same arguments and returns as the reference. Causal: for chunk m with start state S_m,
    O_m = Q_m S_m + tril(Q_m K_m^T) V_m, and S_m is S_0 plus an exclusive prefix sum of the chunks' K_m^T V_m
    (the zero keys and values padding the first chunk add nothing to it)."""
    if not causal:
        state = k.transpose(-1, -2) @ v
        if initial_state is not None:
            state = initial_state + state
        return q @ state, state
    n = q.shape[-2]
    q_c, k_c, v_c = (to_chunks(x, chunk_size) for x in (q, k, v))  # [B, H, M, C, .]
    increments = k_c.transpose(-1, -2) @ v_c  # [B, H, M, d, e]
    totals = increments.cumsum(dim=-3)
    if initial_state is None:
        starts = torch.cat([torch.zeros_like(totals[..., :1, :, :]), totals[..., :-1, :, :]], dim=-3)
    else:
        totals = initial_state[..., None, :, :] + totals
        starts = torch.cat([initial_state[..., None, :, :], totals[..., :-1, :, :]], dim=-3)
    intra = (q_c @ k_c.transpose(-1, -2)).tril()
    out = q_c @ starts + intra @ v_c
    return from_chunks(out, n), totals[..., -1, :, :]


def linear_attention_step(q, k, v, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One causal token, the decoding step: q, k: [B, H, 1, d], v: [B, H, 1, e], state S: [B, H, d, e]
    (None: zeros) -> (o = q S' [B, H, 1, e], S' = S + k^T v)."""
    write = k.transpose(-1, -2) @ v
    state = write if state is None else state + write
    return q @ state, state


@dataclass
class LinearAttentionConfig(MixerConfig):
    feature_map: str = knob("elu+1", "phi applied to q and k: 'elu+1' (positive, Katharopoulos) or 'identity'")
    normalizer: str = knob("sum", "divide by 'sum' (phi(q_t) . sum phi(k_s)), 'count' (tokens summed) or 'none'")
    causal: bool = knob(False, "sum over s <= t only (autoregressive)")
    form: str = knob("chunked", "'chunked' (fast: dense within chunks, state between them) or 'recurrent' (token loop)")
    chunk_size: int = knob(64, "causal chunked form: tokens per chunk C")

    def __post_init__(self) -> None:
        super().__post_init__()
        name = "linear-attention"
        check_choice(name, "feature_map", self.feature_map, sorted(FEATURE_MAPS))
        check_choice(name, "normalizer", self.normalizer, ["sum", "count", "none"])
        check_choice(name, "causal", self.causal, [True, False])
        check_choice(name, "form", self.form, ["chunked", "recurrent"])
        check_integer(name, "chunk_size", self.chunk_size, 1)
        if self.normalizer == "sum" and self.feature_map == "identity":
            raise ConfigError(
                f"{name}: normalizer='sum' with feature_map='identity' is not allowed: q.k can be zero or "
                "negative, so the denominator can vanish; use feature_map='elu+1' or normalizer 'count' or 'none'"
            )


@dataclass
class MatrixState(DecodeState):
    """The decode state of a MatrixStateMixer: W after the last token read, [B, H, d, e] (linear attention's S with
    the 'sum' normaliser's ones column; fast weights' and the delta rule's W = S^T)."""

    weights: torch.Tensor


class MatrixStateMixer(SequenceMixer):
    """A mixer whose state is one matrix W: [B, H, d, e] per head, written by the keys and read by the queries
    (linear attention, fast weights, the delta rule); its decode state (MatrixState) holds W. A subclass defines
    `mix_heads`."""

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        o, _ = self.mix_heads(x, None, step=False)
        return self.merge_heads_and_project(o)

    def decode(self, x: torch.Tensor, state: MatrixState | None) -> tuple[torch.Tensor, MatrixState]:
        o, weights = self.mix_heads(x, state, step=x.shape[1] == 1)
        read = 0 if state is None else state.tokens
        return self.merge_heads_and_project(o), MatrixState(tokens=read + x.shape[1], weights=weights)

    def decode_state_numel(self, batch: int, context: int) -> int:
        return batch * self.cost(1, 1).state_numel

    def mix_heads(
        self, x: torch.Tensor, state: MatrixState | None, step: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, n, D] -> (o [B, H, n, d] for the output projection, W after the last token [B, H, d, e]),
        continuing from `state` (None: the sequence starts here); `step` (n = 1 only): the lean decoding step
        instead of the configured form."""
        raise NotImplementedError


@register("linear-attention")
@register("linear-attention-causal", causal=True)
@register("linear-attention-identity", feature_map="identity", normalizer="count")
@register("linear-attention-identity-causal", feature_map="identity", normalizer="none", causal=True)
class LinearAttention(MatrixStateMixer):
    """Multi-head linear attention phi(q) (sum phi(k)^T v) / normaliser."""

    Config = LinearAttentionConfig
    reference_knobs = {"form": "recurrent"}  # the token loop of the paper's recurrence

    def mix_heads(
        self, x: torch.Tensor, state: MatrixState | None, step: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """o is normalised; W is S, with the ones column under the 'sum' normaliser."""
        cfg = self.config
        q, k, v = self.qkv(x)
        phi = FEATURE_MAPS[cfg.feature_map]
        q, k = phi(q), phi(k)
        if cfg.normalizer == "sum":
            v = with_ones(v)
        initial = None if state is None else state.weights
        if step:
            o, weights = linear_attention_step(q, k, v, initial)
        elif cfg.form == "recurrent":
            o, weights = linear_attention_recurrent(q, k, v, cfg.causal, initial)
        else:
            o, weights = linear_attention_chunked(q, k, v, cfg.causal, cfg.chunk_size, initial)
        if cfg.normalizer == "sum":
            o = o[..., :-1] / o[..., -1:]
        elif cfg.normalizer == "count":
            n, read = x.shape[1], 0 if state is None else state.tokens
            counts = (torch.arange(read + 1, read + n + 1, dtype=o.dtype, device=o.device) if cfg.causal
                      else o.new_full((n,), n))
            o = o / counts[:, None]
        return o, weights

    def cost(self, batch: int, seq_len: int) -> LayerCost:
        cfg = self.config
        d = cfg.head_dim
        e = d + 1 if cfg.normalizer == "sum" else d
        executed, useful = linear_attention_macs(seq_len, d, e, cfg.causal, cfg.form, cfg.chunk_size)
        scale = batch * cfg.n_heads
        forward = self.projections_macs(batch, seq_len) + scale * executed
        useful = self.projections_macs(batch, seq_len) + scale * useful
        return LayerCost(batch * seq_len, forward, useful, autograd_backward_macs(forward), cfg.n_heads * d * e)


def linear_attention_macs(seq_len: int, d: int, e: int, causal: bool, form: str, chunk_size: int) -> tuple[int, int]:
    """(executed, useful) MACs per head and sequence of a state d x e written by every key and read by
    every query (linear attention, and fast weights, whose decay is elementwise). Chunked causal: per
    chunk, K^T V and Q S (C d e each) and the intra-chunk Q K^T (C^2 d) and scores V (C^2 e)."""
    per_token = 2 * d * e  # the state write k^T v and the read q S
    if not causal or form == "recurrent":
        return seq_len * per_token, seq_len * per_token
    chunks = -(-seq_len // chunk_size)
    dense_pairs, useful_pairs = chunk_pairs(seq_len, chunk_size)
    executed = chunks * chunk_size * per_token + dense_pairs * (d + e)
    return executed, seq_len * per_token + useful_pairs * (d + e)
