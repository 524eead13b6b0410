"""Hebbian fast weights with decay (Ba et al. 2016):  S_t = lambda S_{t-1} + eta v_t k_t^T,  o_t = S_t q_t.

S_t: [e, d] per head (written as the paper does; the fast form holds its transpose W = S^T: [d, e], so that
o = q W with row vectors). The delta rule, its error-correcting sibling, is in ttt_bench/layers/delta_rule.py.

Forms: `recurrent` (the reference: a loop over tokens) and `chunked` (the fast form): within a chunk that
starts from S, o_i = lambda^(i+1) q_i S + eta sum_{j<=i} lambda^(i-j) (q_i.k_j) v_j.
Shapes: q, k: [B, H, N, d]; v: [B, H, N, e].

Decoding: the state is W_t = S_t^T: [B, H, d, e], the same size at any context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ttt_bench.config import check_choice, check_integer, check_open_unit, check_positive, knob
from ttt_bench.layers.base import LayerCost, MixerConfig, autograd_backward_macs
from ttt_bench.layers.chunking import from_chunks, to_chunks
from ttt_bench.layers.linear import MatrixState, MatrixStateMixer, linear_attention_macs
from ttt_bench.layers.registry import register


def fast_weights_recurrent(q, k, v, decay, eta: float, initial_state: torch.Tensor | None = None):
    """Reference: (o [B, H, N, e], final W = S_N^T [B, H, d, e]) from W_0 = initial_state ([B, H, d, e]; None:
    zeros); decay: [H] (lambda per head)."""
    lam = decay[:, None, None]
    if initial_state is None:
        state = q.new_zeros(*q.shape[:-2], v.shape[-1], q.shape[-1])  # S: [B, H, e, d]
    else:
        state = initial_state.transpose(-1, -2)
    outputs = []
    for q_t, k_t, v_t in zip(q.unbind(-2), k.unbind(-2), v.unbind(-2)):
        state = lam * state + eta * v_t[..., :, None] * k_t[..., None, :]
        outputs.append((state @ q_t[..., :, None]).squeeze(-1))
    return torch.stack(outputs, dim=-2), state.transpose(-1, -2)


def fast_weights_chunked(q, k, v, decay, eta: float, chunk_size: int, initial_state: torch.Tensor | None = None):
    """Fast form of `fast_weights_recurrent`, same arguments and returns: per chunk, batched intra-chunk
    products; the state is carried between chunks by a loop of one multiply-add each."""
    n, c = q.shape[-2], chunk_size
    q_c, k_c, v_c = (to_chunks(x, c) for x in (q, k, v))  # [B, H, M, C, .]
    log_decay = decay.log()[:, None, None]  # [H, 1, 1]
    pos = torch.arange(c, device=q.device, dtype=q.dtype)
    gaps = pos[:, None] - pos[None, :]  # i - j
    # lambda^(i - j) on and below the diagonal, 0 above it (exp(-inf) = 0 keeps the gradient finite).
    intra_decay = torch.exp((gaps * log_decay).masked_fill(gaps < 0, -math.inf))  # [H, C, C]
    read_decay = torch.exp((pos + 1)[:, None] * log_decay)  # lambda^(i+1): [H, C, 1]
    write_decay = torch.exp((c - 1 - pos)[:, None] * log_decay)  # lambda^(C-1-j): [H, C, 1]
    chunk_decay = torch.exp(c * log_decay)  # lambda^C: [H, 1, 1]

    intra = eta * (q_c @ k_c.transpose(-1, -2)) * intra_decay[:, None]
    increments = eta * (k_c * write_decay[:, None]).transpose(-1, -2) @ v_c  # [B, H, M, d, e]
    state = increments.new_zeros(increments[..., 0, :, :].shape)
    starts = []
    for increment in increments.unbind(-3):
        starts.append(state)
        state = chunk_decay * state + increment
    out = read_decay[:, None] * (q_c @ torch.stack(starts, dim=-3)) + intra @ v_c
    out = from_chunks(out, n)
    if initial_state is not None:
        # W_0 is read outside the chunks: the padding in front of the first one would decay it once per padded
        # token. Being linear in W_0, the outputs gain lambda^(t+1) q_t W_0 and the final state lambda^N W_0.
        steps = torch.arange(1, n + 1, device=q.device, dtype=q.dtype)
        out = out + torch.exp(steps[:, None] * log_decay) * (q @ initial_state)
        state = state + torch.exp(n * log_decay) * initial_state
    return out, state


def fast_weights_step(q, k, v, decay, eta: float, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token, the decoding step: q, k: [B, H, 1, d], v: [B, H, 1, e], state W: [B, H, d, e] (None: zeros)
    -> (o = q W' [B, H, 1, e], W' = lambda W + eta k^T v)."""
    write = eta * (k.transpose(-1, -2) @ v)
    state = write if state is None else decay[:, None, None] * state + write
    return q @ state, state


