"""Inner learners f_res(x; W) as stacks of dense layers, with their backward pass in closed form.

A learner's weights are a list of dense layers `(W, c)`: W: [BH, d_in, d_out], c: [BH, 1, d_out] or
None, with GELU between layers (exact or tanh, gelu.py). The linear learner is one layer (d -> d); the MLP is
d -> 4d -> d.

The fast forms hold each layer as one augmented matrix W' = [W; c]: [BH, d_in + 1, d_out] acting on
[x, 1], so the forward pass, the gradient step and the dual form's scores each take one matmul for
weights and bias together. The backward pass is written out with matmuls because the fast forms run
inside forward, where fvcore cannot trace `torch.autograd.grad`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ttt_bench.layers.base import with_ones
from ttt_bench.layers.ttt.gelu import gelu, gelu_grad

Dense = tuple[torch.Tensor, "torch.Tensor | None"]

MLP_HIDDEN_MULTIPLIER = 4


def layer_widths(learner: str, head_dim: int) -> list[tuple[int, int]]:
    """(d_in, d_out) of each dense layer of the learner."""
    if learner == "linear":
        return [(head_dim, head_dim)]
    hidden = MLP_HIDDEN_MULTIPLIER * head_dim
    return [(head_dim, hidden), (hidden, head_dim)]


@dataclass(frozen=True)
class Learner:
    """How the fast forms run a learner's augmented weights: which dense layers have a bias (a last row of W'),
    and the GELU between layers ('none': exact, 'tanh': the official TTT-MLP's approximation)."""

    biased: tuple[bool, ...]
    gelu: str = "none"


def apply(params: list[Dense], x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """f_res(x; W), x: [..., n, d_in] -> [..., n, d_out]; `approximate`: the GELU's form."""
    for i, (w, c) in enumerate(params):
        if i:
            x = gelu(x, approximate)
        x = x @ w if c is None else x @ w + c
    return x


def augment(params: list[Dense], approximate: str = "none") -> tuple[list[torch.Tensor], Learner]:
    """[(W, c)] -> ([W'], the Learner) with W' = [W; c]."""
    weights = [w if c is None else torch.cat([w, c], dim=-2) for w, c in params]
    return weights, Learner(tuple(c is not None for _, c in params), approximate)


def unaugment(weights: list[torch.Tensor], learner: Learner) -> list[Dense]:
    return [(w[..., :-1, :], w[..., -1:, :]) if b else (w, None) for w, b in zip(weights, learner.biased)]


def first_input(learner: Learner, x: torch.Tensor) -> torch.Tensor:
    """The first layer's input as `forward_with_cache` takes it (augmented once, outside any loop)."""
    return with_ones(x) if learner.biased[0] else x


def forward_with_cache(weights: list[torch.Tensor], learner: Learner, x: torch.Tensor):
    """f_res with augmented weights on x = first_input(...), with each layer's (augmented) input X_l
    and pre-activation Z_l."""
    inputs, preacts = [], []
    for i, (w, b) in enumerate(zip(weights, learner.biased)):
        if i:
            x = gelu(preacts[-1], learner.gelu)
            x = with_ones(x) if b else x
        inputs.append(x)
        preacts.append(x @ w)
    return preacts[-1], inputs, preacts


def backward(weights: list[torch.Tensor], learner: Learner, preacts, grad_out: torch.Tensor) -> list[torch.Tensor]:
    """Gradient G_l of the loss at each layer's pre-activation Z_l, given grad_out = G_last.

    The weight gradients are then X_l^T G_l; the fast forms fold those sums into their own matmuls
    (weighted by the inner learning rates), so they are not formed here.
    """
    grads = [grad_out]
    for i in range(len(weights) - 1, 0, -1):
        w_next = weights[i][..., :-1, :] if learner.biased[i] else weights[i]
        grads.append((grads[-1] @ w_next.transpose(-1, -2)) * gelu_grad(preacts[i - 1], learner.gelu))
    return grads[::-1]
