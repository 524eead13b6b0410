"""Everything measured about one layer at one size, as one row: FLOPs counted three ways, memory and
wall-clock, forward and forward+backward. A cell that fails is a row with its status, never an exception.

Forward+backward: forward, a loss that is the output times a fixed random projection (so every output
element carries a distinct gradient), backward into the input and the parameters. Forward: the same
forward with autograd recording, as in training, so its peak holds what backward will need. Prefill and
decode, the inference passes: profile/inference.py. How the layer runs (eager or compiled, amp): profile/backend.py.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ttt_bench import layers
from ttt_bench.layers.base import LayerCost
from ttt_bench.profile.backend import autocast_context, check_compiled, compiled_error, layer_forms
from ttt_bench.profile.flops import count_with_flop_counter, count_with_fvcore
from ttt_bench.profile.inference import DecodeSettings, InferenceWorkload
from ttt_bench.profile.memory import measure_cuda_peak_bytes, measure_peak_bytes, nvml_device_info
from ttt_bench.profile.op_time import profile_op_time
from ttt_bench.profile.timing import Timing, clock_for, time_callable, time_interleaved, timing_of, wall_ms
from ttt_bench.results import ALL_PASSES, INFERENCE_PASSES, MEASUREMENT_OF_PASS, NOISY_SPREAD, PASSES

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The columns each pass fills, prefixed by the pass in measure_cell's row ('fwd_ms', 'decode_state_bytes'); a
# pass's own status and message, where set, stand for that pass alone (a decode a layer cannot do is 'skipped').
PASS_COLUMNS = (
    "macs", "flops", "useful_macs", "useful_flops", "macs_per_token", "macs_fvcore", "macs_flop_counter",
    "peak_bytes", "cuda_peak_bytes", "ms", "p20_ms", "p80_ms", "repeats", "spread", "noisy", "tokens_per_s",
    "tflops_per_s", "tokens_per_sample", "state_bytes", "state_bytes_stated", "compile_s", "compile_error",
    "eager_time_ms", "compile_speedup", "compile_speedup_spread", "profiled_time_ms", "matmul_time_ms",
    "other_time_ms", "matmul_time_share", "ops_per_call", "status", "message",
)
# Every column measure_cell can fill, in order; a column a cell did not reach is left empty (NaN).
ROW_COLUMNS = [
    "layer", "seq_len", "batch", "d_model", "n_heads", "head_dim", "dtype", "device", "seed", "backend", "amp",
    "status", "message", "final_state_macs", "state_numel", "uncounted_ops", "nvml_used_bytes",
    *(f"{p}_{column}" for p in ALL_PASSES for column in PASS_COLUMNS),
]


@dataclass(frozen=True)
class Cell:
    """One configuration to measure."""

    layer: str  # a registered layer name
    seq_len: int  # N
    batch: int = 1  # B
    d_model: int = 256  # D
    n_heads: int = 4  # H
    dtype: str = "float32"  # a key of DTYPES
    device: str = "cpu"  # 'cpu', 'cuda' or 'cuda:<i>'
    overrides: dict[str, Any] = field(default_factory=dict)  # layer knobs on top of the variant's
    seed: int = 0  # seeds the layer's initial weights and the inputs
    backend: str = "eager"  # 'eager' or 'compile' (profile/backend.py)
    amp: bool = False  # autocast to `dtype` with float32 weights, instead of casting the layer to `dtype`

    def config_columns(self) -> dict[str, object]:
        return {
            "layer": self.layer, "seq_len": self.seq_len, "batch": self.batch, "d_model": self.d_model,
            "n_heads": self.n_heads, "head_dim": self.d_model // self.n_heads, "dtype": self.dtype,
            "device": self.device, "seed": self.seed, "backend": self.backend, "amp": self.amp,
        }

    @property
    def weights_dtype(self) -> torch.dtype:
        """What the layer and its inputs are cast to: float32 under amp (autocast lowers each op), else dtype."""
        return torch.float32 if self.amp else _dtype(self.dtype)


@dataclass(frozen=True)
class TimingBudget:
    """How long each timing of a cell may run: a probe call decides how many repeats a slow cell gets."""

    min_total_s: float
    min_repeats: int
    slow_call_s: float  # a probe call longer than this gets `slow_min_repeats` repeats
    slow_min_repeats: int
    max_repeats: int = 50

    def repeats_for(self, probe_s: float) -> int:
        return self.slow_min_repeats if probe_s > self.slow_call_s else self.min_repeats


class Workload:
    """A cell's layer on its device, its inputs x [B, N, D] and loss projection (built here, outside every
    timed region), and the two calls that are measured, `calls[pass]` (the module docstring says what they do),
    through the cell's backend and under its autocast. measure_cell and the asv benchmarks (suites/benchmarks.py)
    measure the same workload."""

    def __init__(self, cell: Cell, layer: torch.nn.Module) -> None:
        device, dtype = torch.device(cell.device), cell.weights_dtype
        self.layer = layer = layer.to(device=device, dtype=dtype)
        self.x = x = torch.randn(cell.batch, cell.seq_len, cell.d_model, device=device, dtype=dtype,
                                 requires_grad=True)
        self.context = context = autocast_context(device, _dtype(cell.dtype), cell.amp)
        self.forms = forms = layer_forms(layer, cell.backend)
        forward = forms["forward"]
        projection = torch.randn_like(x, requires_grad=False)

        def forward_backward() -> None:
            with context():
                loss = (forward(x) * projection).sum()
            loss.backward()

        def forward_only() -> torch.Tensor:
            with context():
                return forward(x)

        self.calls: dict[str, Callable[[], Any]] = {"fwd": forward_only, "fwd_bwd": forward_backward}

    @classmethod
    def build(cls, cell: Cell) -> Workload:
        """The cell's layer built from the registry, seeded by the cell as `measure_cell` seeds it."""
        torch.manual_seed(cell.seed)
        return cls(cell, layers.build(cell.layer, d_model=cell.d_model, n_heads=cell.n_heads, **cell.overrides))

    def zero_grads(self) -> None:
        """Drop the gradients a forward+backward left, so the next call allocates them again as the first did."""
        self.x.grad = None
        self.layer.zero_grad(set_to_none=True)


