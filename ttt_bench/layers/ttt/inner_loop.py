"""Fast forms of the TTT inner loop, with the inner gradient in closed form (see reference.py for the spec).

Shapes: q, k: [BH, N, d]; target: [BH, N, e] (what the reconstruction head compares against);
eta: [BH, N] per-token inner learning rates; params: the learner's dense layers at W0 (learners.py).
Each returns (output [BH, N, d], final params).

Causal mini-batch semantics (the follow-up paper's dual form): within a mini-batch that starts from W,
token i (1-based) is read out with
    W_i = W - s_i * sum_{j<=i} eta_j * grad l_j(W),        s_i = 1/i (token_index_scale) or 1,
so every gradient in a mini-batch is taken at the same W and the next mini-batch starts from W_b.
N not a multiple of b: the last mini-batch simply has fewer tokens (b' = N mod b) and the final state
is its W_b', exactly the weights a decoder holds after token N.

Inside the loops the weights are augmented (W' = [W; c], learners.py) and the reconstruction target is
prepared once, so a step of TTT-Linear is about ten small ops: the loop's per-op overhead is its cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ttt_bench.layers.base import with_ones
from ttt_bench.layers.ttt import learners
from ttt_bench.layers.ttt.learners import Dense
from ttt_bench.layers.ttt.linear_scan import LinearLearnerScan
from ttt_bench.layers.ttt.reconstruction import ViewsReconstruction


def _token_scales(length: int, token_index_scale: bool, like: torch.Tensor) -> torch.Tensor:
    """s_i for i = 1..length: [length]."""
    if not token_index_scale:
        return torch.ones(length, dtype=like.dtype, device=like.device)
    return 1.0 / torch.arange(1, length + 1, dtype=like.dtype, device=like.device)


def _mini_batch_rates(eta: torch.Tensor, token_index_scale: bool) -> torch.Tensor:
    """eta~[.., i, j] = s_i * eta_j for j <= i, else 0. eta: [.., b] -> [.., b, b]."""
    scales = _token_scales(eta.shape[-1], token_index_scale, eta)
    return torch.tril(scales[:, None] * eta[..., None, :])


def _inner_grads(weights, biased, head, k: torch.Tensor, prepared: torch.Tensor):
    """Each layer's (augmented) inputs X_l and the per-token loss gradients G_l at its pre-activation.
    k: the first layer's input (learners.first_input)."""
    z, inputs, preacts = learners.forward_with_cache(weights, biased, k)
    return inputs, learners.backward(weights, biased, preacts, head.grad(z, prepared))


def _gd_step(weights, rated_inputs, grads, sign: float = -1.0) -> list[torch.Tensor]:
    """W'_l <- W'_l + sign * (diag(rates) X_l)^T G_l, the rates already applied to the inputs."""
    return [torch.baddbmm(w, x.transpose(-1, -2), g, alpha=sign) for w, x, g in zip(weights, rated_inputs, grads)]


def _rated(inputs, rates: torch.Tensor, rated_first: torch.Tensor | None = None) -> list[torch.Tensor]:
    """diag(rates) X_l for each layer; rates: [BH, n]. The first layer's may come precomputed."""
    first = inputs[0] * rates[..., None] if rated_first is None else rated_first
    return [first] + [x * rates[..., None] for x in inputs[1:]]


