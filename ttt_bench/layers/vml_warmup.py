"""Resolves oneMKL's vector-math (VML) kernel choice once, before any multithreaded call.

ATen hands contiguous float32/float64 unary ops (erf, exp, tanh, sqrt, ...) to MKL VML, which picks
each function's kernel lazily on its first call. When that first call runs on several intra-op
threads at once, one thread can use a low-accuracy kernel for its whole chunk of that one call
(pytorch/pytorch#188792; oneMKL 2024.2, the version in the torch 2.13 CPU wheel). Seen here: the
first `torch.erf` in TTT-MLP's inner loop came back up to 1.3e-5 off on half its elements in about
one fresh process in twelve, so the same seed gave different training losses. A one-element call
per function and dtype runs on one thread and settles the choice for the rest of the process.
"""

from __future__ import annotations

import torch

# The unary ops ATen may route to VML (aten/src/ATen/cpu/vml.h); warming one that is not routed costs nothing.
VML_UNARY_OPS = ("abs", "acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "expm1", "log",
                 "log10", "log1p", "log2", "sin", "sqrt", "tan", "tanh", "trunc")

_resolved = False


def resolve_vml_dispatch() -> None:
    """Call each VML-backed op once on a single element (idempotent; microseconds)."""
    global _resolved
    if _resolved or not torch.backends.mkl.is_available():
        return
    for dtype in (torch.float32, torch.float64):
        one = torch.full((1,), 0.5, dtype=dtype)
        for name in VML_UNARY_OPS:
            getattr(torch, name)(one)
    _resolved = True
