"""Large-chunk TTT with an orthogonalised update (LaCT: Zhang et al. 2025, "Test-Time Training Done Right").

Per mini-batch (LaCT's chunk, typically thousands of tokens) that starts from W, LaCT applies, then updates:
    output_t = readout(f(q_t; W))                      every token of the chunk reads the chunk's start weights
    G = sum_{j in chunk} eta_j grad_W l_j(W)           one summed gradient per layer
    W <- WN(W - NS(G))                                 NS: Muon's Newton-Schulz orthogonalisation of G
so a chunk costs a few large matmuls however long it is. The orthogonalised update is not linear in the per-token
gradients, so a token cannot read a partial update of its own chunk (TTT's dual form does): the first chunk reads W0
and causality holds because a chunk's tokens never see its own update. WN (`weight_norm`) rescales every output
unit's weight vector (a column of W: [d_in, d_out]) back to its norm in W0, as LaCT does to keep the weights bounded.

With ns_steps = 0 (no orthogonalisation), no weight norm and one-token chunks this is per-token GD whose token t reads
W_{t-1}: TTT-Linear with b = 1 shifted by one token (tests/test_ttt_muon.py holds it).

Forms: `causal_chunked` (the fast form: one step per chunk, the chunk's keys and queries as single matmuls) and
`causal_primal` (token by token, as a decoder runs it); both go on from a Pending chunk (inner_loop.Pending: its
`weights` are the chunk's start, its `accumulated` the summed rated gradients so far). The spec is
reference.muon_reference. Shapes as in inner_loop.py.
"""

from __future__ import annotations

import torch

from ttt_bench.layers.ttt import learners
from ttt_bench.layers.ttt.inner_loop import Pending, inner_grads, rated_inputs

# Muon's quintic Newton-Schulz coefficients (Jordan et al. 2024, the Muon optimizer), which push every singular value
# of the normalised gradient towards 1 in five steps; LaCT orthogonalises its fast-weight updates with the same.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7
WEIGHT_NORM_EPS = 1e-5


def newton_schulz(g: torch.Tensor, steps: int) -> torch.Tensor:
    """An approximately orthogonal matrix with g's singular vectors: g: [..., m, n] -> [..., m, n]; steps = 0
    returns g itself (the update left as plain GD). Run on the wide side (m <= n), as Muon does, so the Gram is the
    smaller one."""
    if steps == 0:
        return g
    tall = g.shape[-2] > g.shape[-1]
    x = g.mT if tall else g
    x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + NS_EPS)  # spectral <= Frobenius norm = 1
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


def newton_schulz_macs(rows: int, cols: int, steps: int) -> int:
    """Matmul MACs of newton_schulz on one [rows, cols] matrix: per step the Gram (m m n), its square (m^3) and the
    product with x (m m n), m = min(rows, cols), n = max."""
    m, n = min(rows, cols), max(rows, cols)
    return steps * (2 * m * m * n + m * m * m)


def column_norms(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each output unit's weight-vector norm, [BH, 1, d_out] per layer: what weight_norm keeps."""
    return [w.norm(dim=-2, keepdim=True) for w in weights]


def update(weights, accumulated, ns_steps: int, norms: list[torch.Tensor] | None):
    """The end of a chunk: W <- WN(W - NS(G)) per layer (norms None: no weight norm)."""
    stepped = [w - newton_schulz(g, ns_steps) for w, g in zip(weights, accumulated)]
    if norms is None:
        return stepped
    return [w * (n / (w.norm(dim=-2, keepdim=True) + WEIGHT_NORM_EPS)) for w, n in zip(stepped, norms)]


def causal_chunked(q, k, target, eta, params, head, mini_batch: int, ns_steps: int, weight_norm: bool,
                   gelu_approximate: str = "none", norms: list[torch.Tensor] | None = None):
    """LaCT over [BH, N, .] tensors -> (output [BH, N, d], final params); from a Pending chunk (with the weight norms
    `norms` to keep, when weight_norm) -> (output, the Pending after the last token). One step per chunk."""
    return _apply_then_update(q, k, target, eta, params, head, mini_batch, ns_steps, weight_norm, gelu_approximate,
                              norms, piece=mini_batch)


def causal_primal(q, k, target, eta, params, head, mini_batch: int, ns_steps: int, weight_norm: bool,
                  gelu_approximate: str = "none", norms: list[torch.Tensor] | None = None):
    """causal_chunked token by token, as a decoder runs it: same arguments and returns."""
    return _apply_then_update(q, k, target, eta, params, head, mini_batch, ns_steps, weight_norm, gelu_approximate,
                              norms, piece=1)


def _apply_then_update(q, k, target, eta, params, head, mini_batch, ns_steps, weight_norm, gelu_approximate, norms,
                       piece: int):
    """Pieces of at most `piece` tokens that never cross a chunk's end: each reads the chunk's start weights, adds its
    rated gradients at them to the chunk's sum, and a chunk's last piece applies the update."""
    if isinstance(params, Pending):
        weights, accumulated, position, learner = params.weights, params.accumulated, params.position, params.learner
    else:
        (weights, learner), accumulated, position = learners.augment(params, gelu_approximate), None, 0
        norms = column_norms(weights) if weight_norm else None
    prepared = head.prepare(target)
    keys, queries = learners.first_input(learner, k), learners.first_input(learner, q)
    outputs, start, n = [], 0, q.shape[1]
    # Without a Pending to return, a trailing partial chunk only reads: its update would come after the last token.
    trained = n if isinstance(params, Pending) else n - n % mini_batch
    while start < n:
        size = min(piece, mini_batch - position, n - start)
        part = slice(start, start + size)
        z = learners.forward_with_cache(weights, learner, queries[:, part])[0]
        outputs.append(head.readout(z, q[:, part]))
        if start >= trained:
            start += size
            continue
        inputs, grads = inner_grads(weights, learner, head, keys[:, part], prepared[:, part])
        rated = rated_inputs(inputs, eta[:, part])
        if accumulated is None:
            accumulated = [x.mT @ g for x, g in zip(rated, grads)]
        else:
            accumulated = [torch.baddbmm(acc, x.mT, g) for acc, x, g in zip(accumulated, rated, grads)]
        start, position = start + size, position + size
        if position == mini_batch:
            weights, accumulated, position = update(weights, accumulated, ns_steps, norms), None, 0
    output = torch.cat(outputs, dim=1)
    if isinstance(params, Pending):
        accumulated = accumulated if accumulated is not None else [torch.zeros_like(w) for w in weights]
        return output, Pending(weights, accumulated, position, learner)
    return output, learners.unaugment(weights, learner)