def causal_dual(q, k, target, eta, params: list[Dense], head, mini_batch: int, token_index_scale: bool):
    """Mini-batch TTT in dual form: one sequential step per mini-batch, readouts batched afterwards.

    The scan carries only W; each mini-batch's start weights, layer inputs and gradients are kept, and
    the readout of all mini-batches is then a few batched matmuls:
        Z~_l = X~_l W'_l - (eta~ * (X~_l X_l^T)) G_l,   X~_1 = [Q, 1],  X~_{l+1} = [gelu(Z~_l), 1]
    (the ones column carries the bias: [q, 1].[k, 1] = q.k + 1).
    """
    weights, biased = learners.augment(params)
    prepared = head.prepare(target)
    keys = learners.first_input(biased, k)
    n = q.shape[1]
    n_full = n - n % mini_batch
    sizes = [s for s in (n_full, n - n_full) if s]
    outputs = []
    for q_part, k_part, t_part, e_part in zip(*(x.split(sizes, dim=1) for x in (q, keys, prepared, eta))):
        b = min(mini_batch, q_part.shape[1])
        # Mini-batch-major [M, BH, b, ...]: each sequential step reads one contiguous block.
        chunked = lambda x, b=b: x.unflatten(1, (x.shape[1] // b, b)).transpose(0, 1).contiguous()
        rates = _mini_batch_rates(chunked(e_part), token_index_scale)  # [M, BH, b, b]
        last_rates = rates[..., -1, :]  # the rates that carry W to the next mini-batch
        k_chunks = chunked(k_part)
        rated_keys = k_chunks * last_rates[..., None]
        if len(weights) == 1 and isinstance(head, ViewsReconstruction):
            starts, grads, final = LinearLearnerScan.apply(
                weights[0], k_chunks, rated_keys, chunked(t_part), head.ln_weight_sq
            )
            weights, stacked = [final], ([starts], [k_chunks], [grads])
        else:
            weights, stacked = _scan(weights, biased, head, k_chunks, rated_keys, chunked(t_part), last_rates)
        outputs.append(_dual_readout(chunked(q_part), *stacked, biased, rates, head))
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return output, learners.unaugment(weights, biased)


def _scan(weights, biased, head, k_chunks, rated_keys, prepared_chunks, last_rates):
    """The dual form's sequential part for any learner, differentiated by autograd.

    Chunked inputs are [M, BH, b, .]. Returns the final weights and, per layer, every mini-batch's
    start weights [M, BH, e, d], layer inputs [M, BH, b, e] and gradients [M, BH, b, d].
    """
    saved = []
    for k_m, rated_k_m, t_m, last_m in zip(k_chunks, rated_keys, prepared_chunks, last_rates):
        inputs, grads = _inner_grads(weights, biased, head, k_m, t_m)
        saved.append((weights, inputs, grads))
        weights = _gd_step(weights, _rated(inputs, last_m, rated_k_m), grads)
    stack = lambda i: [torch.stack([entry[i][layer] for entry in saved]) for layer in range(len(weights))]
    return weights, (stack(0), stack(1), stack(2))


def _dual_readout(q_chunks: torch.Tensor, starts, inputs, grads, biased, rates: torch.Tensor, head) -> torch.Tensor:
    """q_chunks: [M, BH, b, d]; per layer, the mini-batches' start weights, inputs and gradients
    -> output [BH, M*b, d]."""
    x_bar, z_bar = q_chunks, None  # z_bar: the previous layer's pre-activation, the next layer's input
    for layer, (w, x, g, has_bias) in enumerate(zip(starts, inputs, grads, biased)):
        if layer:
            x_bar = F.gelu(z_bar)
        x_bar = with_ones(x_bar) if has_bias else x_bar
        z_bar = x_bar @ w - (rates * (x_bar @ x.transpose(-1, -2))) @ g
    # The head's per-head parameters are [BH, 1, e]: read out on [BH, N, e], not on the chunked view.
    sequence = lambda x: x.transpose(0, 1).flatten(1, 2)
    return head.readout(sequence(z_bar), sequence(q_chunks))


def causal_primal(q, k, target, eta, params: list[Dense], head, mini_batch: int, token_index_scale: bool):
    """Mini-batch TTT token by token, as a decoder runs it: the weights W_i are materialised per token."""
    weights, biased = learners.augment(params)
    prepared = head.prepare(target)
    keys, queries = learners.first_input(biased, k), learners.first_input(biased, q)
    scales = _token_scales(mini_batch, token_index_scale, q)
    outputs = []
    steps = zip(q.unbind(1), queries.unbind(1), keys.unbind(1), prepared.unbind(1), eta.unbind(1))
    for t, (q_t, query_t, k_t, p_t, eta_t) in enumerate(steps):
        i = t % mini_batch
        if i == 0:
            start = weights
            accumulated = [torch.zeros_like(w) for w in start]  # sum_{j<=i} eta_j grad l_j(start)
        inputs, grads = _inner_grads(start, biased, head, k_t[:, None], p_t[:, None])
        accumulated = _gd_step(accumulated, _rated(inputs, eta_t[:, None]), grads, sign=1.0)
        weights = [w0 - scales[i] * acc for w0, acc in zip(start, accumulated)]
        z = learners.forward_with_cache(weights, biased, query_t[:, None])[0]
        outputs.append(head.readout(z, q_t[:, None]))
    return torch.cat(outputs, dim=1), learners.unaugment(weights, biased)


def full_batch(q, k, target, eta, params: list[Dense], head, steps: int, order: torch.Tensor | None = None):
    """Non-causal (MTTT) inner loop: `steps` GD steps on the mean loss over the whole sequence, then
    z = f(Q; W_T). With `order` (a permutation of the N tokens), step t uses only the t-th of `steps`
    near-equal splits of the permuted tokens (the first paper's SGD variant)."""
    weights, biased = learners.augment(params)
    prepared = head.prepare(target)
    keys = learners.first_input(biased, k)
    if order is None:
        batches = [(keys, prepared, eta)] * steps
    else:
        batches = zip(*(x.index_select(1, order).tensor_split(steps, dim=1) for x in (keys, prepared, eta)))
    for k_s, p_s, e_s in batches:
        inputs, grads = _inner_grads(weights, biased, head, k_s, p_s)
        weights = _gd_step(weights, _rated(inputs, e_s / k_s.shape[1]), grads)
    z = learners.forward_with_cache(weights, biased, learners.first_input(biased, q))[0]
    return head.readout(z, q), learners.unaugment(weights, biased)
