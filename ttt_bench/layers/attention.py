"""Softmax self-attention: the naive form that materialises the N x N scores, and PyTorch's SDPA.

`naive` is the "standard" attention whose memory grows as N^2 (the cell a user watches run out of
memory); `sdpa` is `torch.nn.functional.scaled_dot_product_attention`, which dispatches to the
flash / memory-efficient kernels on GPU. The naive form is also the reference the SDPA form is
tested against. Shapes: q, k, v: [B, H, N, d].

Decoding (causal variants): the state is a KV cache, every key and value read so far ([B, H, t, d] each after
t tokens, in buffers that grow a block of KV_BLOCK tokens at a time), so it grows with the context; each new
chunk of queries attends to the cache and to itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ttt_bench.config import check_choice, knob
from ttt_bench.layers.base import LayerCost, MixerConfig, SequenceMixer, autograd_backward_macs
from ttt_bench.layers.registry import register
from ttt_bench.layers.state import DecodeState


def future_keys(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """[n, m] bool, True where key s comes after query t. The n queries sit at the last n of the m key positions
    (a chunk continuing a KV cache), so query t sees keys s <= m - n + t: the mask is aligned bottom-right."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).triu(1 + keys - queries)


def softmax_attention_naive(q, k, v, causal: bool, scale: float | None = None) -> torch.Tensor:
    """softmax(scale Q K^T [+ causal mask]) V with the score matrix [B, H, n, m] materialised; q: [B, H, n, d],
    k, v: [B, H, m, d], m >= n when causal (the queries are the last n positions)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    if causal:
        scores = scores.masked_fill(future_keys(q.shape[-2], k.shape[-2], q.device), -math.inf)
    return scores.softmax(dim=-1) @ v


def softmax_attention_sdpa(q, k, v, causal: bool, scale: float | None = None) -> torch.Tensor:
    """The same function through PyTorch's fused kernel (no N x N tensor on the flash / efficient paths)."""
    if not causal or q.shape[-2] == k.shape[-2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    # is_causal aligns its mask top-left (query t sees keys s <= t), wrong for queries that continue a cache.
    keep = ~future_keys(q.shape[-2], k.shape[-2], q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)


def attention_macs(batch: int, heads: int, seq_len: int, head_dim: int, causal: bool) -> tuple[int, int]:
    """(executed, useful) MACs of Q K^T and P V. Executed is dense (kernels compute the masked half
    too, or skip only whole blocks of it); useful counts the query-key pairs with s <= t when causal."""
    dense = 2 * batch * heads * seq_len * seq_len * head_dim
    pairs = seq_len * (seq_len + 1) // 2 if causal else seq_len * seq_len
    return dense, 2 * batch * heads * pairs * head_dim


def attention_backward_macs(batch: int, heads: int, seq_len: int, head_dim: int, impl: str) -> int:
    """Backward MACs of the two products. Naive: autograd's two per product (dQ, dK; dP, dV). SDPA's fused
    kernels (FlashAttention's backward) recompute the scores first: five N x N x d products, 2.5 x forward."""
    product = batch * heads * seq_len * seq_len * head_dim  # one N x N x d product, dense
    return (4 if impl == "naive" else 5) * product


@dataclass
class AttentionConfig(MixerConfig):
    impl: str = knob("sdpa", "'naive' (materialises the N x N scores) or 'sdpa' (fused kernels)")
    causal: bool = knob(False, "mask out keys after the query (autoregressive)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("attention", "impl", self.impl, ["naive", "sdpa"])
        check_choice("attention", "causal", self.causal, [True, False])


KV_BLOCK = 256  # tokens: the cache grows a block at a time, as paged KV caches do


@dataclass
class KVCache(DecodeState):
    """Every key and value read so far, in buffers of whole blocks: keys, values: [B, H, capacity, d], whose first
    `tokens` positions are filled (capacity: tokens rounded up to KV_BLOCK; the rest zero). Appending a token
    writes into the buffers: copying the whole cache at every token (torch.cat) would double the memory traffic
    of reading it, which is what a decode step of attention costs. The states of one decode share the buffers;
    a state extended a second time (a branch: another extension already wrote past it) copies first, so no state
    ever sees another's keys."""

    keys: torch.Tensor
    values: torch.Tensor
    filled: list[int]  # [positions written in the shared buffers]: one list per buffer, seen by every state on it

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of the tokens read: [B, H, tokens, d] each (views of the buffers)."""
        return self.keys[..., : self.tokens, :], self.values[..., : self.tokens, :]

    @staticmethod
    def extend(cache: KVCache | None, keys: torch.Tensor, values: torch.Tensor) -> KVCache:
        """The cache after `cache` (None: none yet) and keys, values: [B, H, n, d]; `cache` still reads as it did."""
        start = 0 if cache is None else cache.tokens
        end = start + keys.shape[-2]
        shared = cache is not None and cache.filled[0] == start and end <= cache.keys.shape[-2]
        if shared:
            key_buffer, value_buffer, filled = cache.keys, cache.values, cache.filled
        else:
            batch, heads, _, width = keys.shape
            capacity = -(-end // KV_BLOCK) * KV_BLOCK
            key_buffer, value_buffer = (keys.new_zeros(batch, heads, capacity, width) for _ in range(2))
            if cache is not None:
                old_keys, old_values = cache.read()
                key_buffer[..., :start, :] = old_keys
                value_buffer[..., :start, :] = old_values
            filled = [start]
        key_buffer[..., start:end, :] = keys
        value_buffer[..., start:end, :] = values
        filled[0] = end
        return KVCache(end, key_buffer, value_buffer, filled)

    @staticmethod
    def buffer_numel(batch: int, context: int, d_model: int) -> int:
        """Elements of the buffers after `context` tokens: keys and values, H x d = D per position each."""
        return 2 * batch * (-(-context // KV_BLOCK) * KV_BLOCK) * d_model


@register("attention-naive", impl="naive")
@register("attention-naive-causal", impl="naive", causal=True)
@register("attention-sdpa", impl="sdpa")
@register("attention-sdpa-causal", impl="sdpa", causal=True)
class SoftmaxAttention(SequenceMixer):
    """Multi-head softmax self-attention, scale 1/sqrt(d)."""

    Config = AttentionConfig
    reference_knobs = {"impl": "naive"}  # the fused SDPA kernel against the scores written out

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
        return self.merge_heads_and_project(self.attend(q, k, v, self.config.causal))

    @property
    def attend(self) -> Callable[..., torch.Tensor]:
        return softmax_attention_naive if self.config.impl == "naive" else softmax_attention_sdpa

    def decode(self, x: torch.Tensor, state: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        q, k, v = self.qkv(x)
        cache = KVCache.extend(state, k, v)
        # One query sees the whole cache: no mask to build.
        o = self.attend(q, *cache.read(), causal=x.shape[1] > 1)
        return self.merge_heads_and_project(o), cache

    def decode_state_numel(self, batch: int, context: int) -> int:
        return KVCache.buffer_numel(batch, context, self.config.d_model)

    def cost(self, batch: int, seq_len: int) -> LayerCost:
        cfg = self.config
        executed, useful = attention_macs(batch, cfg.n_heads, seq_len, cfg.head_dim, cfg.causal)
        projections = self.projections_macs(batch, seq_len)
        backward = autograd_backward_macs(projections) + attention_backward_macs(
            batch, cfg.n_heads, seq_len, cfg.head_dim, cfg.impl
        )
        return LayerCost(batch * seq_len, projections + executed, projections + useful, backward, None,
                         memory_order=2 if cfg.impl == "naive" else 1)
