"""Fast forms of the TTT inner loop, with the inner gradient in closed form (see reference.py for the spec).

Shapes: q, k: [BH, N, d]; target: [BH, N, e] (what the reconstruction head compares against);
eta: [BH, N] per-token inner learning rates; params: the learner's dense layers at W0 (learners.py).
Each returns (output [BH, N, d], final params).

Causal mini-batch semantics (the follow-up paper's dual form): within a mini-batch that starts from W,
token i (1-based) is read out with
    W_i = W - s_i * sum_{j<=i} eta_j * grad l_j(W),        s_i = 1/i (token_index_scale) or 1,
so every gradient in a mini-batch is taken at the same W and the next mini-batch starts from W_b.
N not a multiple of b: the last mini-batch simply has fewer tokens (b' = N mod b) and the final state
is its W_b', exactly the weights a decoder's token N reads.

Decoding: the causal forms also go on from a Pending mini-batch (W and the pending sum above) and return the
Pending after their last token, so a prompt can be prefilled in pieces and then decoded token by token.

Inside the loops the weights are augmented (W' = [W; c], learners.py) and the reconstruction target is
prepared once, so a step of TTT-Linear is about ten small ops: the loop's per-op overhead is its cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ttt_bench.layers.base import with_ones
from ttt_bench.layers.ttt import learners
from ttt_bench.layers.ttt.learners import Dense
from ttt_bench.layers.ttt.linear_scan import LinearLearnerScan
from ttt_bench.layers.ttt.mlp_scan import KEPT_GROUP, MLPCheckpointedScan
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


def inner_grads(weights, learner, head, k: torch.Tensor, prepared: torch.Tensor):
    """Each layer's (augmented) inputs X_l and the per-token loss gradients G_l at its pre-activation.
    k: the first layer's input (learners.first_input)."""
    z, inputs, preacts = learners.forward_with_cache(weights, learner, k)
    return inputs, learners.backward(weights, learner, preacts, head.grad(z, prepared))


def _gd_step(weights, rated, grads, sign: float = -1.0) -> list[torch.Tensor]:
    """W'_l <- W'_l + sign * (diag(rates) X_l)^T G_l, the rates already applied to the inputs."""
    return [torch.baddbmm(w, x.transpose(-1, -2), g, alpha=sign) for w, x, g in zip(weights, rated, grads)]


def rated_inputs(inputs, rates: torch.Tensor, rated_first: torch.Tensor | None = None) -> list[torch.Tensor]:
    """diag(rates) X_l for each layer; rates: [BH, n]. The first layer's may come precomputed."""
    first = inputs[0] * rates[..., None] if rated_first is None else rated_first
    return [first] + [x * rates[..., None] for x in inputs[1:]]


@dataclass
class Pending:
    """The causal loop between two tokens (a decoder's state): the mini-batch in progress started from `weights`
    (augmented W'_l per layer, [BH, e_l, d_l]) and has read `position` tokens, 0 <= position < b, whose rated
    gradients at those weights sum to `accumulated` (sum_{j<=i} eta_j X_j^T G_j, same shapes; zero at a mini-batch
    boundary), so that its token i reads W_i = W - s_i * accumulated."""

    weights: list[torch.Tensor]
    accumulated: list[torch.Tensor]
    position: int
    learner: learners.Learner

    @classmethod
    def start(cls, weights: list[torch.Tensor], learner: learners.Learner) -> Pending:
        """A mini-batch about to start from `weights`."""
        return cls(weights, [torch.zeros_like(w) for w in weights], 0, learner)


@dataclass(frozen=True)
class Steps:
    """The loop bodies the forms call once per mini-batch (the scan's step, the dual readout) or per token (the
    primal step's two halves). Eager by default (EAGER); `compiled_steps` compiles each of them once, so that a
    compiler sees one step with fixed shapes rather than the loop unrolled (TTTLayer.compile_forms)."""

    scan: Callable
    readout: Callable
    accumulate: Callable
    read: Callable


