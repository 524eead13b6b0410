"""GELU between the MLP learner's layers, with its first and second derivatives in closed form.

Two forms, named as torch's `F.gelu(approximate=...)`: 'none', the exact x Phi(x) (this project's default), and
'tanh', 0.5 x (1 + tanh(c (x + a x^3))), c = sqrt(2 / pi), a = 0.044715, which the official TTT-MLP uses (its
outputs differ from the exact form's by a few 1e-5). The inner gradient needs g' (backprop through the learner);
a hand-derived outer backward through that gradient needs g'' as well.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

APPROXIMATIONS = ("none", "tanh")

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu(z: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return F.gelu(z, approximate=approximate)


def gelu_grad(z: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """g'(z). Exact: Phi(z) + z phi(z). Tanh: 0.5 (1 + t) + 0.5 z (1 - t^2) u', t = tanh(u), u = c (z + a z^3)."""
    if approximate == "tanh":
        t = torch.tanh(_SQRT_2_OVER_PI * (z + _CUBIC * z**3))
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _CUBIC * z * z)
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du
    cdf = 0.5 * (1.0 + torch.erf(z * _INV_SQRT_2))
    pdf = torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    return cdf + z * pdf


def gelu_grad2(z: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """g''(z). Exact: phi(z) (2 - z^2). Tanh: (1 - t^2) (u' + 0.5 z (u'' - 2 t u'^2)), u'' = 6 a c z."""
    if approximate == "tanh":
        t = torch.tanh(_SQRT_2_OVER_PI * (z + _CUBIC * z**3))
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _CUBIC * z * z)
        d2u = 6.0 * _CUBIC * _SQRT_2_OVER_PI * z
        return (1.0 - t * t) * (du + 0.5 * z * (d2u - 2.0 * t * du * du))
    return torch.exp(-0.5 * z * z) * _INV_SQRT_2PI * (2.0 - z * z)