# What measure_cell can collect; the analytic cost is always there. op_time (where a call's time goes: matrix
# products, other operators, operators launched; profile/op_time.py) is asked for by name: a suite that lists no
# metrics gets DEFAULT_METRICS.
METRICS = ("flops", "memory", "time", "op_time")
DEFAULT_METRICS = ("flops", "memory", "time")

FULL_BUDGET = TimingBudget(min_total_s=0.5, min_repeats=5, slow_call_s=1.0, slow_min_repeats=3)
QUICK_BUDGET = TimingBudget(min_total_s=0.2, min_repeats=3, slow_call_s=0.5, slow_min_repeats=2)


def measure_cell(
    cell: Cell,
    budget: TimingBudget = FULL_BUDGET,
    *,
    memory_budget_bytes: int | None = None,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    passes: tuple[str, ...] = PASSES,
    skip_reason: str | None = None,
    decode: DecodeSettings | None = None,
) -> dict[str, object]:
    """One row for `cell`. Order: analytic cost, the compiled passes' first calls (backend 'compile'), tracked
    memory (a budget overrun ends the cell early as 'oom'), the counted FLOPs (fvcore traces a token loop slowly),
    CUDA memory, the decode state, timings, then the operator profile (after the timings, so its profiler never
    touches a timed call); of these, the `metrics` asked for, for the `passes` asked for (the counted FLOPs always
    take both training passes). Prefill and decode: profile/inference.py.

    With `memory_budget_bytes` the tracker raises torch.OutOfMemoryError above it on any device; on CUDA
    the allocator is also capped there for the cell (`set_per_process_memory_fraction`), then restored.
    `skip_reason` records the cell as 'skipped' with its analytic cost only. Tracked memory, counted FLOPs and the
    operator profile are measured on eager cells only: inductor's kernels allocate and compute outside the
    dispatcher they follow, and the profiler sees no operator inside them.
    """
    row: dict[str, object] = {**cell.config_columns(), "status": "ok", "message": ""}
    decode = decode or DecodeSettings()
    capped = False
    try:
        _check_subset("metrics", metrics, METRICS)
        _check_subset("passes", passes, ALL_PASSES)
        device = torch.device(cell.device)
        _dtype(cell.dtype)  # a dtype that is not allowed fails before the layer is built
        torch.manual_seed(cell.seed)
        layer = layers.build(cell.layer, d_model=cell.d_model, n_heads=cell.n_heads, **cell.overrides)
        row.update(analytic_columns(layer.cost(cell.batch, cell.seq_len), passes))
        if skip_reason is not None:
            row.update(status="skipped", message=skip_reason)
            return row
        if device.type == "cuda" and memory_budget_bytes is not None:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, memory_budget_bytes / total), device)
            capped = True
        work = Workload(cell, layer)
        layer, x, zero_grads = work.layer, work.x, work.zero_grads
        inference = InferenceWorkload(layer, x, work.forms, decode, work.context)
        calls = {**work.calls, "prefill": inference.prefill}
        passes = _passes_that_run(passes, layer, row)
        eager = cell.backend == "eager"

        if not eager:
            for name in passes:
                row.update(_first_compiled_call(name, work, inference, _dtype(cell.dtype)))
        if "memory" in metrics and eager:
            for name in passes:
                zero_grads()
                row[f"{name}_peak_bytes"] = measure_peak_bytes(_whole_pass(name, calls, inference),
                                                               budget_bytes=memory_budget_bytes)
        if "flops" in metrics and eager:
            row.update(counted_columns(layer, x, calls))
        if "memory" in metrics and device.type == "cuda":
            for name in passes:
                zero_grads()
                row[f"{name}_cuda_peak_bytes"] = measure_cuda_peak_bytes(_whole_pass(name, calls, inference),
                                                                         device=device)
        for name in passes:
            if name in INFERENCE_PASSES:
                row.update(_state_columns(name, layer, inference, cell))
        if "time" in metrics:
            # A compiled cell times eager forms of the same layer too, interleaved round by round with the compiled
            # ones: cells measured apart drift by more than the speed-ups compiling gives.
            twin = None if eager else Workload(dataclasses.replace(cell, backend="eager"), layer)
            twin_inference = None if eager else InferenceWorkload(layer, twin.x, twin.forms, decode, twin.context)
            for name in passes:
                tokens = cell.batch if name == "decode" else cell.batch * cell.seq_len
                flops = None if name == "decode" else row[f"{name}_flops"]
                if eager and name == "decode":
                    timing, group = timed_decode(inference, decode.samples, device)
                    row[f"{name}_tokens_per_sample"] = group
                elif eager:
                    timing = timed_with_probe(calls[name], zero_grads, budget, device)
                else:
                    timing, columns = timed_against_eager(name, (work, inference), (twin, twin_inference), budget,
                                                          decode.samples, device)
                    row.update(columns)
                row.update(timing_columns(name, timing, tokens, flops))
        if "op_time" in metrics and eager:
            for name in passes:
                row.update(op_time_columns(name, calls[name] if name != "decode" else None, zero_grads, inference,
                                           row, device))
        if device.type == "cuda":
            nvml = nvml_device_info(device)
            row["nvml_used_bytes"] = nvml["used_bytes"] if nvml else None
    except Exception as error:  # a cell's failure is a result, not the end of the sweep
        row.update(status="oom" if is_out_of_memory(error) else "error", message=first_line(error))
    finally:
        if capped:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    release_memory(cell.device)
    return row