def causal_dual(q, k, target, eta, params, head, mini_batch: int, token_index_scale: bool, steps: Steps | None = None,
                gelu_approximate: str = "none", checkpoint_group: int = 0):
    """Mini-batch TTT in dual form: one sequential step per mini-batch, readouts batched afterwards.

    The scan carries only W; each mini-batch's start weights, layer inputs and gradients are kept, and
    the readout of all mini-batches is then a few batched matmuls:
        Z~_l = X~_l W'_l - (eta~ * (X~_l X_l^T)) G_l,   X~_1 = [Q, 1],  X~_{l+1} = [gelu(Z~_l), 1]
    (the ones column carries the bias: [q, 1].[k, 1] = q.k + 1).

    `params` may instead be a Pending mini-batch (decoding on from a state): the rest of the mini-batch in progress
    then runs token by token (causal_primal), the whole mini-batches after it in dual form, and a trailing partial
    one is read out in dual form and left pending; the second result is then the Pending after the last token.

    checkpoint_group (TTT-MLP with the views loss): 0 keeps every mini-batch's start weights for the backward; c > 0
    keeps every c-th and recomputes the rest in the backward (mlp_scan.py). Decoding from a Pending ignores it: a
    decoder keeps no graph.
    """
    steps = steps or EAGER
    if isinstance(params, Pending):
        return _dual_from(q, k, target, eta, params, head, mini_batch, token_index_scale, steps)
    weights, learner = learners.augment(params, gelu_approximate)
    prepared = head.prepare(target)
    keys = learners.first_input(learner, k)
    n = q.shape[1]
    n_full = n - n % mini_batch
    sizes = [s for s in (n_full, n - n_full) if s]
    outputs = []
    for q_part, k_part, t_part, e_part in zip(*(x.split(sizes, dim=1) for x in (q, keys, prepared, eta))):
        weights, readout = _dual_scan(
            q_part, k_part, t_part, e_part, weights, learner, head, mini_batch, token_index_scale, steps,
            checkpoint_group,
        )
        outputs.append(readout())
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return output, learners.unaugment(weights, learner)


