"""The contract every registered layer keeps, as checks that run on any layer by name: the tests run them on the
registry's layers, `ttt-bench check mylayer.py` on a user's (docs/your-layer.md).

    build         it builds at d_model=16, n_heads=2, and every knob has a doc
    shapes        x: [B, N, D] -> [B, N, D] at N = 1 and 37, finite
    dtypes        float32 in, float32 out; float64 in, float64 out
    determinism   the same input under the same seed gives the same output, and so does a copy of its state_dict
    gradients     a loss on the output gives finite, nonzero gradients to the input and to every parameter
    causality     output t ignores inputs after t (a variant with causal=False must not ignore them)
    cost          cost(batch, seq_len) is a LayerCost of consistent MAC counts, linear in the batch
    flop-counter  the cost's MACs equal FlopCounterMode's count of what runs, forward and forward+backward
    fvcore        the cost's forward MACs (less final-state work) equal fvcore's count of the traced forward
    reference     the fast form equals the reference form its class declares (`reference_knobs`) on outputs and
                  every gradient, float64 to 1e-10 and float32 to 1e-4
    decode        causal layers: a prefill of k tokens then one step per token equals the forward (float64 to
                  1e-10) at N = 150 for k on and off a mini-batch or chunk boundary, a prompt prefilled in two
                  chunks too; the states agree, and the state holds the elements decode_state_numel(batch, N) states

Each check raises ContractViolation saying what was wrong, or CheckSkipped when it does not apply; it returns a
short note on what it compared. Both counts follow profile/op_policy.py, at N = 1, 37 and 100, within 1%.
"""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call

from ttt_bench import layers
from ttt_bench.layers.base import LayerCost
from ttt_bench.profile.flops import OpCount, count_with_flop_counter, count_with_fvcore
from ttt_bench.profile.measure import first_line

D_MODEL, N_HEADS = 16, 2  # small: every check of a built-in layer takes at most seconds on a CPU
COUNT_SEQ_LENS = (1, 37, 100)  # one token, and lengths that are not multiples of a chunk or mini-batch
AGREEMENT = 0.01  # relative; on the built-in layers the three counts are equal
REFERENCE_SEQ_LEN = 63
# Fast form against reference: float64 on the CPU is tight, float32 looser.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}


class ContractViolation(Exception):
    """A layer broke its contract; the message says how."""


class CheckSkipped(Exception):
    """The check does not apply to this layer; the message says why."""


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: normwise, so tiny entries do not blow it up."""
    if actual.shape != expected.shape:
        raise ContractViolation(f"shape {list(actual.shape)} != {list(expected.shape)}")
    if not torch.isfinite(actual).all():
        raise ContractViolation("non-finite values (NaN marks memory that was never written)")
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return ((actual - expected).abs().max() / scale).item()


def check_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    err = relative_error(actual, expected)
    if not err <= rtol:
        raise ContractViolation(f"{what}: relative error {err:.3e} > {rtol:.0e}")


def _flatten(result) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    return [tensor for item in result for tensor in _flatten(item)]


def check_forms_agree(
    fast: Callable[..., object], reference: Callable[..., object], inputs: dict[str, torch.Tensor], rtol: float,
) -> None:
    """Run both on copies of `inputs`; compare every returned tensor and the gradient of every input.

    Each form returns a tensor or a (nested) tuple of tensors, e.g. (output, final_state). The loss is a random
    projection of all of them, so every returned value's gradient path is checked.
    """
    results = {}
    for label, form in (("fast", fast), ("reference", reference)):
        leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
        results[label] = (leaves, _flatten(form(**leaves)))
    (fast_in, fast_out), (_, ref_out) = results["fast"], results["reference"]
    if len(fast_out) != len(ref_out):
        raise ContractViolation(f"fast returned {len(fast_out)} tensors, reference {len(ref_out)}")

    generator = torch.Generator().manual_seed(1234)
    weights = [torch.randn(o.shape, generator=generator, dtype=o.dtype) for o in ref_out]
    for i, (a, b) in enumerate(zip(fast_out, ref_out)):
        check_close(a.detach(), b.detach(), rtol, f"returned tensor {i}")

    grads = {}
    for label, (leaves, outs) in results.items():
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        wanted = [v for v in leaves.values() if v.requires_grad]
        grads[label] = torch.autograd.grad(loss, wanted, allow_unused=True)
    names = [k for k, v in fast_in.items() if v.requires_grad]
    for name, ga, gb in zip(names, grads["fast"], grads["reference"]):
        if gb is None:
            if ga is not None and ga.abs().any():
                raise ContractViolation(f"gradient of {name}: fast has one, reference has none")
            continue
        if ga is None:
            raise ContractViolation(f"gradient of {name}: reference has one, fast has none")
        check_close(ga, gb, rtol, f"gradient of {name}")


def nan_filled(factory: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`factory` (torch.empty, torch.empty_like) returning floating memory filled with NaN, so that an output a
    layer never writes shows as non-finite instead of as whatever the memory held."""

    def make(*args, **kwargs) -> torch.Tensor:
        tensor = factory(*args, **kwargs)
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    return make