@dataclass
class FastWeightsConfig(MixerConfig):
    decay: float = knob(0.95, "lambda in (0, 1): how much of S_{t-1} is kept each step (Ba et al. use 0.95)")
    learn_decay: bool = knob(
        False, "lambda per head is an outer-loop parameter (sigmoid of a logit), starting at `decay`",
    )
    fast_lr: float = knob(0.5, "eta > 0: the Hebbian write strength (Ba et al. use 0.5)")
    form: str = knob("chunked", "'chunked' (fast) or 'recurrent' (token loop, the reference)")
    chunk_size: int = knob(64, "chunked form: tokens per chunk C")

    def __post_init__(self) -> None:
        super().__post_init__()
        name = "fast-weights"
        check_open_unit(name, "decay", self.decay)
        check_choice(name, "learn_decay", self.learn_decay, [True, False])
        check_positive(name, "fast_lr", self.fast_lr)
        check_choice(name, "form", self.form, ["chunked", "recurrent"])
        check_integer(name, "chunk_size", self.chunk_size, 1)


@register("fast-weights")
@register("fast-weights-learned-decay", learn_decay=True)
class FastWeights(MatrixStateMixer):
    """Hebbian fast weights with decay: S_t = lambda S_{t-1} + eta v_t k_t^T, o_t = S_t q_t."""

    Config = FastWeightsConfig
    reference_knobs = {"form": "recurrent"}

    def __init__(self, config: FastWeightsConfig) -> None:
        super().__init__(config)
        logit = torch.full((config.n_heads,), math.log(config.decay / (1.0 - config.decay)))
        if config.learn_decay:
            self.decay_logit = nn.Parameter(logit)
        else:
            self.register_buffer("decay_logit", logit)

    def mix_heads(
        self, x: torch.Tensor, state: MatrixState | None, step: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        q, k, v = self.qkv(x)
        decay = torch.sigmoid(self.decay_logit).to(x.dtype)
        initial = None if state is None else state.weights
        if step:
            return fast_weights_step(q, k, v, decay, cfg.fast_lr, initial)
        if cfg.form == "recurrent":
            return fast_weights_recurrent(q, k, v, decay, cfg.fast_lr, initial)
        return fast_weights_chunked(q, k, v, decay, cfg.fast_lr, cfg.chunk_size, initial)

    def cost(self, batch: int, seq_len: int) -> LayerCost:
        cfg = self.config
        d = cfg.head_dim
        executed, useful = linear_attention_macs(seq_len, d, d, True, cfg.form, cfg.chunk_size)
        scale = batch * cfg.n_heads
        forward = self.projections_macs(batch, seq_len) + scale * executed
        useful = self.projections_macs(batch, seq_len) + scale * useful
        backward = autograd_backward_macs(forward)
        if cfg.form == "chunked" and seq_len <= cfg.chunk_size:
            # One chunk: no backward runs for its K^T V, which only makes the final state (a trace keeps
            # it, though: it is consumed inside a batched op), and Q S reads the zero initial state.
            backward -= scale * 3 * cfg.chunk_size * d * d
        return LayerCost(batch * seq_len, forward, useful, backward, cfg.n_heads * d * d)


