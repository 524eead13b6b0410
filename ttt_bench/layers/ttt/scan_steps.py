"""The per-mini-batch operands of a hand-written scan's loop (linear_scan.py, mlp_scan.py)."""

from __future__ import annotations

import torch


def step_views(*tensors: torch.Tensor):
    """Per step m, (x[m] for each [M, ...] tensor x). Outside a tracer the views are made at once (unbind): indexing
    inside a loop of small ops costs as much as one of them. Under a tracer (fvcore) views unbound before the loop
    put the loop's ops in the traced graph twice (its products counted twice), so there each step indexes as it runs.
    """
    if torch.jit.is_tracing():
        return (tuple(x[m] for x in tensors) for m in range(len(tensors[0])))
    return zip(*(x.unbind(0) for x in tensors))
