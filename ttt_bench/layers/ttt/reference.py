"""Reference TTT inner loops: the papers' equations as plain loops, inner gradients by autograd.

These are the spec the fast forms (inner_loop.py) are tested against; they are slow on purpose.
Shapes as in inner_loop.py.
"""

from __future__ import annotations

import torch

from ttt_bench.layers.ttt import learners
from ttt_bench.layers.ttt.muon import WEIGHT_NORM_EPS, newton_schulz


def _differentiable(params):
    """Weights autograd can differentiate the inner loss by, keeping their outer-loop graph."""
    return [
        tuple(p if p is None or p.requires_grad else p.detach().requires_grad_() for p in layer)
        for layer in params
    ]


def _grad(params, loss):
    """grad_W loss per dense layer (None where a layer has no bias), with the graph kept so the outer loop can
    differentiate through it."""
    flat = iter(torch.autograd.grad(loss, [p for layer in params for p in layer if p is not None], create_graph=True))
    return [tuple(None if p is None else next(flat) for p in layer) for layer in params]


def _step(params, loss):
    """W - grad_W loss."""
    return [tuple(None if p is None else p - g for p, g in zip(*pair)) for pair in zip(params, _grad(params, loss))]


def causal_reference(q, k, target, eta, params, head, mini_batch: int, token_index_scale: bool,
                     gelu_approximate: str = "none"):
    """For token i (1-based) of a mini-batch that starts from W:
        W_i = W - s_i grad_W sum_{j<=i} eta_j l_j(W),     s_i = 1/i or 1,
        output_i = readout(f_res(q_i; W_i)),
    and the next mini-batch starts from W_b (b = the mini-batch's own length)."""
    n = q.shape[1]
    outputs = []
    params = _differentiable(params)
    for start in range(0, n, mini_batch):
        initial = params
        for i in range(start, min(start + mini_batch, n)):
            scale = 1.0 / (i - start + 1) if token_index_scale else 1.0
            losses = head.loss(learners.apply(initial, k[:, start : i + 1], gelu_approximate), target[:, start : i + 1])
            step = _step(initial, scale * (eta[:, start : i + 1] * losses).sum())
            params = step
            q_i = q[:, i : i + 1]
            outputs.append(head.readout(learners.apply(params, q_i, gelu_approximate), q_i))
        params = _differentiable(params)
    return torch.cat(outputs, dim=1), params


def full_batch_reference(q, k, target, eta, params, head, steps: int, order: torch.Tensor | None = None,
                         gelu_approximate: str = "none"):
    """W_{t+1} = W_t - grad (1/n_t) sum_{i in batch t} eta_i l_i(W_t); output readout(f_res(q; W_T))."""
    params = _differentiable(params)
    n = k.shape[1]
    for step in range(steps):
        if order is None:
            idx = torch.arange(n)
        else:
            idx = order.tensor_split(steps)[step]
        losses = head.loss(learners.apply(params, k[:, idx], gelu_approximate), target[:, idx])
        params = _step(params, (eta[:, idx] * losses).sum() / len(idx))
    return head.readout(learners.apply(params, q, gelu_approximate), q), params


def kernel_estimator_reference(q, k, values, causal: bool) -> torch.Tensor:
    """Nadaraya-Watson with kappa(k, q) = exp(k^T q): output_t = sum_s kappa(k_s, q_t) v_s / sum_s kappa(k_s, q_t),
    over s <= t when causal. The largest exponent is subtracted per query, which leaves the ratio unchanged."""
    outputs = []
    n = q.shape[-2]
    for t in range(n):
        keys, vals = (k[..., : t + 1, :], values[..., : t + 1, :]) if causal else (k, values)
        logits = (keys @ q[..., t, :, None]).squeeze(-1)
        weights = torch.exp(logits - logits.max(-1, keepdim=True).values)
        outputs.append((weights[..., None] * vals).sum(-2) / weights.sum(-1, keepdim=True))
    return torch.stack(outputs, dim=-2)


def muon_reference(q, k, target, eta, params, head, mini_batch: int, ns_steps: int, weight_norm: bool,
                   gelu_approximate: str = "none"):
    """LaCT (muon.py): every token of a chunk reads the chunk's start weights W, then
        W <- WN(W - NS(grad_W sum_{j in chunk} eta_j l_j(W)))
    once the chunk is complete (a trailing partial chunk only reads); WN keeps W0's column norms. The learner has no
    biases."""
    params = _differentiable(params)
    initial_norms = [w.norm(dim=-2, keepdim=True) for w, _ in params]
    n = q.shape[1]
    outputs = []
    for start in range(0, n, mini_batch):
        end = min(start + mini_batch, n)
        for i in range(start, end):
            q_i = q[:, i : i + 1]
            outputs.append(head.readout(learners.apply(params, q_i, gelu_approximate), q_i))
        if end - start < mini_batch:
            break
        weights = [w for w, _ in params]
        losses = head.loss(learners.apply(params, k[:, start:end], gelu_approximate), target[:, start:end])
        grads = torch.autograd.grad((eta[:, start:end] * losses).sum(), weights, create_graph=True)
        weights = [w - newton_schulz(g, ns_steps) for w, g in zip(weights, grads)]
        if weight_norm:
            weights = [w * n0 / (w.norm(dim=-2, keepdim=True) + WEIGHT_NORM_EPS)
                       for w, n0 in zip(weights, initial_norms)]
        params = [(w, None) for w in weights]
    return torch.cat(outputs, dim=1), params


def momentum_reference(q, k, target, eta, momentum, retain, params, head, mini_batch: int,
                       gelu_approximate: str = "none"):
    """Titans' momentum and forgetting with TTT's mini-batches (momentum.py): for token t of a mini-batch that starts
    from the anchor W^s,
        g_t = grad_W theta_t l_t(W^s),   S_t = mu_t S_{t-1} - g_t,   W_t = r_t W_{t-1} + S_t,
        output_t = readout(f_res(q_t; W_t)),
    with S_0 = 0, S_t = -g_t without momentum (momentum=None) and r_t = 1 without forgetting (retain=None); the next
    mini-batch's anchor is W at its start."""
    params = _differentiable(params)
    velocity, outputs = None, []  # None: S_0 = 0
    for t in range(q.shape[1]):
        if t % mini_batch == 0:
            params = anchor = _differentiable(params)
        loss = eta[:, t : t + 1] * head.loss(learners.apply(anchor, k[:, t : t + 1], gelu_approximate),
                                             target[:, t : t + 1])
        grad = _grad(anchor, loss.sum())
        mu = 0.0 if momentum is None else momentum[:, t, None, None]
        r = 1.0 if retain is None else retain[:, t, None, None]
        if velocity is None:
            velocity = [tuple(None if g is None else -g for g in layer) for layer in grad]
        else:
            velocity = [tuple(None if s is None else mu * s - g for s, g in zip(*pair)) for pair in zip(velocity, grad)]
        params = [tuple(None if w is None else r * w + s for w, s in zip(*pair)) for pair in zip(params, velocity)]
        q_t = q[:, t : t + 1]
        outputs.append(head.readout(learners.apply(params, q_t, gelu_approximate), q_t))
    return torch.cat(outputs, dim=1), params