UNINITIALISED_FACTORIES = ("empty", "empty_like")  # the torch functions whose memory nan_filled() fills


@contextmanager
def unwritten_memory_as_nan() -> Iterator[None]:
    real = {name: getattr(torch, name) for name in UNINITIALISED_FACTORIES}
    for name, factory in real.items():
        setattr(torch, name, nan_filled(factory))
    try:
        yield
    finally:
        for name, factory in real.items():
            setattr(torch, name, factory)


def small(name: str, dtype: torch.dtype = torch.float64, **overrides: Any) -> torch.nn.Module:
    """The variant at the checks' width, seeded, in `dtype`."""
    torch.manual_seed(0)
    return layers.build(name, d_model=D_MODEL, n_heads=N_HEADS, **overrides).to(dtype)


def _randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def check_build(name: str) -> str:
    small(name)
    undocumented = [knob.name for knob in layers.knobs(name) if not knob.doc]
    if undocumented:
        raise ContractViolation(f"knobs without a doc: {', '.join(undocumented)}; declare each with knob(default, doc)")
    return f"d_model={D_MODEL}, n_heads={N_HEADS}"


def check_shapes(name: str) -> str:
    layer = small(name)
    for seq_len in (1, 37):
        x = _randn(3, seq_len, D_MODEL, seed=seq_len)
        y = layer(x)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            got = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ContractViolation(f"input {list(x.shape)} gave {got}; a layer maps [B, N, D] -> [B, N, D]")
        if not torch.isfinite(y).all():
            raise ContractViolation(f"non-finite output at N={seq_len}")
    return "[3, N, 16] at N = 1, 37"


def check_dtypes(name: str) -> str:
    for dtype in (torch.float32, torch.float64):
        y = small(name, dtype)(_randn(2, 19, D_MODEL, dtype=dtype))
        if y.dtype != dtype:
            raise ContractViolation(f"{dtype} input gave a {y.dtype} output")
        if not torch.isfinite(y).all():
            raise ContractViolation(f"non-finite output in {dtype}")
    return "float32, float64"


def check_determinism(name: str) -> str:
    x = _randn(2, 19, D_MODEL)
    layer = small(name)
    torch.manual_seed(5)
    first = layer(x)
    torch.manual_seed(5)
    if not torch.equal(first, layer(x)):
        raise ContractViolation("two calls on the same input under the same seed differ")
    twin = small(name)
    twin.load_state_dict(layer.state_dict())
    torch.manual_seed(5)
    if not torch.equal(first, twin(x)):
        raise ContractViolation("a copy loaded with the layer's state_dict gives another output: some state is not "
                                "in the state_dict")
    return "same seed, same state_dict"


def check_gradients(name: str) -> str:
    layer = small(name)
    x = _randn(2, 21, D_MODEL).requires_grad_()
    (layer(x) * _randn(2, 21, D_MODEL, seed=1)).sum().backward()
    if x.grad is None or not torch.isfinite(x.grad).all() or not x.grad.abs().sum() > 0:
        raise ContractViolation("the input gets no finite, nonzero gradient")
    parameters = dict(layer.named_parameters())
    for parameter_name, parameter in parameters.items():
        if parameter.grad is None:
            raise ContractViolation(f"parameter {parameter_name} gets no gradient: unused, or detached from the output")
        if not torch.isfinite(parameter.grad).all():
            raise ContractViolation(f"parameter {parameter_name} gets a non-finite gradient")
        if not parameter.grad.abs().sum() > 0:
            raise ContractViolation(f"parameter {parameter_name} gets an all-zero gradient")
    return f"the input and {len(parameters)} parameters"


