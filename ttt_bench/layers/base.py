"""What every sequence mixer shares: its config fields, input checks, head split and analytic cost.

Shapes: x: [B, N, D] (batch, sequence length, model width); per head q, k, v: [B, H, N, d], d = D / H.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ttt_bench.config import check_integer, knob
from ttt_bench.errors import ConfigError
from ttt_bench.layers.state import DecodeState


@dataclass
class MixerConfig:
    d_model: int = knob(256, "model width D (input and output features)")
    n_heads: int = knob(4, "number of heads H; head dim d = D / H")

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_integer(name, "d_model", self.d_model, 1)
        check_integer(name, "n_heads", self.n_heads, 1)
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"{name}: d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                f"choose n_heads among the divisors of d_model"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


MEMORY_ORDERS = (1, 2)  # peak memory ~ N (states, chunks, fused kernels) or ~ N^2 (materialised scores)


@dataclass(frozen=True)
class LayerCost:
    """Analytic matmul work of one forward pass and of its backward, from the layer's equations.

    Convention: a MAC is one multiply-accumulate; FLOPs = 2 x MACs, always. Only products count (the
    projections, scores, state reads and writes, triangular solves); elementwise work (softmax, norms,
    activations, decays, running sums) does not (ttt_bench/profile/op_policy.py).
    Backward is what autograd runs for a loss on the output with x requiring grad, as inside a network:
    each product's backward computes one product of the same size per operand that needs a gradient,
    so 2 x forward, except where a layer states otherwise (a fused attention kernel recomputes its
    scores, a fixed initial state needs no gradient, a hand-written backward recomputes a product).
    Exact for the fast forms; the token-loop references write their states elementwise.
    """

    tokens: int  # B x N: the per-token figures divide by it
    forward_macs: int  # as executed: a causal mask applied to a dense product still costs the full product
    useful_forward_macs: int  # the part a causal mask keeps (equal to forward_macs when nothing is masked)
    backward_macs: int  # as executed by autograd for a loss on the output
    state_numel: int | None  # elements of the recurrent state per sequence; None when there is none (attention)
    # Forward work on its own op that only produces the final recurrent state (kept for decoding on):
    # the output does not depend on it, so no backward runs for it and a traced graph (fvcore) prunes it.
    final_state_macs: int = 0
    # The power of N that peak memory grows with: 2 where the layer materialises N x N scores, else 1. The
    # memory fit (ttt_bench/profile/memory_fit.py) fits a polynomial of this degree, and extrapolates no further.
    memory_order: int = 1

    def __post_init__(self) -> None:
        if self.memory_order not in MEMORY_ORDERS:
            raise ValueError(f"LayerCost.memory_order={self.memory_order!r} is not allowed; use "
                             f"{' or '.join(map(str, MEMORY_ORDERS))} (the power of N that peak memory grows with)")

    @property
    def forward_flops(self) -> int:
        return 2 * self.forward_macs

    @property
    def useful_forward_flops(self) -> int:
        return 2 * self.useful_forward_macs

    @property
    def forward_backward_macs(self) -> int:
        return self.forward_macs + self.backward_macs

    @property
    def forward_backward_flops(self) -> int:
        return 2 * self.forward_backward_macs

    @property
    def forward_macs_per_token(self) -> float:
        return self.forward_macs / self.tokens

    @property
    def forward_backward_macs_per_token(self) -> float:
        return self.forward_backward_macs / self.tokens


def autograd_backward_macs(forward_macs: int, final_state_macs: int = 0) -> int:
    """Two products per forward product (both operands need a gradient), none for final-state-only work."""
    return 2 * (forward_macs - final_state_macs)


def with_ones(x: torch.Tensor) -> torch.Tensor:
    """[..., n, e] -> [..., n, e + 1]: a ones column (the input a bias row acts on, or the column whose
    sums are a linear-attention normaliser)."""
    return torch.cat([x, x.new_ones(()).expand(*x.shape[:-1], 1)], dim=-1)


def projection_macs(batch: int, seq_len: int, d_in: int, d_out: int) -> int:
    return batch * seq_len * d_in * d_out


class SequenceMixer(nn.Module):
    """Base of every registered layer: checks x: [B, N, D] and owns the q, k, v and output projections."""

    Config = MixerConfig
    # The knob settings that turn this layer's fast form into its naive reference (a loop over tokens that reads
    # like the equations), e.g. {"form": "recurrent"}; `ttt-bench check` and the contract tests compare the two
    # on outputs and every gradient. None: no reference declared.
    reference_knobs: ClassVar[dict[str, Any] | None] = None

    def __init__(self, config: MixerConfig) -> None:
        super().__init__()
        self.config = config
        d_model = config.d_model
        self.to_qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.mix(x)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cost(self, batch: int, seq_len: int) -> LayerCost:
        raise NotImplementedError

    def prefill(self, x: torch.Tensor, state: DecodeState | None = None) -> tuple[torch.Tensor, DecodeState]:
        """Inference over a prompt: x: [B, N, D] -> (y [B, N, D], the state after its last token), continuing from
        `state` when given, so a long context can be prefilled chunk by chunk. y equals forward's outputs."""
        self.check_input(x)
        self._check_decodes()
        return self.decode(x, state)

    def step(self, x_t: torch.Tensor, state: DecodeState) -> tuple[torch.Tensor, DecodeState]:
        """One generated token: x_t: [B, 1, D] -> (y_t [B, 1, D], the state after it)."""
        self.check_input(x_t)
        if x_t.shape[1] != 1:
            raise ValueError(f"{type(self).__name__}.step takes one token, x_t: [B, 1, D]; got shape {list(x_t.shape)} "
                             f"(prefill takes a sequence)")
        self._check_decodes()
        return self.decode(x_t, state)

    def decode(self, x: torch.Tensor, state: DecodeState | None) -> tuple[torch.Tensor, DecodeState]:
        """The layer's causal recurrence on x: [B, n, D] from `state` (None: before the first token) -> (y, state).
        A causal layer that can decode defines this and `decode_state_numel`; n = 1 is a decoding step."""
        raise NotImplementedError

    def decode_state_numel(self, batch: int, context: int) -> int:
        """Elements of the state after `context` tokens: attention's KV cache grows with it, a recurrent state
        does not. The tests hold it equal to the measured state's `numel`."""
        raise NotImplementedError

    @property
    def no_decode_reason(self) -> str | None:
        """Why the layer cannot prefill a prompt and then decode token by token; None where it can (causal, with a
        step API). Every refusal to decode (a call, a skipped decode row, a check, the decode frontier) says this."""
        if not getattr(self.config, "causal", True):
            return "it is not causal"
        if type(self).decode is SequenceMixer.decode:
            return "it defines no decode() (docs/your-layer.md#decoding)"
        return None

    @property
    def decodes(self) -> bool:
        return self.no_decode_reason is None

    def _check_decodes(self) -> None:
        if not self.decodes:
            raise NotImplementedError(f"{type(self).__name__} cannot decode token by token: {self.no_decode_reason}")

    def compile_forms(self, **options: Any) -> dict[str, Callable]:
        """backend = 'compile': {'forward': like forward, 'decode': like decode} compiled by torch.compile. By
        default each is compiled whole; a layer whose forms loop in Python over mini-batches overrides this to
        compile one step of the loop instead (compiling the loop unrolls it into the graph)."""
        return {"forward": torch.compile(self, **options), "decode": torch.compile(self.decode, **options)}

    def check_input(self, x: torch.Tensor) -> None:
        d_model = self.config.d_model
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a tensor [B, N, {d_model}], got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != d_model:
            raise ValueError(
                f"{type(self).__name__} expects input [B, N, D] with D = d_model = {d_model}, "
                f"got shape {list(x.shape)}"
            )
        if x.shape[1] == 0:
            raise ValueError(f"{type(self).__name__} got an empty sequence (N = 0); N must be at least 1")

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v: [B, H, N, d]."""
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """[B, N, H*e] -> [B, H, N, e]."""
        batch, seq_len, width = t.shape
        heads = self.config.n_heads
        return t.view(batch, seq_len, heads, width // heads).transpose(1, 2)

    def merge_heads(self, o: torch.Tensor) -> torch.Tensor:
        """o: [B, H, N, d] -> [B, N, D]."""
        batch, heads, seq_len, head_dim = o.shape
        return o.transpose(1, 2).reshape(batch, seq_len, heads * head_dim)

    def merge_heads_and_project(self, o: torch.Tensor) -> torch.Tensor:
        """o: [B, H, N, d] -> [B, N, D] through the output projection."""
        return self.to_out(self.merge_heads(o))

    def projections_macs(self, batch: int, seq_len: int) -> int:
        d_model = self.config.d_model
        return projection_macs(batch, seq_len, d_model, 4 * d_model)
