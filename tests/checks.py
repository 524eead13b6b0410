"""Shared checks: a fast form against its reference on outputs, final state and every gradient; and
suite files written for a test."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import torch

# Relative tolerances of the issue: float64 on CPU is tight, float32 looser.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: normwise, so tiny entries do not blow it up."""
    assert actual.shape == expected.shape, f"shape {list(actual.shape)} != {list(expected.shape)}"
    assert torch.isfinite(actual).all(), "non-finite values (NaN marks memory that was never written)"
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return ((actual - expected).abs().max() / scale).item()


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    err = rel_err(actual, expected)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.0e}"


def _flatten(result) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    out: list[torch.Tensor] = []
    for item in result:
        out.extend(_flatten(item))
    return out


def assert_forms_agree(
    fast: Callable[..., object],
    reference: Callable[..., object],
    inputs: dict[str, torch.Tensor],
    rtol: float,
) -> None:
    """Run both on copies of `inputs`; compare every returned tensor and the gradient of every input.

    Each form returns a tensor or a (nested) tuple of tensors, e.g. (output, final_state). The loss
    is a random projection of all of them, so every returned value's gradient path is checked.
    """
    results = {}
    for label, fn in (("fast", fast), ("reference", reference)):
        leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
        outs = _flatten(fn(**leaves))
        results[label] = (leaves, outs)
    (fast_in, fast_out), (_, ref_out) = results["fast"], results["reference"]
    assert len(fast_out) == len(ref_out), f"fast returned {len(fast_out)} tensors, reference {len(ref_out)}"

    generator = torch.Generator().manual_seed(1234)
    weights = [torch.randn(o.shape, generator=generator, dtype=o.dtype) for o in ref_out]
    for i, (a, b) in enumerate(zip(fast_out, ref_out)):
        assert_rel_close(a.detach(), b.detach(), rtol, f"returned tensor {i}")

    grads = {}
    for label, (leaves, outs) in results.items():
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        wanted = [v for v in leaves.values() if v.requires_grad]
        grads[label] = torch.autograd.grad(loss, wanted, allow_unused=True)
    names = [k for k, v in fast_in.items() if v.requires_grad]
    for name, ga, gb in zip(names, grads["fast"], grads["reference"]):
        if gb is None:
            assert ga is None or not ga.abs().any(), f"gradient of {name}: fast has one, reference has none"
            continue
        assert ga is not None, f"gradient of {name}: reference has one, fast has none"
        assert_rel_close(ga, gb, rtol, f"gradient of {name}")


def nan_filled_empty(monkeypatch) -> None:
    """Make torch.empty / empty_like return NaN-filled memory, so an unwritten output is caught."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def empty_like(*args, **kwargs):
        t = real_empty_like(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)


def write_suite(folder: Path, text: str, name: str = "suite.toml") -> Path:
    """`text` (indented as in the test's source) as a suite file in `folder`."""
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path
