"""A layer of your own, to copy: decayed causal attention without softmax,

    o_t = sum_{s <= t} decay^(t-s) (q_t . k_s) v_s,

in two forms that compute the same thing:
- 'parallel', the fast form: the N x N matrix of decay^(t-s) (q_t . k_s), zero above the diagonal, times V;
- 'recurrent', the reference: the loop over tokens that reads like the recurrence the sum equals,
  S_t = decay S_{t-1} + v_t k_t^T,  o_t = S_t q_t.

Shapes: x: [B, N, D]; per head q, k, v: [B, H, N, d] (d = D / H); the state S: [B, H, d, d].
Decoding (prefill, then one step per generated token) carries S from token to token: decode() and its size,
decode_state_numel().
Copy the file, rename the layer and its knobs, change mix(), cost() and decode(), then run
`ttt-bench check my_layer.py`; docs/your-layer.md explains each part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ttt_bench.config import check_choice, check_open_unit, knob
from ttt_bench.layers import register
from ttt_bench.layers.base import LayerCost, MixerConfig, SequenceMixer, autograd_backward_macs
from ttt_bench.layers.state import DecodeState


def decayed_attention_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: float) -> torch.Tensor:
    """Fast form: o [B, H, N, d] from q, k, v [B, H, N, d]."""
    positions = torch.arange(q.shape[-2], device=q.device)
    lag = (positions[:, None] - positions[None, :]).clamp(min=0).to(q.dtype)  # [N, N]: t - s, 0 above the diagonal
    weights = (decay**lag).tril()  # decay^(t-s) for s <= t; the causal mask is the zeros above the diagonal
    return ((q @ k.transpose(-1, -2)) * weights) @ v


def decayed_attention_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: float,
                                state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the token loop, S_t = decay S_{t-1} + v_t k_t^T, o_t = S_t q_t, from S (zero when None).
    Returns (o [B, H, N, d], the last S [B, H, d, d])."""
    if state is None:
        state = q.new_zeros(*q.shape[:-2], v.shape[-1], k.shape[-1])
    outputs = []
    for q_t, k_t, v_t in zip(q.unbind(-2), k.unbind(-2), v.unbind(-2)):
        state = decay * state + v_t[..., :, None] @ k_t[..., None, :]  # the outer product as a product: it counts
        outputs.append((state @ q_t[..., :, None]).squeeze(-1))
    return torch.stack(outputs, dim=-2), state


@dataclass
class MyLayerState(DecodeState):  # `tokens` (how many were read) comes from DecodeState
    s: torch.Tensor  # S after the last token read: [B, H, d, d]


@dataclass
class MyLayerConfig(MixerConfig):  # MixerConfig holds d_model and n_heads, which every layer is built with
    decay: float = knob(0.9, "decay^(t-s) weighs the pair (t, s); strictly between 0 and 1")
    form: str = knob("parallel", "'parallel' (fast: N x N weights) or 'recurrent' (token loop, the reference)")

    def __post_init__(self) -> None:
        super().__post_init__()  # checks d_model and n_heads
        check_open_unit("my-layer", "decay", self.decay)
        check_choice("my-layer", "form", self.form, ["parallel", "recurrent"])


@register("my-layer")
@register("my-layer-slow-decay", decay=0.99)
class MyLayer(SequenceMixer):
    Config = MyLayerConfig
    reference_knobs = {"form": "recurrent"}  # `ttt-bench check` compares every variant with this form of itself

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)  # [B, H, N, d]; the base class owns the q, k, v and output projections
        if self.config.form == "parallel":
            return self.merge_heads_and_project(decayed_attention_parallel(q, k, v, self.config.decay))
        return self.merge_heads_and_project(decayed_attention_recurrent(q, k, v, self.config.decay)[0])

    def decode(self, x: torch.Tensor, state: MyLayerState | None) -> tuple[torch.Tensor, MyLayerState]:
        """Prefill (x: [B, n, D], state None or the state after earlier tokens) and decoding (n = 1) alike: the
        recurrence from the state. `ttt-bench check` holds its outputs equal to mix()'s."""
        q, k, v = self.qkv(x)
        o, s = decayed_attention_recurrent(q, k, v, self.config.decay, None if state is None else state.s)
        return self.merge_heads_and_project(o), MyLayerState(tokens=x.shape[1] + (state.tokens if state else 0), s=s)

    def decode_state_numel(self, batch: int, context: int) -> int:
        return batch * self.config.n_heads * self.config.head_dim**2  # S, whatever the context

    def cost(self, batch: int, seq_len: int) -> LayerCost:
        cfg = self.config
        heads, d = batch * cfg.n_heads, cfg.head_dim
        projections = self.projections_macs(batch, seq_len)
        if cfg.form == "parallel":
            executed = heads * 2 * seq_len * seq_len * d  # Q K^T and weights V, both N x N x d
            useful = heads * 2 * (seq_len * (seq_len + 1) // 2) * d  # the pairs s <= t
        else:
            executed = useful = heads * 2 * seq_len * d * d  # per token: the write v_t k_t^T and the read S_t q_t
        forward = projections + executed
        return LayerCost(
            tokens=batch * seq_len,
            forward_macs=forward,
            useful_forward_macs=projections + useful,
            backward_macs=autograd_backward_macs(forward),  # two products per forward product
            state_numel=None if cfg.form == "parallel" else cfg.n_heads * d * d,  # S per sequence
            memory_order=2 if cfg.form == "parallel" else 1,  # the N x N weights are materialised
        )