def check_causality(name: str) -> str:
    """Causal layers: output at t does not depend on inputs after t. Non-causal ones must depend."""
    layer = small(name)
    seq_len, t = 40, 17
    x = _randn(2, seq_len, D_MODEL)
    changed = x.clone()
    changed[:, t + 1:] += _randn(2, seq_len - t - 1, D_MODEL, seed=1)
    change = (layer(changed)[:, : t + 1] - layer(x)[:, : t + 1]).abs().max().item()
    if layers.is_causal(name):
        if change > 1e-12:
            raise ContractViolation(f"outputs at positions 0..{t} changed by {change:.2e} when only inputs after {t} "
                                    f"changed; a layer that sees the future needs a knob causal=False")
        return f"outputs 0..{t} unchanged by inputs after {t}"
    if not change > 1e-6:
        raise ContractViolation(f"it has causal=False but its outputs 0..{t} ignore the inputs after {t}")
    return f"causal=False: outputs 0..{t} depend on later inputs"


def check_cost(name: str) -> str:
    layer = small(name)
    batch, seq_len = 2, 64
    cost = layer.cost(batch, seq_len)
    if not isinstance(cost, LayerCost):
        raise ContractViolation(f"cost(batch, seq_len) returned a {type(cost).__name__}, not a LayerCost")
    counts = ("tokens", "forward_macs", "useful_forward_macs", "backward_macs", "final_state_macs")
    not_counts = [key for key in counts if not (isinstance(getattr(cost, key), numbers.Integral)
                                                and getattr(cost, key) >= 0)]
    if not_counts:
        raise ContractViolation(f"{', '.join(not_counts)} must be whole numbers >= 0 (MACs are counts: use //)")
    if cost.tokens != batch * seq_len:
        raise ContractViolation(f"tokens = {cost.tokens} at batch {batch}, seq_len {seq_len}; it is batch x seq_len")
    if not 0 < cost.useful_forward_macs <= cost.forward_macs:
        raise ContractViolation(f"useful_forward_macs = {cost.useful_forward_macs:,} must lie in (0, forward_macs = "
                                f"{cost.forward_macs:,}]")
    if not cost.final_state_macs < cost.forward_macs:
        raise ContractViolation("final_state_macs must be less than forward_macs (it is the part of the forward that "
                                "only makes the final state)")
    if cost.state_numel is not None and not (isinstance(cost.state_numel, numbers.Integral) and cost.state_numel > 0):
        raise ContractViolation(f"state_numel = {cost.state_numel!r}: a positive element count, or None without state")
    doubled = layer.cost(2 * batch, seq_len)
    if (doubled.forward_macs, doubled.backward_macs) != (2 * cost.forward_macs, 2 * cost.backward_macs):
        raise ContractViolation("twice the batch does not give twice the forward and backward MACs")
    return f"{cost.forward_macs:,} forward MACs at B={batch}, N={seq_len}"


def _count_mismatch(counter: str, what: str, seq_len: int, count: OpCount, stated: int) -> str | None:
    """Why `count` disagrees with the cost's `stated` MACs, or None when it agrees."""
    if count.uncounted_ops:
        return (f"at N={seq_len} {counter} met operators it has no rule for ({count.uncounted_ops}): their work "
                f"cannot be checked (ttt_bench/profile/op_policy.py)")
    if abs(count.macs - stated) <= AGREEMENT * abs(stated):
        return None
    change = f" ({(count.macs - stated) / stated:+.1%})" if stated else ""
    by_op = ", ".join(f"{op} {macs:,}" for op, macs in sorted(count.macs_by_op.items()))
    return (f"at N={seq_len} {what}: {counter} counted {count.macs:,} MACs ({by_op or 'none'}), cost() states "
            f"{stated:,}{change}")


def _counted_layer(name: str, seq_len: int):
    """(layer, x: [2, seq_len, D] requiring grad, the layer's cost at that size), float32 as a run measures it."""
    batch = 2
    layer = small(name, torch.float32)
    x = _randn(batch, seq_len, D_MODEL, dtype=torch.float32).requires_grad_()
    return layer, x, layer.cost(batch, seq_len)


