"""Time and memory of every registered layer across sequence lengths, on the CPU in fp32.

    python suites/layer_bench.py --quick --out /tmp/lb
    python suites/layer_bench.py --layers ttt-linear,attention-sdpa --seq-lens 1024,4096 --out results/lb

For each (layer, N): forward+backward and forward-only wall-clock (median, p20, p80) and the peak
tracked tensor bytes of forward+backward. Writes OUT/layer_bench.csv (one row per layer and N) and
OUT/layer_bench.md (the table, log-log exponents of memory and time against N, and the targets),
and prints the markdown. A failing cell records its status and message; the sweep goes on.
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ttt_bench import layers
from ttt_bench.profile.memory import measure_peak_bytes
from ttt_bench.profile.timing import Timing, time_callable

DEFAULT_SEQ_LENS = (1024, 2048, 4096, 8192, 16384)
QUICK_SEQ_LENS = (256, 1024, 4096)
EXPONENT_SEQ_LEN_RANGE = (1024, 16384)
TARGET_SEQ_LEN = 4096
NAIVE_ATTENTION_MAX_SEQ_LEN = 8192
TOKEN_LOOP_MAX_SEQ_LEN = 4096
LINEAR_EXPONENT_MAX = 1.1
QUADRATIC_EXPONENT_RANGE = (1.8, 2.2)
MiB = 2**20

COLUMNS = [
    "layer", "seq_len", "batch", "d_model", "n_heads", "head_dim", "dtype", "device", "threads",
    "status", "message",
    "fwd_ms", "fwd_p20_ms", "fwd_p80_ms",
    "fwd_bwd_ms", "fwd_bwd_p20_ms", "fwd_bwd_p80_ms",
    "peak_bytes_fwd_bwd", "analytic_fwd_flops",
]


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


FULL_BUDGET = TimingBudget(min_total_s=0.5, min_repeats=5, slow_call_s=1.0, slow_min_repeats=3)
QUICK_BUDGET = TimingBudget(min_total_s=0.2, min_repeats=3, slow_call_s=0.5, slow_min_repeats=2)


@dataclass(frozen=True)
class Shape:
    batch: int
    n_heads: int
    head_dim: int

    @property
    def d_model(self) -> int:
        return self.n_heads * self.head_dim


def skip_reason(layer: str, seq_len: int) -> str | None:
    """Why a cell is not run on a 2-core, 24 GiB CPU machine, or None when it is run."""
    if layer.startswith("attention-naive") and seq_len > NAIVE_ATTENTION_MAX_SEQ_LEN:
        return (
            f"materialises the N x N score matrix: N > {NAIVE_ATTENTION_MAX_SEQ_LEN} does not fit "
            f"(about 13 GB at N = 16384)"
        )
    if layer.endswith("-primal") and seq_len > TOKEN_LOOP_MAX_SEQ_LEN:
        return f"token-by-token loop: N > {TOKEN_LOOP_MAX_SEQ_LEN} takes too long on the CPU"
    return None


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


def timing_columns(prefix: str, timing: Timing) -> dict[str, float]:
    return {f"{prefix}_ms": timing.median_ms, f"{prefix}_p20_ms": timing.p20_ms, f"{prefix}_p80_ms": timing.p80_ms}


def analytic_forward_flops(layer: torch.nn.Module, batch: int, seq_len: int) -> float:
    try:
        return float(layer.cost(batch, seq_len).forward_flops)
    except NotImplementedError:
        return math.nan


def timed_with_probe(fn: Callable[[], object], setup: Callable[[], object], budget: TimingBudget) -> Timing:
    """One untimed probe call (the warm-up) decides the repeats, so a slow cell gets few of them."""
    setup()
    start = time.perf_counter()
    fn()
    probe_s = time.perf_counter() - start
    repeats = budget.repeats_for(probe_s)
    return time_callable(
        fn,
        setup=setup,
        warmup=0,
        min_total_s=budget.min_total_s,
        min_repeats=repeats,
        max_repeats=max(repeats, budget.max_repeats),
    )


def measure_cell(
    name: str, seq_len: int, shape: Shape, budget: TimingBudget, memory_budget_bytes: int | None
) -> dict[str, object]:
    """One row: peak tracked bytes first (a budget overrun is a clean 'oom'), then the two timings."""
    row: dict[str, object] = {"layer": name, "seq_len": seq_len, "status": "ok", "message": ""}
    reason = skip_reason(name, seq_len)
    try:
        torch.manual_seed(0)
        layer = layers.build(name, d_model=shape.d_model, n_heads=shape.n_heads)
        row["analytic_fwd_flops"] = analytic_forward_flops(layer, shape.batch, seq_len)
        if reason is not None:
            row.update(status="skipped", message=reason)
            return row

        # x: [B, N, D]; the loss is a fixed random projection of the output, so every output
        # element carries a distinct gradient (a plain sum would not).
        x = torch.randn(shape.batch, seq_len, shape.d_model, requires_grad=True)
        projection = torch.randn(shape.batch, seq_len, shape.d_model)

        def zero_grads() -> None:
            x.grad = None
            layer.zero_grad(set_to_none=True)

        def forward() -> None:
            layer(x)

        def forward_backward() -> None:
            (layer(x) * projection).sum().backward()

        zero_grads()
        row["peak_bytes_fwd_bwd"] = measure_peak_bytes(forward_backward, budget_bytes=memory_budget_bytes)
        row.update(timing_columns("fwd_bwd", timed_with_probe(forward_backward, zero_grads, budget)))
        row.update(timing_columns("fwd", timed_with_probe(forward, zero_grads, budget)))
    except Exception as error:  # a cell's failure is a result, not the end of the sweep
        row.update(status="oom" if is_out_of_memory(error) else "error", message=first_line(error))
    return row


def run_sweep(
    names: list[str],
    seq_lens: list[int],
    shape: Shape,
    threads: int,
    budget: TimingBudget,
    memory_budget_bytes: int | None,
) -> pd.DataFrame:
    torch.set_num_threads(threads)
    constants = {
        "batch": shape.batch, "d_model": shape.d_model, "n_heads": shape.n_heads, "head_dim": shape.head_dim,
        "dtype": "float32", "device": "cpu", "threads": threads,
    }
    rows = []
    cells = [(name, n) for name in names for n in seq_lens]
    for index, (name, seq_len) in enumerate(cells, start=1):
        start = time.perf_counter()
        row = {**constants, **measure_cell(name, seq_len, shape, budget, memory_budget_bytes)}
        rows.append(row)
        # A failed cell's traceback can leave its tensors in reference cycles; free them before the next.
        gc.collect()
        print(f"[{index}/{len(cells)}] {progress_text(row)} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def progress_text(row: dict[str, object]) -> str:
    head = f"{row['layer']} N={row['seq_len']}: {row['status']}"
    if row["status"] == "ok":
        return (
            f"{head}, fwd+bwd {row['fwd_bwd_ms']:.1f} ms, fwd {row['fwd_ms']:.1f} ms, "
            f"peak {row['peak_bytes_fwd_bwd'] / MiB:.1f} MiB"
        )
    return f"{head} ({row['message']})"


def fit_exponents(frame: pd.DataFrame) -> pd.DataFrame:
    """Per layer: least-squares slope of log(peak bytes) and log(fwd+bwd ms) against log(N).

    Over the ok cells with N in EXPONENT_SEQ_LEN_RANGE; NaN where fewer than two lengths qualify.
    """
    low, high = EXPONENT_SEQ_LEN_RANGE
    rows = []
    for name, cells in frame.groupby("layer", sort=False):
        used = cells[(cells.status == "ok") & cells.seq_len.between(low, high) & (cells.peak_bytes_fwd_bwd > 0)]
        row = {
            "layer": name,
            "cells": len(used),
            "n_min": math.nan,
            "n_max": math.nan,
            "peak_bytes_exponent": math.nan,
            "fwd_bwd_time_exponent": math.nan,
        }
        if used.seq_len.nunique() >= 2:
            log_n = np.log(used.seq_len.to_numpy(dtype=float))
            row.update(
                n_min=int(used.seq_len.min()),
                n_max=int(used.seq_len.max()),
                peak_bytes_exponent=float(np.polyfit(log_n, np.log(used.peak_bytes_fwd_bwd.to_numpy(float)), 1)[0]),
                fwd_bwd_time_exponent=float(np.polyfit(log_n, np.log(used.fwd_bwd_ms.to_numpy(float)), 1)[0]),
            )
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    goal: str
    passed: bool | None  # None: the rows it needs are missing or not ok
    note: str = ""

    @property
    def verdict(self) -> str:
        return "NOT EVALUATED" if self.passed is None else ("PASS" if self.passed else "FAIL")


def fwd_bwd_ms_at(frame: pd.DataFrame, layer: str, seq_len: int) -> tuple[float | None, str]:
    match = frame[(frame.layer == layer) & (frame.seq_len == seq_len)]
    if match.empty:
        return None, f"no {layer} row at N={seq_len}"
    row = match.iloc[0]
    if row.status != "ok":
        return None, f"{layer} at N={seq_len} is {row.status}"
    return float(row.fwd_bwd_ms), ""


def ratio_target(
    frame: pd.DataFrame, numerator: str, denominator: str, goal: str, meets: Callable[[float], bool]
) -> Target:
    name = f"{numerator} / {denominator} fwd+bwd time at N={TARGET_SEQ_LEN}"
    top, top_note = fwd_bwd_ms_at(frame, numerator, TARGET_SEQ_LEN)
    bottom, bottom_note = fwd_bwd_ms_at(frame, denominator, TARGET_SEQ_LEN)
    if top is None or bottom is None:
        return Target(name, None, goal, None, "; ".join(n for n in (top_note, bottom_note) if n))
    ratio = top / bottom
    return Target(name, ratio, goal, bool(meets(ratio)))


def evaluate_targets(frame: pd.DataFrame, exponents: pd.DataFrame) -> list[Target]:
    targets = [
        ratio_target(frame, "ttt-linear-primal", "ttt-linear", ">= 5", lambda r: r >= 5),
        ratio_target(frame, "ttt-linear", "linear-attention-causal", "<= 2", lambda r: r <= 2),
    ]
    low, high = QUADRATIC_EXPONENT_RANGE
    for row in exponents.itertuples():
        quadratic = row.layer.startswith("attention-naive")
        goal = f"in [{low}, {high}] (~2)" if quadratic else f"<= {LINEAR_EXPONENT_MAX}"
        name = f"{row.layer} peak-bytes exponent"
        if math.isnan(row.peak_bytes_exponent):
            targets.append(Target(name, None, goal, None, "fewer than two ok lengths in the fit range"))
            continue
        value = row.peak_bytes_exponent
        passed = low <= value <= high if quadratic else value <= LINEAR_EXPONENT_MAX
        targets.append(Target(name, value, goal, passed, f"N = {int(row.n_min)}..{int(row.n_max)}"))
    return targets


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def number(value: object, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def render_markdown(
    frame: pd.DataFrame, exponents: pd.DataFrame, targets: list[Target], shape: Shape, threads: int
) -> str:
    low, high = EXPONENT_SEQ_LEN_RANGE
    result_rows = [
        [
            r.layer, str(r.seq_len), r.status,
            number(r.fwd_ms, ".2f"),
            f"{number(r.fwd_bwd_ms, '.2f')} ({number(r.fwd_bwd_p20_ms, '.2f')}–{number(r.fwd_bwd_p80_ms, '.2f')})"
            if r.status == "ok" else "",
            number(r.peak_bytes_fwd_bwd / MiB, ".1f"),
            number(r.analytic_fwd_flops / 1e9, ".3f"),
            r.message,
        ]
        for r in frame.itertuples()
    ]
    exponent_rows = [
        [
            r.layer,
            "" if math.isnan(r.n_min) else f"{int(r.n_min)}..{int(r.n_max)}",
            str(r.cells),
            number(r.peak_bytes_exponent, ".2f"),
            number(r.fwd_bwd_time_exponent, ".2f"),
        ]
        for r in exponents.itertuples()
    ]
    target_rows = [[t.name, number(t.measured, ".2f"), t.goal, t.verdict, t.note] for t in targets]
    return "\n\n".join(
        [
            "# Layer benchmark",
            f"float32 on the CPU, {threads} threads; batch {shape.batch}, {shape.n_heads} heads x head dim "
            f"{shape.head_dim} (d_model {shape.d_model}); torch {torch.__version__}, {platform.platform()}.",
            "Forward+backward: forward, loss = sum of the output times a fixed random projection, backward into "
            "the input and the parameters (gradients zeroed outside the timed region). Forward: the same forward "
            "with autograd recording. Times are the median (p20–p80) of the timed repeats after a warm-up call. "
            "Peak is the tracked live tensor bytes of forward+backward: storages returned by aten ops, "
            "inputs and parameters excluded, workspace inside fused kernels not seen. "
            "GFLOP is the layer's analytic forward count (2 per multiply-add, matrix products only).",
            markdown_table(
                ["layer", "N", "status", "fwd ms", "fwd+bwd ms (p20–p80)", "peak MiB", "fwd GFLOP", "message"],
                result_rows,
            ),
            "## Scaling with N",
            f"Least-squares slope of log(peak bytes) and of log(fwd+bwd ms) against log(N), over the ok cells "
            f"with {low} <= N <= {high}; blank where fewer than two lengths qualify.",
            markdown_table(["layer", "N used", "cells", "peak-bytes exponent", "fwd+bwd time exponent"], exponent_rows),
            "## Targets",
            markdown_table(["target", "measured", "goal", "verdict", "note"], target_rows),
        ]
    ) + "\n"


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one length, each >= 1")
    return values


def available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", help="comma-separated layer names (default: every registered layer)")
    parser.add_argument("--seq-lens", type=int_list, help="comma-separated N (default 1024,...,16384; --quick 256,1024,4096)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, help="output folder (default results/cpu-layer-bench, --quick results/cpu-quick-layer-bench)"
    )
    parser.add_argument("--quick", action="store_true", help="small grid and short timings (a couple of minutes)")
    parser.add_argument(
        "--memory-budget-gib", type=float,
        help="tracked-bytes budget per cell; a cell above it is 'oom' (default: half the available memory)",
    )
    args = parser.parse_args(argv)

    registered = layers.names()
    if args.layers:
        args.layer_names = [name.strip() for name in args.layers.split(",") if name.strip()]
        unknown = [name for name in args.layer_names if name not in registered]
        if unknown:
            parser.error(f"--layers: unknown {', '.join(unknown)}; registered layers: {', '.join(registered)}")
    else:
        args.layer_names = registered
    for option in ("batch", "heads", "head_dim", "threads"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')}={getattr(args, option)}: it must be >= 1")
    if args.out is None:
        args.out = Path("results/cpu-quick-layer-bench" if args.quick else "results/cpu-layer-bench")
    if args.seq_lens is None:
        args.seq_lens = list(QUICK_SEQ_LENS if args.quick else DEFAULT_SEQ_LENS)
    if args.memory_budget_gib is not None:
        args.memory_budget_bytes = int(args.memory_budget_gib * 2**30)
    else:
        # Tracked bytes miss kernel workspace and allocator slack, so leave the other half for them.
        available = available_memory_bytes()
        args.memory_budget_bytes = None if available is None else available // 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = Shape(batch=args.batch, n_heads=args.heads, head_dim=args.head_dim)
    budget = QUICK_BUDGET if args.quick else FULL_BUDGET
    frame = run_sweep(args.layer_names, args.seq_lens, shape, args.threads, budget, args.memory_budget_bytes)
    exponents = fit_exponents(frame)
    markdown = render_markdown(frame, exponents, evaluate_targets(frame, exponents), shape, args.threads)

    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "layer_bench.csv", index=False)
    (args.out / "layer_bench.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
