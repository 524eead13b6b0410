"""Reference TTT inner loops: the papers' equations as plain loops, inner gradients by autograd.

These are the spec the fast forms (inner_loop.py) are tested against; they are slow on purpose.
Shapes as in inner_loop.py.
"""

from __future__ import annotations

import torch

from ttt_bench.layers.ttt import learners


def _differentiable(params):
    """Weights autograd can differentiate the inner loss by, keeping their outer-loop graph."""
    return [
        tuple(p if p is None or p.requires_grad else p.detach().requires_grad_() for p in layer)
        for layer in params
    ]


def _step(params, loss):
    """W - grad_W loss, with the graph kept so the outer loop can differentiate through it."""
    flat = [p for layer in params for p in layer if p is not None]
    grads = iter(torch.autograd.grad(loss, flat, create_graph=True))
    return [tuple(None if p is None else p - next(grads) for p in layer) for layer in params]


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