def _passes_that_run(passes: tuple[str, ...], layer: torch.nn.Module, row: dict[str, object]) -> tuple[str, ...]:
    """`passes` less a decode the layer cannot do, which is recorded as skipped with the reason."""
    if "decode" not in passes or layer.decodes:
        return passes
    row.update(decode_status="skipped", decode_message=f"no token-by-token decoding: {layer.no_decode_reason}")
    return tuple(name for name in passes if name != "decode")


def _whole_pass(name: str, calls: dict[str, Callable[[], Any]], inference: InferenceWorkload) -> Callable[[], Any]:
    """What a pass's memory is measured over: its call, except decode's, which is the chunked prefill of the prompt
    and the generated tokens after it (and leaves their state for the timed steps)."""
    return inference.prefill_and_decode if name == "decode" else calls[name]


def _first_compiled_call(name: str, work: Workload, inference: InferenceWorkload,
                         dtype: torch.dtype) -> dict[str, object]:
    """Compile the pass by calling it once (timed on its own, as compile_s), then check the compiled outputs against
    eager's on the same input: CompiledMismatch if they differ. Decode compiles on a prefilled state."""
    start = time.perf_counter()
    if name == "decode":
        inference.state = state = inference.prefill_in_chunks()
        compiled = inference.step()
        compile_s = time.perf_counter() - start
        with torch.inference_mode(), work.context():
            eager = work.layer.decode(inference.token, state)[0]
    elif name == "prefill":
        compiled = inference.prefill()
        compile_s = time.perf_counter() - start
        with torch.inference_mode(), work.context():
            eager = work.layer.decode(inference.x, None) if inference.decodes else work.layer(inference.x)
    else:
        work.zero_grads()
        work.calls[name]()
        compile_s = time.perf_counter() - start
        with torch.no_grad(), work.context():
            compiled, eager = work.forms["forward"](work.x), work.layer(work.x)
    error = compiled_error(compiled, eager)
    check_compiled(MEASUREMENT_OF_PASS[name].replace("_", "+"), error, dtype)
    return {f"{name}_compile_s": compile_s, f"{name}_compile_error": error}


