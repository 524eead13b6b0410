"""Which operators are matmul work and which are not: the one policy every FLOP counter here follows.

Matmul work is counted in MACs (one multiply-accumulate each; FLOPs = 2 x MACs): matrix products
(mm, addmm, bmm, baddbmm, matmul, linear, einsum), fused attention kernels (their two products, and
the five of their backward, the score product recomputed) and triangular solves (n(n-1)/2 MACs per
right-hand side).

Everything else is counted as 0 MACs by policy, and listed by name so that nothing is dropped silently:
elementwise arithmetic and activations (and their backward ops), reductions, running sums (cumsum:
additions alone, no multiply), normalisations and softmax (elementwise work plus row reductions),
masking (tril, triu, masked_fill), and ops that create, copy, pad, concatenate or view tensors.
An operator in neither class is reported as uncounted: its work, if any, is missing from the total.
"""

from __future__ import annotations

import functools

import torch

# Products a counter must count; the keys are aten packet names (`aten::mm` in a JIT graph is `mm` here).
MATMUL_OPS = frozenset({
    "mm", "addmm", "addmm_", "bmm", "baddbmm", "baddbmm_", "matmul", "linear", "einsum",
    "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_cudnn_attention_backward",
    "_flash_attention_forward", "_flash_attention_backward",
    "_efficient_attention_forward", "_efficient_attention_backward",
    "linalg_solve_triangular",
})

# Not matmul work although their aten schema carries no `pointwise` or `reduction` tag.
_NOT_MATMUL_UNTAGGED = frozenset({
    # creation
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
    "new_empty", "new_empty_strided", "new_zeros", "new_ones", "new_full", "arange", "eye", "scalar_tensor",
    "randperm", "lift_fresh", "detach", "fill", "zero",
    # data movement and views
    "cat", "stack", "flip", "roll", "constant_pad_nd", "pad", "copy_", "clone", "contiguous", "_unsafe_view",
    "to", "_to_copy", "select_backward", "slice_backward", "index_select", "index", "index_add", "index_put",
    "gather", "scatter", "unflatten", "flatten", "chunk", "split", "split_with_sizes", "unbind", "reshape",
    "view", "expand", "expand_as", "transpose", "permute",
    "t", "select", "slice", "squeeze", "unsqueeze", "narrow", "tensor_split", "unsafe_split", "alias",
    # masking and running sums
    "tril", "triu", "masked_fill", "cumsum", "cumprod",
    # normalisations, softmax, activations and their backward ops (elementwise plus row reductions)
    "softmax", "_softmax", "_softmax_backward_data", "log_softmax", "_log_softmax", "_log_softmax_backward_data",
    "layer_norm", "native_layer_norm", "native_layer_norm_backward", "linalg_vector_norm", "normalize",
    "elu", "elu_backward", "gelu", "gelu_backward", "sigmoid", "sigmoid_backward", "silu", "silu_backward",
    "softplus", "softplus_backward", "threshold_backward",
    # scalar plumbing in traced graphs
    "Int", "ScalarImplicit", "size", "floor_divide", "remainder", "reciprocal",
})


def op_name(op) -> str:
    """The packet name of an aten op or a JIT node kind: `aten.mm.default` and `aten::mm` -> 'mm'."""
    if isinstance(op, str):
        return op.split("::", 1)[-1]
    return op._opname if hasattr(op, "_opname") else str(op).split(".")[-1]


def is_not_matmul(name: str) -> bool:
    """True when the policy counts `name` as 0 MACs (see the module docstring); `add_` follows `add`."""
    if name in MATMUL_OPS:
        return False
    base = name[:-1] if name.endswith("_") else name
    return any(n in _NOT_MATMUL_UNTAGGED or _tagged_not_matmul(n) for n in {name, base})


@functools.cache
def _tagged_not_matmul(name: str) -> bool:
    """An aten op tagged pointwise or reduction, or one that returns a view of an input."""
    packet = getattr(torch.ops.aten, name, None)
    if packet is None or not hasattr(packet, "overloads"):
        return False
    for overload in packet.overloads():
        op = getattr(packet, overload)
        if torch.Tag.pointwise in op.tags or torch.Tag.reduction in op.tags or _returns_alias(op):
            return True
    return False


def _returns_alias(op) -> bool:
    returns = op._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)
