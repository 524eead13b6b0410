"""Splitting a sequence into equal chunks for the chunked (parallel-within-chunk) recurrent forms.

The sequence is zero-padded once to a multiple of the chunk size and viewed as [..., M, C, e], so a
form works on all chunks with batched matmuls and no per-chunk slicing (per-chunk slices made the
backward pass allocate a full-size zero tensor per chunk: O(N^2 / C) memory and time). The padding
goes in front: zero keys and values (and zero write strengths) leave the zero initial state zero,
even under a decay, so the real outputs and the final state are exactly those of the unpadded run.
A nonzero initial state (a prefill continuing a decoded prefix) also passes the padding unchanged where nothing
decays (linear attention; the delta rule, whose padding writes with beta = 0; the gated delta rule, whose padded
log-decay is 0), but a fixed decay would shrink it once per padded token: fast weights read it outside the chunks
instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_chunks(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[..., N, e] -> [..., M, C, e], M = ceil(N / C), zero-padded in front."""
    pad = -x.shape[-2] % chunk_size
    if pad:
        x = F.pad(x, (0, 0, pad, 0))
    return x.unflatten(-2, (x.shape[-2] // chunk_size, chunk_size))


def from_chunks(x: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[..., M, C, e] -> [..., N, e], dropping the padding."""
    x = x.flatten(-3, -2)
    return x if x.shape[-2] == seq_len else x[..., x.shape[-2] - seq_len :, :]


def chunk_pairs(seq_len: int, chunk_size: int) -> tuple[int, int]:
    """(executed, useful) query-key pairs inside chunks: the dense C x C blocks of the padded sequence,
    and the pairs s <= t of real tokens that the causal mask keeps (the diagonal included)."""
    full, rest = divmod(seq_len, chunk_size)
    chunks = full + (1 if rest else 0)
    useful = full * chunk_size * (chunk_size + 1) // 2 + rest * (rest + 1) // 2
    return chunks * chunk_size * chunk_size, useful