def flop_counter_mismatch(name: str, seq_len: int) -> str | None:
    """Why FlopCounterMode's count of what runs (forward, forward+backward) disagrees with the cost; None: it agrees."""
    layer, x, cost = _counted_layer(name, seq_len)
    forward = count_with_flop_counter(lambda: layer(x))
    forward_backward = count_with_flop_counter(lambda: layer(x).sum().backward())
    return (_count_mismatch("FlopCounterMode", "forward", seq_len, forward, cost.forward_macs)
            or _count_mismatch("FlopCounterMode", "forward+backward", seq_len, forward_backward,
                               cost.forward_backward_macs))


def fvcore_mismatch(name: str, seq_len: int) -> str | None:
    """Why fvcore's count of the traced forward disagrees with the cost; None: it agrees."""
    layer, x, cost = _counted_layer(name, seq_len)
    # fvcore counts the traced graph, which drops the work only the final state needs.
    return _count_mismatch("fvcore", "forward less final_state_macs", seq_len, count_with_fvcore(layer, x),
                           cost.forward_macs - cost.final_state_macs)


def _agrees_at_every_length(name: str, mismatch: Callable[[str, int], str | None]) -> str:
    for seq_len in COUNT_SEQ_LENS:
        why = mismatch(name, seq_len)
        if why:
            raise ContractViolation(why)
    return f"N = {', '.join(map(str, COUNT_SEQ_LENS))}"


def check_flop_counter(name: str) -> str:
    return f"forward and forward+backward at {_agrees_at_every_length(name, flop_counter_mismatch)}"


def check_fvcore(name: str) -> str:
    return f"forward at {_agrees_at_every_length(name, fvcore_mismatch)}"


def _reference_knobs(name: str) -> dict[str, Any]:
    """The knobs that make `name`'s reference form; CheckSkipped when its class declares none or it is one."""
    knobs = layers.variant(name).layer_cls.reference_knobs
    if not knobs:
        raise CheckSkipped("no reference declared (reference_knobs on the class, docs/your-layer.md)")
    try:
        reference = layers.config(name, d_model=D_MODEL, n_heads=N_HEADS, **knobs)
    except ValueError as error:
        raise ContractViolation(f"reference_knobs {knobs} do not make a valid config: {error}") from None
    if reference == layers.config(name, d_model=D_MODEL, n_heads=N_HEADS):
        raise CheckSkipped(f"it is its own reference form ({_settings(knobs)})")
    return dict(knobs)


def check_reference(name: str) -> str:
    knobs = _reference_knobs(name)
    for dtype in (torch.float64, torch.float32):
        fast, reference = small(name, dtype), small(name, dtype, **knobs)
        try:
            reference.load_state_dict(fast.state_dict())
        except RuntimeError as error:
            raise ContractViolation(f"the reference form ({_settings(knobs)}) holds other parameters than the fast "
                                    f"form: {first_line(error)}") from None
        inputs = {"x": _randn(2, REFERENCE_SEQ_LEN, D_MODEL, dtype=dtype, seed=7), **dict(fast.named_parameters())}

        def form(layer: torch.nn.Module) -> Callable[..., torch.Tensor]:
            return lambda x, **parameters: functional_call(layer, parameters, (x,))

        try:
            check_forms_agree(form(fast), form(reference), inputs, RTOL[dtype])
        except ContractViolation as error:
            raise ContractViolation(f"{dtype} at N={REFERENCE_SEQ_LEN}, against {_settings(knobs)}: {error}") from None
    return f"against {_settings(knobs)}, float64 and float32"


DECODE_SEQ_LEN = 150
# On and off the boundaries of a TTT mini-batch of 16 and of a chunk of 64 (the built-in defaults), and of 4 and 8.
DECODE_PREFIXES = (1, 16, 17, 64, 65, 129, 149)


def check_decode(name: str) -> str:
    layer = small(name)
    if not layer.decodes:
        raise CheckSkipped(f"no decoding: {layer.no_decode_reason}")
    batch, n = 2, DECODE_SEQ_LEN
    x = _randn(batch, n, D_MODEL, seed=11)
    with torch.inference_mode():
        expected = layer(x)
        _, whole_state = layer.prefill(x)
        _check_state_size(layer, whole_state, batch, n)
        for k in DECODE_PREFIXES:
            outputs, state = _prefill_then_step(layer, x, k)
            check_close(torch.cat(outputs, dim=1), expected, RTOL[torch.float64],
                        f"prefill of {k} tokens then {n - k} steps, against the forward")
            _check_states_agree(state, whole_state, f"the state after prefill of {k} tokens and {n - k} steps")
        split = DECODE_PREFIXES[2]
        first, state = layer.prefill(x[:, :split])
        rest, state = layer.prefill(x[:, split:], state)
        check_close(torch.cat([first, rest], dim=1), expected, RTOL[torch.float64],
                    f"a prompt prefilled in two chunks ({split} + {n - split} tokens)")
        _check_states_agree(state, whole_state, "the state after a prompt prefilled in two chunks")
    return f"prefill of k in {DECODE_PREFIXES} tokens then steps to N={n}; state {whole_state.numel:,} elements"


