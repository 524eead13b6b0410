"""Two independent operator-level counts of a computation's matmul work, in MACs (FLOPs = 2 x MACs).

- `count_with_fvcore`: fvcore's `FlopCountAnalysis` (forward only: it traces with `torch.jit.trace`),
  with exact handles of our own for every product (fvcore has none for SDPA, baddbmm or triangular
  solves, and counts einsum to 4 significant figures) and a handle that counts inside the traced
  graph of a custom `autograd.Function`, which fvcore would otherwise see as one opaque node.
- `count_with_flop_counter`: `torch.utils.flop_counter.FlopCounterMode` (forward, and backward when
  the callable runs it), with `custom_mapping` for the CPU flash-attention ops and triangular solves
  it counts as 0.

Both follow op_policy.py: products are counted; elementwise work, norms, softmax, running sums and
data movement count 0 MACs and are listed by name; any other operator is listed as uncounted.
The layers' analytic formulas (`layer.cost`) are the third, independent count.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from ttt_bench.profile.op_policy import is_not_matmul, op_name


@dataclass(frozen=True)
class OpCount:
    """What one counter found in one run of a computation."""

    counter: str  # 'fvcore' or 'flop_counter'
    macs_by_op: dict[str, int]  # matmul work per operator, multiply-accumulates
    not_matmul_ops: dict[str, int] = field(default_factory=dict)  # op -> calls; 0 MACs by op_policy
    uncounted_ops: dict[str, int] = field(default_factory=dict)  # op -> calls; no rule, their work is missing

    @property
    def macs(self) -> int:
        return sum(self.macs_by_op.values())

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _classify(seen: Counter, counted: set[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Split the ops a counter saw but did not count into (not matmul by policy, uncounted)."""
    not_matmul, uncounted = {}, {}
    for name, calls in sorted(seen.items()):
        if name in counted:
            continue
        (not_matmul if is_not_matmul(name) else uncounted)[name] = calls
    return not_matmul, uncounted


def triangular_solve_macs(a_shape, b_shape, left: bool = True) -> int:
    """Forward or back substitution: n(n-1)/2 MACs per right-hand side (the n divisions by a
    non-unit diagonal are elementwise). A: [..., n, n]; B: [..., n, k] (left) or [..., k, n] (right)."""
    n = a_shape[-1]
    rhs = b_shape[-1] if left else b_shape[-2]
    batch = math.prod(torch.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])))
    return batch * rhs * n * (n - 1) // 2


# FlopCounterMode's rules take shapes and return FLOPs (2 per MAC).
def _cpu_flash_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _in_place_product_flops(self, a, b, *args, out_shape=None, **kwargs) -> int:
    """baddbmm_ and addmm_ (self += a @ b), which FlopCounterMode's own table lacks."""
    return 2 * _matmul_macs(list(a), list(b))


def _solve_triangular_flops(a, b, *args, out_shape=None, left: bool = True, **kwargs) -> int:
    return 2 * triangular_solve_macs(a, b, left)


FLOP_COUNTER_CUSTOM_MAPPING = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_attention_backward_flops,
    torch.ops.aten.linalg_solve_triangular: _solve_triangular_flops,
    torch.ops.aten.baddbmm_: _in_place_product_flops,
    torch.ops.aten.addmm_: _in_place_product_flops,
}


