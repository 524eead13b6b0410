"""Inner learners f_res(x; W) as stacks of dense layers, with their backward pass in closed form.

A learner's weights are a list of dense layers `(W, c)`: W: [BH, d_in, d_out], c: [BH, 1, d_out] or
None, with GELU between layers. The linear learner is one layer (d -> d); the MLP is d -> 4d -> d.

The fast forms hold each layer as one augmented matrix W' = [W; c]: [BH, d_in + 1, d_out] acting on
[x, 1], so the forward pass, the gradient step and the dual form's scores each take one matmul for
weights and bias together. The backward pass is written out with matmuls because the fast forms run
inside forward, where fvcore cannot trace `torch.autograd.grad`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ttt_bench.layers.base import with_ones

Dense = tuple[torch.Tensor, "torch.Tensor | None"]

MLP_HIDDEN_MULTIPLIER = 4


def layer_widths(learner: str, head_dim: int) -> list[tuple[int, int]]:
    """(d_in, d_out) of each dense layer of the learner."""
    if learner == "linear":
        return [(head_dim, head_dim)]
    hidden = MLP_HIDDEN_MULTIPLIER * head_dim
    return [(head_dim, hidden), (hidden, head_dim)]


def gelu_grad(z: torch.Tensor) -> torch.Tensor:
    """d/dz of the exact (erf) GELU: Phi(z) + z phi(z)."""
    cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + z * pdf


def apply(params: list[Dense], x: torch.Tensor) -> torch.Tensor:
    """f_res(x; W), x: [..., n, d_in] -> [..., n, d_out]."""
    for i, (w, c) in enumerate(params):
        if i:
            x = F.gelu(x)
        x = x @ w if c is None else x @ w + c
    return x


def augment(params: list[Dense]) -> tuple[list[torch.Tensor], list[bool]]:
    """[(W, c)] -> ([W'], [has bias]) with W' = [W; c]."""
    weights = [w if c is None else torch.cat([w, c], dim=-2) for w, c in params]
    return weights, [c is not None for _, c in params]


def unaugment(weights: list[torch.Tensor], biased: list[bool]) -> list[Dense]:
    return [(w[..., :-1, :], w[..., -1:, :]) if b else (w, None) for w, b in zip(weights, biased)]


def first_input(biased: list[bool], x: torch.Tensor) -> torch.Tensor:
    """The first layer's input as `forward_with_cache` takes it (augmented once, outside any loop)."""
    return with_ones(x) if biased[0] else x


def forward_with_cache(weights: list[torch.Tensor], biased: list[bool], x: torch.Tensor):
    """f_res with augmented weights on x = first_input(...), with each layer's (augmented) input X_l
    and pre-activation Z_l."""
    inputs, preacts = [], []
    for i, (w, b) in enumerate(zip(weights, biased)):
        if i:
            x = F.gelu(preacts[-1])
            x = with_ones(x) if b else x
        inputs.append(x)
        preacts.append(x @ w)
    return preacts[-1], inputs, preacts


def backward(weights: list[torch.Tensor], biased: list[bool], preacts, grad_out: torch.Tensor) -> list[torch.Tensor]:
    """Gradient G_l of the loss at each layer's pre-activation Z_l, given grad_out = G_last.

    The weight gradients are then X_l^T G_l; the fast forms fold those sums into their own matmuls
    (weighted by the inner learning rates), so they are not formed here.
    """
    grads = [grad_out]
    for i in range(len(weights) - 1, 0, -1):
        w_next = weights[i][..., :-1, :] if biased[i] else weights[i]
        grads.append((grads[-1] @ w_next.transpose(-1, -2)) * gelu_grad(preacts[i - 1]))
    return grads[::-1]