def _state_columns(name: str, layer: torch.nn.Module, inference: InferenceWorkload, cell: Cell) -> dict[str, object]:
    """The state after the prompt of N tokens: measured from its tensors, and as the layer states it. Taken from the
    pass's calls so far (the memory pass, a compiled pass's first call), with one call made where none was."""
    if not inference.decodes:
        return {}
    if name == "prefill":
        if inference.prefill_state is None:
            inference.prefill()
        tokens, nbytes = inference.prefill_state
    else:
        if inference.state is None:
            inference.state = inference.prefill_in_chunks()
        tokens, nbytes = inference.prompt_state
    element_size = torch.empty((), dtype=cell.weights_dtype).element_size()
    return {f"{name}_state_bytes": nbytes,
            f"{name}_state_bytes_stated": layer.decode_state_numel(cell.batch, tokens) * element_size}


def tidy_rows(row: dict[str, object], passes: tuple[str, ...] = PASSES) -> list[dict[str, object]]:
    """`row` (measure_cell's, one per cell) as one row per measurement, `measurement` naming the pass
    ('forward', 'forward_backward', 'prefill', 'decode'): a pass's prefixed columns lose their prefix (a pass's own
    status and message replace the cell's), the rest (config, status, state size, uncounted ops) is repeated in
    each. Every row has every per-pass column, empty (None) where the pass has no such value."""
    prefixes = tuple(f"{name}_" for name in ALL_PASSES)
    shared = {key: value for key, value in row.items() if not key.startswith(prefixes)}
    tidy = []
    for name in passes:
        per_pass = {_TIDY_RENAMES.get(column, column): row.get(f"{name}_{column}") for column in PASS_COLUMNS}
        status, message = per_pass.pop("status"), per_pass.pop("message")
        own = {} if status is None else {"status": status, "message": message}
        tidy.append({"measurement": MEASUREMENT_OF_PASS[name], **shared, **per_pass, **own})
    return tidy


# Tidy names of the per-pass columns whose short form would not say what they hold.
_TIDY_RENAMES = {"ms": "time_ms", "p20_ms": "time_p20_ms", "p80_ms": "time_p80_ms", "repeats": "time_repeats",
                 "spread": "time_spread"}


