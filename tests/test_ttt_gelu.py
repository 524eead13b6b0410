"""The GELU derivatives the inner loop and its hand-written backward use, against autograd in float64."""

import pytest
import torch
import torch.nn.functional as F

from ttt_bench.layers.ttt.gelu import APPROXIMATIONS, gelu, gelu_grad, gelu_grad2


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_gelu_derivatives_match_autograd(approximate):
    z = torch.linspace(-8.0, 8.0, 2001, dtype=torch.float64, requires_grad=True)
    first = torch.autograd.grad(F.gelu(z, approximate=approximate).sum(), z, create_graph=True)[0]
    second = torch.autograd.grad(first.sum(), z)[0]
    torch.testing.assert_close(gelu_grad(z, approximate), first, rtol=0, atol=1e-13)
    torch.testing.assert_close(gelu_grad2(z, approximate), second, rtol=0, atol=1e-13)


def test_the_two_forms_differ_by_the_documented_amount():
    # The tanh form is an approximation: a few 1e-4 at most on the real line, so a knob that changes real outputs.
    z = torch.linspace(-8.0, 8.0, 2001, dtype=torch.float64)
    gap = (gelu(z, "tanh") - gelu(z, "none")).abs().max().item()
    assert 1e-5 < gap < 1e-3