class _OpCensus(TorchDispatchMode):
    """Counts the calls of every aten op that executes (entered outside FlopCounterMode, it sees the
    ops FlopCounterMode decomposed, not the composites)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[op_name(func._overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_with_flop_counter(fn: Callable[[], Any]) -> OpCount:
    """Matmul work of `fn()` (forward, or forward and backward if `fn` calls backward)."""
    with _OpCensus() as census, FlopCounterMode(display=False, custom_mapping=FLOP_COUNTER_CUSTOM_MAPPING) as counter:
        fn()
    flops_by_op = counter.get_flop_counts().get("Global", {})
    macs_by_op = {op_name(op): flops // 2 for op, flops in flops_by_op.items()}
    registry = {op_name(op) for op in counter.flop_registry}
    not_matmul, uncounted = _classify(census.calls, registry)
    return OpCount("flop_counter", macs_by_op, not_matmul, uncounted)


def _shape(value) -> list[int] | None:
    """The static shape of a traced JIT value, None when it is not a tensor of known shape."""
    kind = value.type()
    if isinstance(kind, torch._C.TensorType) and kind.sizes() is not None:
        return list(kind.sizes())
    return None


def _matmul_macs(a: list[int], b: list[int]) -> int:
    """torch.matmul semantics: 1-D operands are promoted and their added dim dropped, batch dims broadcast."""
    a2 = [1] + a if len(a) == 1 else a
    b2 = b + [1] if len(b) == 1 else b
    batch = math.prod(torch.broadcast_shapes(tuple(a2[:-2]), tuple(b2[:-2])))
    return batch * a2[-2] * a2[-1] * b2[-1]


def _einsum_macs(equation: str, shapes: list[list[int]]) -> int | None:
    """Exact for one or two operands: one multiply-add per point of the loop over every distinct index
    (one operand: a sum, diagonal or permutation, no products). None where the cost is not fixed by the
    shapes alone (three or more operands: the contraction order decides) or '...' is used."""
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    if len(shapes) > 2 or any("..." in letters for letters in inputs):
        return None
    if len(shapes) == 1:
        return 0
    sizes: dict[str, int] = {}
    for letters, shape in zip(inputs, shapes):
        sizes.update(zip(letters, shape))
    return math.prod(sizes.values())


def _fvcore_rules(unruled: Counter) -> dict[str, Callable[[list, list], int]]:
    """Exact MAC counts per JIT op kind, from the shapes of a traced node's inputs. An op a rule cannot
    count exactly returns 0 and is noted in `unruled`, to be reported as uncounted."""

    def sdpa(inputs, outputs):
        q, k, v = (_shape(x) for x in inputs[:3])
        return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])

    def einsum(inputs, outputs):
        macs = _einsum_macs(inputs[0].toIValue(), [_shape(x) for x in inputs[1].node().inputs()])
        if macs is None:
            unruled["einsum"] += 1
        return macs or 0

    def solve_triangular(inputs, outputs):
        left = inputs[3].toIValue()
        return triangular_solve_macs(_shape(inputs[0]), _shape(inputs[1]), True if left is None else left)

    return {
        "aten::matmul": lambda i, o: _matmul_macs(_shape(i[0]), _shape(i[1])),
        "aten::mm": lambda i, o: _matmul_macs(_shape(i[0]), _shape(i[1])),
        "aten::bmm": lambda i, o: _matmul_macs(_shape(i[0]), _shape(i[1])),
        "aten::addmm": lambda i, o: _matmul_macs(_shape(i[1]), _shape(i[2])),
        "aten::baddbmm": lambda i, o: _matmul_macs(_shape(i[1]), _shape(i[2])),
        "aten::linear": lambda i, o: math.prod(_shape(i[0])) * _shape(i[1])[0],
        "aten::einsum": einsum,
        "aten::scaled_dot_product_attention": sdpa,
        "aten::linalg_solve_triangular": solve_triangular,
    }


def count_with_fvcore(module: torch.nn.Module, *inputs: torch.Tensor) -> OpCount:
    """Matmul work of `module(*inputs)`'s forward, counted by fvcore on its `torch.jit.trace` graph."""
    unruled: Counter = Counter()  # ops seen that no rule could count
    rules = _fvcore_rules(unruled)
    nested_calls: Counter = Counter()  # ops inside custom autograd.Functions

    def python_function(inputs, outputs):
        """A custom autograd.Function: count the graph its forward was traced into."""
        node = outputs[0].node()
        if not node.hasAttribute("Subgraph"):
            unruled[f"PythonOp.{node.pyname()}"] += 1
            return 0
        counts = Counter()
        for inner in node.g("Subgraph").nodes():
            kind = inner.kind()
            if kind.startswith("prim::"):
                continue
            nested_calls[op_name(kind)] += 1
            if kind in rules:
                counts[op_name(kind)] += rules[kind](list(inner.inputs()), list(inner.outputs()))
        return counts

    def analysis_with(handles):
        # Imported here: importing fvcore.nn warns, and only counting needs it.
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(module, inputs).clear_op_handles().set_op_handle(**handles)
        # fvcore skips a fixed list of ops (relu, masked_fill, copy_, ...) without a word; emptied so
        # that every op is classified by op_policy and shows up in the result.
        analysis._ignored_ops = set()
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        analysis.total()  # runs the trace and the count
        return analysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; what matters is in the result
        analysis = analysis_with(rules)
        unsupported = Counter(analysis.unsupported_ops())
        functions = [kind for kind in unsupported if kind.startswith("prim::PythonOp.")]
        if functions:
            unruled.clear()  # counted again by the second pass
            analysis = analysis_with({**rules, **dict.fromkeys(functions, python_function)})
            unsupported = Counter(analysis.unsupported_ops())
        macs_by_op = {name: int(macs) for name, macs in analysis.by_operator().items() if macs}

    seen = Counter({op_name(kind): calls for kind, calls in unsupported.items() if not kind.startswith("prim::")})
    seen.update(nested_calls)
    not_matmul, uncounted = _classify(seen, {op_name(kind) for kind in rules})
    return OpCount("fvcore", macs_by_op, not_matmul, {**uncounted, **unruled})