def analytic_columns(cost: LayerCost, passes: tuple[str, ...] = PASSES) -> dict[str, object]:
    """The layer's own formula: executed (dense) and useful (causal half) work, MACs and FLOPs named apart. The
    prefill runs the forward's products; a decode step's work is not stated by the layers."""
    columns: dict[str, object] = {
        "fwd_macs": cost.forward_macs,
        "fwd_flops": cost.forward_flops,
        "fwd_useful_macs": cost.useful_forward_macs,
        "fwd_useful_flops": cost.useful_forward_flops,
        "fwd_bwd_macs": cost.forward_backward_macs,
        "fwd_bwd_flops": cost.forward_backward_flops,
        "fwd_macs_per_token": cost.forward_macs_per_token,
        "fwd_bwd_macs_per_token": cost.forward_backward_macs_per_token,
        "final_state_macs": cost.final_state_macs,
        "state_numel": cost.state_numel,
    }
    if "prefill" in passes:
        columns |= {f"prefill_{key.removeprefix('fwd_')}": value for key, value in columns.items()
                    if key.startswith("fwd_") and not key.startswith("fwd_bwd_")}
    return columns


def counted_columns(layer: torch.nn.Module, x: torch.Tensor, calls: dict[str, Callable[[], Any]]) -> dict[str, object]:
    """fvcore (forward) and FlopCounterMode (both passes); ops either met without a rule, by name."""
    counts = {
        "fwd_macs_fvcore": count_with_fvcore(layer, x),
        "fwd_macs_flop_counter": count_with_flop_counter(calls["fwd"]),
        "fwd_bwd_macs_flop_counter": count_with_flop_counter(calls["fwd_bwd"]),
    }
    uncounted = sorted({f"{c.counter}:{op}" for c in counts.values() for op in c.uncounted_ops})
    return {**{column: count.macs for column, count in counts.items()}, "uncounted_ops": ";".join(uncounted)}


def op_time_columns(name: str, call: Callable[[], Any] | None, zero_grads: Callable[[], None],
                    inference: InferenceWorkload, row: dict[str, object], device: torch.device) -> dict[str, object]:
    """The pass under torch.profiler (profile/op_time.py): per call, or for decode per generated token over a sample
    of consecutive steps as timed_decode's (sized here where the cell was not timed). The pass's median time, where
    the cell has one, sizes the profiled calls; without it one untimed call warms the pass up first."""
    timed_ms = row.get(f"{name}_ms")
    if name == "decode":
        group = row.get(f"{name}_tokens_per_sample") or _decode_group(inference, device)
        op_time = profile_op_time(_steps(inference, group), device=device, per_call=group,
                                  call_ms=None if timed_ms is None else timed_ms * group)
    else:
        op_time = profile_op_time(call, device=device, setup=zero_grads, call_ms=timed_ms)
    return op_time.columns(name)


def timing_columns(name: str, timing: Timing, tokens: int, flops: int | None) -> dict[str, object]:
    seconds = timing.median_ms / 1000.0
    return {
        f"{name}_ms": timing.median_ms,
        f"{name}_p20_ms": timing.p20_ms,
        f"{name}_p80_ms": timing.p80_ms,
        f"{name}_repeats": timing.repeats,
        f"{name}_spread": timing.spread,
        f"{name}_noisy": timing.spread > NOISY_SPREAD,  # NaN compares False: a call too short to judge
        f"{name}_tokens_per_s": tokens / seconds,
        # Achieved, from the analytic (dense) FLOPs; none for a decode step, whose work the layers do not state.
        f"{name}_tflops_per_s": None if flops is None else flops / seconds / 1e12,
    }


# A timed sample of decoding lasts at least this long: a step of a small recurrent layer takes ~0.1 ms on a CPU,
# where the timer's and the scheduler's jitter alone spread single calls by 1.5x.
MIN_DECODE_SAMPLE_MS = 1.0
PROBE_STEPS = 4  # untimed steps twice over: a warm-up, then the probe that sizes the samples


def timed_decode(inference: InferenceWorkload, samples: int, device: torch.device) -> tuple[Timing, int]:
    """Per generated token: `samples` timed samples, each a run of `group` consecutive steps from the kept state
    (group: enough steps for MIN_DECODE_SAMPLE_MS, from an untimed probe), divided by `group`."""
    group = _decode_group(inference, device)
    timing = time_callable(_steps(inference, group), warmup=0, min_total_s=0.0, min_repeats=samples,
                           max_repeats=samples, device=device)
    return Timing(timing.median_ms / group, timing.p20_ms / group, timing.p80_ms / group, timing.repeats), group


