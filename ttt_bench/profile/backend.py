"""How a cell runs its layer: the backend ('eager' or 'compile') and mixed precision ('amp').

eager    the layer's own forward and decode.
compile  the layer's `compile_forms()`: torch.compile of the whole forward and decode by default; the TTT layers
         compile one mini-batch step instead (a Python loop over mini-batches is unrolled into the graph). The first
         call of each pass compiles it: its wall-clock is recorded as `compile_s`, outside the timed calls, and the
         compiled outputs are compared with eager's on the same input before anything is timed. Dynamo's
         in-process cache is cleared first, so a cell never reuses the graphs of the cell before it in the same
         worker; inductor's on-disk caches stay (a machine's first compile of a kernel is slower than later ones).
amp      torch.autocast to the grid's low-precision dtype, with the layer and its inputs in float32; without amp
         the whole layer and its inputs are cast to the dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from ttt_bench.layers.state import tensors_in

# Compiled against eager, max |difference| / max |eager|: inductor reorders reductions and fuses, so float32 agrees
# to a few ulps of the output's scale, not bit for bit.
COMPILE_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


class CompiledMismatch(RuntimeError):
    """A compiled pass computes something else than eager: its timing would not be of the same function."""


def layer_forms(layer: torch.nn.Module, backend: str) -> dict[str, Callable]:
    """{'forward': like layer(x), 'decode': like layer.decode(x, state)} for `backend`."""
    if backend == "eager":
        return {"forward": layer, "decode": layer.decode}
    if backend == "compile":
        torch._dynamo.reset()
        return layer.compile_forms()
    raise ValueError(f"backend={backend!r} is not one of 'eager', 'compile'")


def autocast_context(device: torch.device, dtype: torch.dtype, amp: bool) -> Callable[[], Any]:
    """A factory of the context every call of the cell runs in: autocast to `dtype`, or nothing."""
    if not amp:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def compiled_error(compiled: Any, eager: Any) -> float:
    """max |compiled - eager| / max |eager| over the tensors of two outputs (a tensor, or a tuple holding some)."""
    floating = lambda value: [t for t in tensors_in(value) if t.is_floating_point()]
    pairs = list(zip(floating(compiled), floating(eager)))
    worst = 0.0
    for a, b in pairs:
        scale = b.detach().abs().max().clamp_min(torch.finfo(b.dtype).tiny).double()
        worst = max(worst, ((a.detach().double() - b.detach().double()).abs().max() / scale).item())
    return worst


def check_compiled(what: str, error: float, dtype: torch.dtype) -> None:
    tolerance = COMPILE_TOLERANCE[dtype]
    if not error <= tolerance:
        raise CompiledMismatch(f"the compiled {what} differs from eager by {error:.2e} (relative; at most "
                               f"{tolerance:.0e} allowed in {str(dtype).removeprefix('torch.')}): not timed")