def _prefill_then_step(layer, x: torch.Tensor, k: int) -> tuple[list[torch.Tensor], Any]:
    y, state = layer.prefill(x[:, :k])
    outputs = [y]
    for t in range(k, x.shape[1]):
        y_t, state = layer.step(x[:, t : t + 1], state)
        outputs.append(y_t)
    return outputs, state


def _check_state_size(layer, state, batch: int, context: int) -> None:
    if state.tokens != context:
        raise ContractViolation(f"the state after {context} tokens says it read {state.tokens}")
    stated = layer.decode_state_numel(batch, context)
    if state.numel != stated:
        raise ContractViolation(f"the state after {context} tokens holds {state.numel:,} elements; "
                                f"decode_state_numel({batch}, {context}) states {stated:,}")


def _check_states_agree(actual, expected, what: str) -> None:
    mine, theirs = actual.tensors(), expected.tensors()
    if len(mine) != len(theirs):
        raise ContractViolation(f"{what} holds {len(mine)} tensors; the prefill's holds {len(theirs)}")
    for i, (a, b) in enumerate(zip(mine, theirs)):
        check_close(a, b, RTOL[torch.float64], f"{what}, tensor {i}, against a prefill of all the tokens")


def _settings(knobs: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in knobs.items())


CHECKS: dict[str, Callable[[str], str]] = {
    "build": check_build, "shapes": check_shapes, "dtypes": check_dtypes, "determinism": check_determinism,
    "gradients": check_gradients, "causality": check_causality, "cost": check_cost,
    "flop-counter": check_flop_counter, "fvcore": check_fvcore, "reference": check_reference,
    "decode": check_decode,
}

PASSED, FAILED, SKIPPED, NOT_RUN = "passed", "FAILED", "skipped", "not run"


@dataclass(frozen=True)
class CheckResult:
    layer: str
    check: str  # a key of CHECKS
    outcome: str  # PASSED, FAILED, SKIPPED or NOT_RUN
    detail: str  # what was compared, or why it failed or did not apply

    def line(self, layer_width: int) -> str:
        return f"{self.layer:{layer_width}}  {self.check:12}  {self.outcome}{': ' if self.detail else ''}{self.detail}"


def run_checks(name: str) -> Iterator[CheckResult]:
    """Every check on layer `name`, in order, with unwritten memory as NaN; a layer that does not build gets
    none of the others."""
    with unwritten_memory_as_nan():
        for check in CHECKS:
            result = run_check(name, check)
            yield result
            if check == "build" and result.outcome == FAILED:
                yield from (CheckResult(name, rest, NOT_RUN, "it does not build") for rest in CHECKS if rest != check)
                return


def run_check(name: str, check: str) -> CheckResult:
    try:
        return CheckResult(name, check, PASSED, CHECKS[check](name))
    except CheckSkipped as why:
        return CheckResult(name, check, SKIPPED, str(why))
    except ContractViolation as error:
        return CheckResult(name, check, FAILED, str(error))
    except Exception as error:  # a layer's failure of any kind is that check's finding
        return CheckResult(name, check, FAILED, first_line(error))


def summary(results: list[CheckResult]) -> str:
    """The last line of `ttt-bench check`: how many checks ended how, and which failed."""
    layer_count = len({result.layer for result in results})
    outcomes = Counter(result.outcome for result in results)
    counts = ", ".join(f"{outcomes[outcome]} {outcome}" for outcome in (PASSED, FAILED, SKIPPED, NOT_RUN)
                       if outcomes[outcome])
    failed = ", ".join(f"{result.layer} {result.check}" for result in results if result.outcome == FAILED)
    return (f"{layer_count} layer{'s' * (layer_count != 1)}, {len(results)} checks: {counts}"
            + (f"; failed: {failed}" if failed else ""))