def _steps(inference: InferenceWorkload, group: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(group):
            inference.step()

    return run


def _decode_group(inference: InferenceWorkload, device: torch.device) -> int:
    """Steps per timed sample: enough for MIN_DECODE_SAMPLE_MS, from an untimed probe after a warm-up."""
    _steps(inference, PROBE_STEPS)()  # a first step can pay one-time costs
    probe_ms = clock_for(device)(_steps(inference, PROBE_STEPS)) / PROBE_STEPS
    return max(1, math.ceil(MIN_DECODE_SAMPLE_MS / max(probe_ms, 1e-6)))


def timed_against_eager(name: str, compiled: tuple[Workload, InferenceWorkload],
                        eager: tuple[Workload, InferenceWorkload], budget: TimingBudget, samples: int,
                        device: torch.device) -> tuple[Timing, dict[str, object]]:
    """A compiled pass and the same pass of the eager forms timed in interleaved rounds (timing.time_interleaved):
    the compiled timing, and the columns eager_time_ms and compile_speedup (the median over rounds of eager /
    compiled, with its p80/p20 spread). Decode: per token, in samples of consecutive steps as timed_decode's."""
    (work, inference), (twin, twin_inference) = compiled, eager
    per_call, setup, columns = 1, None, {}
    if name == "decode":
        if twin_inference.state is None:
            twin_inference.state = twin_inference.prefill_in_chunks()
        per_call = _decode_group(inference, device)
        _decode_group(twin_inference, device)  # the eager twin's warm-up
        fns, rounds = [_steps(inference, per_call), _steps(twin_inference, per_call)], samples
        columns[f"{name}_tokens_per_sample"] = per_call
    else:
        fns = ([inference.prefill, twin_inference.prefill] if name == "prefill"
               else [work.calls[name], twin.calls[name]])

        def setup() -> None:
            work.zero_grads()
            twin.zero_grads()

        setup()
        probe_s = clock_for(device)(fns[1]) / 1000.0  # the eager call's warm-up (the compiled one has run)
        rounds = min(budget.max_repeats, max(budget.repeats_for(probe_s), math.ceil(budget.min_total_s / probe_s)))
    times = time_interleaved(fns, rounds=rounds, device=device, setup=setup)
    compiled_ms, eager_ms = ([ms / per_call for ms in series] for series in times)
    ratios = timing_of([e / c for e, c in zip(eager_ms, compiled_ms)])
    columns |= {f"{name}_eager_time_ms": timing_of(eager_ms).median_ms, f"{name}_compile_speedup": ratios.median_ms,
                f"{name}_compile_speedup_spread": ratios.spread}
    return timing_of(compiled_ms), columns


def timed_with_probe(
    fn: Callable[[], object], setup: Callable[[], object], budget: TimingBudget, device: torch.device
) -> Timing:
    """One untimed probe call (the warm-up) decides the repeats, so a slow cell gets few of them."""
    setup()
    repeats = budget.repeats_for(wall_ms(fn, device) / 1000.0)
    return time_callable(
        fn, setup=setup, warmup=0, min_total_s=budget.min_total_s, min_repeats=repeats,
        max_repeats=max(repeats, budget.max_repeats), device=device,
    )


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    # The CPU allocator reports exhaustion as a plain RuntimeError.
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def first_line(error: BaseException, limit: int = 300) -> str:
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def release_memory(device: str | torch.device) -> None:
    """Free what a cell (or its failure's traceback cycles) held, so the next cell starts clean."""
    gc.collect()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _check_subset(name: str, given: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    unknown = [item for item in given if item not in allowed]
    if unknown:
        raise ValueError(f"{name}={list(given)!r}: {unknown} not known; choose among {list(allowed)}")


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not supported; choose one of {sorted(DTYPES)}")
    return DTYPES[name]
