"""Inner learners f_res(x; W) as stacks of dense layers, with their backward pass in closed form.

A learner's weights are a list of dense layers `(W, c)`: W: [BH, d_in, d_out], c: [BH, 1, d_out] or
None, with an activation between layers. The linear learner is one layer (d -> d); the MLP is d -> 4d -> d with
GELU (exact or tanh, gelu.py); the SwiGLU learner (LaCT's) is d -> 2h -> h -> d: its first layer holds the gate and
the value projections side by side, [Z_g, Z_v] = x [W_g, W_v], and the hidden layer is silu(Z_g) * Z_v. A first layer
twice as wide as the next layer's input is that gated pair (`is_gated`): the widths say which activation a stack has.

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
# LaCT's SwiGLU fast weights keep the hidden width h at the head dim (its expansion factor of 1).
SWIGLU_HIDDEN_MULTIPLIER = 1


def layer_widths(learner: str, head_dim: int) -> list[tuple[int, int]]:
    """(d_in, d_out) of each dense layer of the learner."""
    if learner == "linear":
        return [(head_dim, head_dim)]
    if learner == "swiglu":
        hidden = SWIGLU_HIDDEN_MULTIPLIER * head_dim
        return [(head_dim, 2 * hidden), (hidden, head_dim)]
    hidden = MLP_HIDDEN_MULTIPLIER * head_dim
    return [(head_dim, hidden), (hidden, head_dim)]


def is_gated(params: list[Dense]) -> bool:
    """Whether dense layers (W, c) are the SwiGLU learner's: the first outputs the gate and the value, twice the
    width the second layer takes in."""
    return len(params) == 2 and params[0][0].shape[-1] == 2 * params[1][0].shape[-2]


def activate(z: torch.Tensor, learner: Learner) -> torch.Tensor:
    """The hidden layer from the previous layer's pre-activation: silu(Z_g) * Z_v (gated) or gelu(Z)."""
    if learner.gated:
        gate, value = z.chunk(2, dim=-1)
        return torch.nn.functional.silu(gate) * value
    return gelu(z, learner.gelu)


def activation_backward(z: torch.Tensor, grad_hidden: torch.Tensor, learner: Learner) -> torch.Tensor:
    """d loss / dZ from d loss / d activate(Z): with s = sigmoid(Z_g), silu' = s (1 + Z_g (1 - s))."""
    if learner.gated:
        gate, value = z.chunk(2, dim=-1)
        sig = torch.sigmoid(gate)
        silu_grad = sig * (1 + gate * (1 - sig))
        return torch.cat([grad_hidden * value * silu_grad, grad_hidden * gate * sig], dim=-1)
    return grad_hidden * gelu_grad(z, learner.gelu)


@dataclass(frozen=True)
class Learner:
    """How the fast forms run a learner's augmented weights: which dense layers have a bias (a last row of W'),
    and the GELU between layers ('none': exact, 'tanh': the official TTT-MLP's approximation)."""

    biased: tuple[bool, ...]
    gelu: str = "none"
    gated: bool = False  # the SwiGLU learner: silu(Z_g) * Z_v between its layers, not GELU


def apply(params: list[Dense], x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """f_res(x; W), x: [..., n, d_in] -> [..., n, d_out]; `approximate`: the GELU's form."""
    learner = Learner((), approximate, is_gated(params))
    for i, (w, c) in enumerate(params):
        if i:
            x = activate(x, learner)
        x = x @ w if c is None else x @ w + c
    return x


def augment(params: list[Dense], approximate: str = "none") -> tuple[list[torch.Tensor], Learner]:
    """[(W, c)] -> ([W'], the Learner) with W' = [W; c]."""
    weights = [w if c is None else torch.cat([w, c], dim=-2) for w, c in params]
    return weights, Learner(tuple(c is not None for _, c in params), approximate, is_gated(params))


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
            x = activate(preacts[-1], learner)
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
        grads.append(activation_backward(preacts[i - 1], grads[-1] @ w_next.transpose(-1, -2), learner))
    return grads[::-1]
