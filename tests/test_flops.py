"""Three independent counts of matmul work agree for every registered layer, and nothing goes uncounted.

fvcore (on a `torch.jit.trace` of the forward), FlopCounterMode (on the ops that run, forward and
backward) and each layer's analytic formula; MACs everywhere, FLOPs = 2 x MACs.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ttt_bench.layers import build, names
from ttt_bench.profile.flops import count_with_flop_counter, count_with_fvcore, triangular_solve_macs
from ttt_bench.profile.op_policy import MATMUL_OPS, is_not_matmul

D_MODEL, HEADS, BATCH = 32, 2, 2
AGREEMENT = 0.01  # the bar; on these layers the counts are in fact equal

# Settings the registered variants do not cover but that change what backward runs.
KNOB_CASES = [
    ("ttt-linear", dict(learn_w0=False)),
    ("ttt-linear", dict(ln_residual=False)),
    ("ttt-linear", dict(reconstruction="input")),
    ("ttt-mlp", dict(learn_w0=False)),
    ("ttt-mlp", dict(ln_residual=False, inner_bias=False)),
    ("ttt-mlp", dict(checkpoint_group=4)),
    ("ttt-mlp", dict(checkpoint_group=1, ln_residual=False, learn_w0=False)),
    ("ttt-mlp-primal", dict(learn_w0=False)),
    ("mttt-mlp", dict(learn_w0=False, inner_steps=3, inner_sgd=True)),
    ("mttt-linear", dict(inner_steps=2)),
    ("ttt-mlp", dict(learner="swiglu")),
    ("ttt-mlp-primal", dict(learner="swiglu", inner_bias=False)),
    ("lact-swiglu", dict(mini_batch=37)),  # N = 37: one complete chunk, whose update only makes the final weights
    ("lact-swiglu", dict(mini_batch=2048, newton_schulz_steps=0)),  # nothing trains: W0 read throughout
    ("lact-swiglu", dict(form="primal", learner="linear", weight_norm=False)),
    ("delta-rule", dict(chunk_size=16)),
    ("linear-attention-causal", dict(chunk_size=16)),
]
CASES = [(name, {}) for name in names()] + KNOB_CASES


def layer_and_input(name, overrides, seq_len):
    torch.manual_seed(0)
    layer = build(name, d_model=D_MODEL, n_heads=HEADS, **overrides)
    x = torch.randn(BATCH, seq_len, D_MODEL, requires_grad=True)
    return layer, x


@pytest.mark.parametrize("name, overrides", CASES, ids=[f"{n}{o or ''}" for n, o in CASES])
@pytest.mark.parametrize("seq_len", [1, 37, 100])
def test_three_counts_agree(name, overrides, seq_len):
    layer, x = layer_and_input(name, overrides, seq_len)
    cost = layer.cost(BATCH, seq_len)

    fvcore = count_with_fvcore(layer, x)
    forward = count_with_flop_counter(lambda: layer(x))
    forward_backward = count_with_flop_counter(lambda: layer(x).sum().backward())

    for count in (fvcore, forward, forward_backward):
        assert count.uncounted_ops == {}, f"{count.counter} met ops with no rule: {count.uncounted_ops}"
    # fvcore counts the traced graph, which drops the work only the final state needs.
    assert fvcore.macs == pytest.approx(cost.forward_macs - cost.final_state_macs, rel=AGREEMENT)
    assert forward.macs == pytest.approx(cost.forward_macs, rel=AGREEMENT)
    assert forward_backward.macs == pytest.approx(cost.forward_backward_macs, rel=AGREEMENT)


def test_sdpa_matches_the_flash_attention_formula_on_cpu():
    # Forward, dense: 4 B N^2 H d FLOPs for Q K^T and P V, where plain FlopCounterMode counts 0 on CPU.
    batch, heads, seq_len, head_dim = 2, 3, 50, 16
    q, k, v = (torch.randn(batch, heads, seq_len, head_dim) for _ in range(3))
    attend = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    with FlopCounterMode(display=False) as plain:
        attend()
    ours = count_with_flop_counter(attend)

    assert plain.get_total_flops() == 0
    assert ours.flops == 4 * batch * seq_len**2 * heads * head_dim


def test_attention_backward_is_five_products_for_sdpa_and_four_for_naive():
    batch, heads, seq_len, head_dim = 1, 2, 40, 8
    product = batch * heads * seq_len * seq_len * head_dim
    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, requires_grad=True) for _ in range(3))

    sdpa = count_with_flop_counter(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward())
    naive = count_with_flop_counter(lambda: ((q @ k.transpose(-1, -2)).softmax(-1) @ v).sum().backward())

    assert sdpa.macs == (2 + 5) * product
    assert naive.macs == (2 + 4) * product


def test_einsum_is_counted_exactly():
    # fvcore's own einsum handle rounds to 4 significant figures (15015 would read 1.502e4).
    a, b = torch.randn(3, 5, 7, 11), torch.randn(3, 5, 13, 11)

    class Contract(torch.nn.Module):
        def forward(self, a, b):
            return torch.einsum("bhnd,bhmd->bhnm", a, b)

    expected = 3 * 5 * 7 * 13 * 11
    assert count_with_fvcore(Contract(), a, b).macs_by_op == {"einsum": expected}
    assert count_with_flop_counter(lambda: torch.einsum("bhnd,bhmd->bhnm", a, b)).macs == expected

    class ThreeOperands(torch.nn.Module):
        def forward(self, a, b, c):
            return torch.einsum("ij,jk,kl->il", a, b, c)

    # Its cost depends on the contraction order, not on the shapes: reported, not guessed.
    three = count_with_fvcore(ThreeOperands(), torch.randn(2, 3), torch.randn(3, 4), torch.randn(4, 5))
    assert three.uncounted_ops == {"einsum": 1}


def test_triangular_solve_by_hand():
    # Forward substitution on a 4 x 4 system: 0 + 1 + 2 + 3 = 6 MACs per right-hand side.
    assert triangular_solve_macs([4, 4], [4, 5]) == 6 * 5
    assert triangular_solve_macs([2, 4, 4], [4, 5]) == 2 * 6 * 5
    assert triangular_solve_macs([4, 4], [5, 4], left=False) == 6 * 5
    a = torch.eye(4) + torch.randn(4, 4).tril(-1)
    solve = lambda: torch.linalg.solve_triangular(a, torch.randn(4, 5), upper=False, unitriangular=True)
    assert count_with_flop_counter(solve).macs == 30


def test_an_op_without_a_rule_is_reported_by_name():
    x = torch.randn(6, 6)

    class Inverse(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.inv(x) @ x

    by_fvcore = count_with_fvcore(Inverse(), x)
    by_flop_counter = count_with_flop_counter(lambda: Inverse()(x))

    assert "linalg_inv_ex" in by_flop_counter.uncounted_ops
    assert "linalg_inv" in by_fvcore.uncounted_ops
    # The product next to it is still counted, and elementwise work is listed, not dropped.
    assert by_fvcore.macs == by_flop_counter.macs == 6 * 6 * 6
    assert "mul" in count_with_flop_counter(lambda: x * 2).not_matmul_ops


def test_custom_autograd_function_is_counted_inside():
    # fvcore sees a custom autograd.Function as one node; the count reads the graph traced inside it.
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a @ a

        @staticmethod
        def backward(ctx, grad):
            (a,) = ctx.saved_tensors
            return grad @ a.T + a.T @ grad

    class UsesSquare(torch.nn.Module):
        def forward(self, a):
            return Square.apply(a) + 1

    a = torch.randn(5, 5, requires_grad=True)
    assert count_with_fvcore(UsesSquare(), a).macs == 125
    assert count_with_flop_counter(lambda: UsesSquare()(a).sum().backward()).macs == 3 * 125


def test_policy_classes_do_not_overlap():
    for name in MATMUL_OPS:
        assert not is_not_matmul(name), name
    elementwise = ("add", "add_", "mul", "exp", "sum", "view", "transpose", "native_layer_norm_backward", "cumsum",
                   "copy_")
    for name in elementwise:
        assert is_not_matmul(name), name


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION"])
def test_cuda_sdpa_backends_are_counted(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batch, heads, seq_len, head_dim = 2, 4, 256, 64
    q, k, v = (
        torch.randn(batch, heads, seq_len, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )
    with sdpa_kernel(getattr(SDPBackend, backend)):
        forward = count_with_flop_counter(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        forward_backward = count_with_flop_counter(
            lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
        )
    assert forward.flops == 4 * batch * seq_len**2 * heads * head_dim
    assert forward_backward.macs == (2 + 5) * batch * heads * seq_len**2 * head_dim
    assert forward.uncounted_ops == {} and forward_backward.uncounted_ops == {}