def _dual_scan(q_part, k_part, t_part, e_part, weights, learner, head, mini_batch, token_index_scale, steps,
               checkpoint_group: int = 0):
    """Whole mini-batches (or one shorter last one) of [BH, M*b, .] tensors from `weights`: (the final weights, the
    readout of their outputs, to call once the caller has let go of `weights`: the readout never reads them).
    checkpoint_group > 0: the two-layer learner's scan keeps only every group's start weights (mlp_scan.py)."""
    b = min(mini_batch, q_part.shape[1])
    # Mini-batch-major [M, BH, b, ...]: each sequential step reads one contiguous block.
    chunked = lambda x: x.unflatten(1, (x.shape[1] // b, b)).transpose(0, 1).contiguous()
    rates = _mini_batch_rates(chunked(e_part), token_index_scale)  # [M, BH, b, b]
    last_rates = rates[..., -1, :]  # the rates that carry W to the next mini-batch
    k_chunks = chunked(k_part)
    rated_keys = k_chunks * last_rates[..., None]
    if len(weights) == 1 and isinstance(head, ViewsReconstruction):
        w0 = weights[0]
        # The scan writes into buffers of one dtype: under autocast it runs outside it, in the inner weights' own
        # dtype (float32 with amp), so the carried weights are not rounded to bfloat16 at every step. A no-op
        # otherwise.
        with torch.autocast(w0.device.type, enabled=False):
            starts, grads, final = LinearLearnerScan.apply(
                w0, *(x.to(w0.dtype) for x in (k_chunks, rated_keys, chunked(t_part))), head.ln_weight_sq
            )
        weights, stacked = [final], ([starts], [k_chunks], [grads])
    elif len(weights) == 2 and isinstance(head, ViewsReconstruction) and not learner.gated:
        w1, w2 = weights
        scan_in = [x.to(w1.dtype) for x in (k_chunks, rated_keys, chunked(t_part), last_rates)]
        # The readout runs inside, group by group, without the head (a head without LayerNorm reads z out as z);
        # the head reads the whole output out here. Without checkpoints the groups are kept, not recomputed.
        readout = lambda q, s, x, g, r: steps.readout(q, s, x, g, learner, r, ViewsReconstruction(None, None))
        with torch.autocast(w1.device.type, enabled=False):  # as LinearLearnerScan above
            output, *weights = MLPCheckpointedScan.apply(
                w1, w2, *scan_in, head.ln_weight_sq, chunked(q_part).to(w1.dtype), rates.to(w1.dtype),
                learner.gelu, checkpoint_group or KEPT_GROUP, readout, not checkpoint_group,
            )
        return weights, lambda: head.readout(output, q_part)
    else:
        weights, stacked = _scan(weights, learner, head, k_chunks, rated_keys, chunked(t_part), last_rates, steps.scan)
    return weights, lambda: steps.readout(chunked(q_part), *stacked, learner, rates, head)


def _dual_from(q, k, target, eta, pending: Pending, head, mini_batch, token_index_scale, steps):
    """causal_dual from a Pending mini-batch -> (output, the Pending after the last token)."""
    outputs = []
    if pending.position:
        n_rest = min(mini_batch - pending.position, q.shape[1])
        if n_rest == q.shape[1]:
            return causal_primal(q, k, target, eta, pending, head, mini_batch, token_index_scale, steps)
        sizes = [n_rest, q.shape[1] - n_rest]
        (q_rest, q), (k_rest, k), (t_rest, target), (e_rest, eta) = (x.split(sizes, dim=1) for x in (q, k, target, eta))
        output, pending = causal_primal(q_rest, k_rest, t_rest, e_rest, pending, head, mini_batch, token_index_scale,
                                        steps)
        outputs.append(output)
    weights, learner = pending.weights, pending.learner
    prepared = head.prepare(target)
    keys = learners.first_input(learner, k)
    n = q.shape[1]
    n_full = n - n % mini_batch
    sizes = [s for s in (n_full, n - n_full) if s]
    parts = list(zip(*(x.split(sizes, dim=1) for x in (q, keys, prepared, eta))))
    if n_full:
        weights, readout = _dual_scan(*parts.pop(0), weights, learner, head, mini_batch, token_index_scale, steps)
        outputs.append(readout())
    pending = Pending.start(weights, learner)
    if parts:
        # A trailing partial mini-batch: every gradient is taken at `weights`, so one batched pass gives them all.
        q_part, k_part, t_part, e_part = parts[0]
        inputs, grads = inner_grads(weights, learner, head, k_part, t_part)
        first = lambda x: x[None].contiguous()  # one mini-batch, mini-batch-major, laid out as _dual_scan'
        rates = _mini_batch_rates(e_part, token_index_scale)
        outputs.append(steps.readout(first(q_part), [first(w) for w in weights], [first(x) for x in inputs],
                                     [first(g) for g in grads], learner, first(rates), head))
        accumulated = [x.transpose(-1, -2) @ g for x, g in zip(rated_inputs(inputs, e_part), grads)]
        pending = Pending(weights, accumulated, q_part.shape[1], learner)
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return output, pending


def _scan(weights, learner, head, k_chunks, rated_keys, prepared_chunks, last_rates, step):
    """The dual form's sequential part for any learner, differentiated by autograd.

    Chunked inputs are [M, BH, b, .]. Returns the final weights and, per layer, every mini-batch's
    start weights [M, BH, e, d], layer inputs [M, BH, b, e] and gradients [M, BH, b, d]. step: _scan_step, or it
    compiled.
    """
    saved = []
    for k_m, rated_k_m, t_m, last_m in zip(k_chunks, rated_keys, prepared_chunks, last_rates):
        inputs, grads, next_weights = step(weights, learner, head, k_m, rated_k_m, t_m, last_m)
        saved.append((weights, inputs, grads))
        weights = next_weights
    stack = lambda i: [torch.stack([entry[i][layer] for entry in saved]) for layer in range(len(weights))]
    return weights, (stack(0), stack(1), stack(2))


def _scan_step(weights, learner, head, k_m, rated_k_m, t_m, last_m):
    """One mini-batch of the scan: (its layer inputs, its gradients at `weights`, the weights after it)."""
    inputs, grads = inner_grads(weights, learner, head, k_m, t_m)
    return inputs, grads, _gd_step(weights, rated_inputs(inputs, last_m, rated_k_m), grads)


def _dual_readout(q_chunks: torch.Tensor, starts, inputs, grads, learner, rates: torch.Tensor, head) -> torch.Tensor:
    """q_chunks: [M, BH, b, d]; per layer, the mini-batches' start weights, inputs and gradients
    -> output [BH, M*b, d]."""
    x_bar, z_bar = q_chunks, None  # z_bar: the previous layer's pre-activation, the next layer's input
    for layer, (w, x, g, has_bias) in enumerate(zip(starts, inputs, grads, learner.biased)):
        if layer:
            x_bar = learners.activate(z_bar, learner)
        x_bar = with_ones(x_bar) if has_bias else x_bar
        z_bar = x_bar @ w - (rates * (x_bar @ x.transpose(-1, -2))) @ g
    # The head's per-head parameters are [BH, 1, e]: read out on [BH, N, e], not on the chunked view.
    sequence = lambda x: x.transpose(0, 1).flatten(1, 2)
    return head.readout(sequence(z_bar), sequence(q_chunks))


def causal_primal(q, k, target, eta, params, head, mini_batch: int, token_index_scale: bool,
                  steps: Steps | None = None, gelu_approximate: str = "none"):
    """Mini-batch TTT token by token, as a decoder runs it: the weights W_i are materialised per token.

    `params` may instead be a Pending mini-batch (decoding on from a state); the second result is then the Pending
    after the last token rather than the final weights.
    """
    steps = steps or EAGER
    if isinstance(params, Pending):
        start, accumulated, i, learner = params.weights, params.accumulated, params.position, params.learner
    else:
        (start, learner), accumulated, i = learners.augment(params, gelu_approximate), None, 0
    prepared = head.prepare(target)
    keys, queries = learners.first_input(learner, k), learners.first_input(learner, q)
    scales = _token_scales(mini_batch, token_index_scale, q)
    outputs = []
    steps_in = zip(q.unbind(1), queries.unbind(1), keys.unbind(1), prepared.unbind(1), eta.unbind(1))
    for q_t, query_t, k_t, p_t, eta_t in steps_in:
        if accumulated is None:  # made when the mini-batch's first token needs it, once the last start is freed
            accumulated = [torch.zeros_like(w) for w in start]
        # Two calls, so that the sum they replace is freed before the token is read out (peak memory).
        accumulated = steps.accumulate(start, accumulated, learner, head, k_t[:, None], p_t[:, None], eta_t[:, None])
        output, weights = steps.read(start, accumulated, scales[i], learner, head, q_t[:, None], query_t[:, None])
        outputs.append(output)
        i += 1
        if i == mini_batch:  # the mini-batch is complete: the next one starts from its last weights
            start, accumulated, i = weights, None, 0
    output = torch.cat(outputs, dim=1)
    if isinstance(params, Pending):
        zeros = None if accumulated is not None else [torch.zeros_like(w) for w in start]
        return output, Pending(start, accumulated or zeros, i, learner)
    return output, learners.unaugment(weights, learner)


def _primal_accumulate(start, accumulated, learner, head, k_t, p_t, eta_t):
    """Token i of a mini-batch that started from `start` ([BH, 1, .] inputs): sum_{j<=i} eta_j grad l_j(start)."""
    inputs, grads = inner_grads(start, learner, head, k_t, p_t)
    return _gd_step(accumulated, rated_inputs(inputs, eta_t), grads, sign=1.0)


def _primal_read(start, accumulated, scale, learner, head, q_t, query_t):
    """Token i read out with W_i = start - s_i * accumulated (scale = s_i) -> (its output, W_i)."""
    weights = [w0 - scale * acc for w0, acc in zip(start, accumulated)]
    z = learners.forward_with_cache(weights, learner, query_t)[0]
    return head.readout(z, q_t), weights


EAGER = Steps(_scan_step, _dual_readout, _primal_accumulate, _primal_read)


def compiled_steps(**options) -> Steps:
    """Each step compiled once by torch.compile(**options); the loops that call them stay in Python.

    The views loss's scans keep their own hand-written steps (linear_scan.py, mlp_scan.py; TTT-MLP's calls the
    compiled readout per group): a few ops into preallocated buffers, which a compiled call made slower on the CPU
    (46 us a step against 36 us eager for TTT-Linear's, at B=1, H=4, d=64, b=16, one thread). The compiled scan step
    serves the other learners (the input loss).
    """
    compiled = lambda f: torch.compile(f, **options)
    return Steps(*(compiled(step) for step in (_scan_step, _dual_readout, _primal_accumulate, _primal_read)))


def full_batch(q, k, target, eta, params: list[Dense], head, steps: int, order: torch.Tensor | None = None,
               gelu_approximate: str = "none"):
    """Non-causal (MTTT) inner loop: `steps` GD steps on the mean loss over the whole sequence, then
    z = f(Q; W_T). With `order` (a permutation of the N tokens), step t uses only the t-th of `steps`
    near-equal splits of the permuted tokens (the first paper's SGD variant)."""
    weights, learner = learners.augment(params, gelu_approximate)
    prepared = head.prepare(target)
    keys = learners.first_input(learner, k)
    if order is None:
        batches = [(keys, prepared, eta)] * steps
    else:
        batches = zip(*(x.index_select(1, order).tensor_split(steps, dim=1) for x in (keys, prepared, eta)))
    for k_s, p_s, e_s in batches:
        inputs, grads = inner_grads(weights, learner, head, k_s, p_s)
        weights = _gd_step(weights, rated_inputs(inputs, e_s / k_s.shape[1]), grads)
    z = learners.forward_with_cache(weights, learner, learners.first_input(learner, q))[0]
    return head.readout(z, q), learners.unaugment(weights, learner)
