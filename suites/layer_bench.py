"""Time, memory and FLOPs of every registered layer across sequence lengths (CPU fp32 by default).

    python suites/layer_bench.py --quick --out /tmp/lb
    python suites/layer_bench.py --layers ttt-linear,attention-sdpa --seq-lens 1024,4096 --out results/lb
    python suites/layer_bench.py --device cuda --dtype bfloat16 --layers attention-sdpa --seq-lens 8192 --out results/gpu-sdpa

For each (layer, N), ttt_bench.profile.measure_cell: forward and forward+backward wall-clock (median,
p20, p80, tokens/s, achieved TFLOP/s), peak tracked tensor bytes, and the matmul work counted three ways
(the layer's formula, fvcore, FlopCounterMode). Writes OUT/layer_bench.csv (one row per layer and N,
each with its environment), OUT/env.json and OUT/layer_bench.md (the tables, log-log exponents of memory
and time against N, the FLOP-count agreement and the targets), and prints the markdown. A failing cell
records its status and message; the sweep goes on.
"""

from __future__ import annotations

import argparse
import json
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
from ttt_bench.profile.env import environment
from ttt_bench.profile.measure import DTYPES, FULL_BUDGET, QUICK_BUDGET, ROW_COLUMNS, Cell, TimingBudget, measure_cell

DEFAULT_SEQ_LENS = (1024, 2048, 4096, 8192, 16384)
QUICK_SEQ_LENS = (256, 1024, 4096)
EXPONENT_SEQ_LEN_RANGE = (1024, 16384)
TARGET_SEQ_LEN = 4096
NAIVE_ATTENTION_MAX_SEQ_LEN = 8192
TOKEN_LOOP_MAX_SEQ_LEN = 4096
LINEAR_EXPONENT_MAX = 1.1
QUADRATIC_EXPONENT_RANGE = (1.8, 2.2)
COUNT_FLOPS_MAX_SEQ_LEN = 1024  # fvcore traces token loops slowly (40 s for a primal TTT form at N=4096)
MiB = 2**20

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


def run_sweep(
    names: list[str],
    seq_lens: list[int],
    shape: Shape,
    threads: int,
    budget: TimingBudget,
    memory_budget_bytes: int | None,
    count_flops_max_seq_len: int,
    env: dict[str, object],
    device: str = "cpu",
    dtype: str = "float32",
) -> pd.DataFrame:
    """The sweep's rows, each with `env` (the environment, taken once) as plain columns."""
    torch.set_num_threads(threads)
    rows = []
    cells = [(name, n) for name in names for n in seq_lens]
    for index, (name, seq_len) in enumerate(cells, start=1):
        start = time.perf_counter()
        cell = Cell(
            name, seq_len, batch=shape.batch, d_model=shape.d_model, n_heads=shape.n_heads, dtype=dtype, device=device
        )
        row = measure_cell(
            cell, budget, memory_budget_bytes=memory_budget_bytes, count_flops=seq_len <= count_flops_max_seq_len,
            skip_reason=skip_reason(name, seq_len),
        )
        rows.append({**row, **env})
        print(f"[{index}/{len(cells)}] {progress_text(row)} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return pd.DataFrame(rows).reindex(columns=[*ROW_COLUMNS, *env])


def progress_text(row: dict[str, object]) -> str:
    head = f"{row['layer']} N={row['seq_len']}: {row['status']}"
    if row["status"] == "ok":
        return (
            f"{head}, fwd+bwd {row['fwd_bwd_ms']:.1f} ms, fwd {row['fwd_ms']:.1f} ms, "
            f"peak {row['fwd_bwd_peak_bytes'] / MiB:.1f} MiB"
        )
    return f"{head} ({row['message']})"


def fit_exponents(frame: pd.DataFrame) -> pd.DataFrame:
    """Per layer: least-squares slope of log(peak bytes) and log(fwd+bwd ms) against log(N).

    Over the ok cells with N in EXPONENT_SEQ_LEN_RANGE; NaN where fewer than two lengths qualify.
    """
    low, high = EXPONENT_SEQ_LEN_RANGE
    rows = []
    for name, cells in frame.groupby("layer", sort=False):
        used = cells[(cells.status == "ok") & cells.seq_len.between(low, high) & (cells.fwd_bwd_peak_bytes > 0)]
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
                peak_bytes_exponent=float(np.polyfit(log_n, np.log(used.fwd_bwd_peak_bytes.to_numpy(float)), 1)[0]),
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


def flop_agreement_rows(frame: pd.DataFrame) -> list[list[str]]:
    rows = []
    for name, cells in frame.groupby("layer", sort=False):
        counted = cells[cells.fwd_macs_flop_counter.notna()]
        if counted.empty:
            rows.append([name, "0", "", "", "", ""])
            continue
        def worst(counted_macs: pd.Series, formula: pd.Series) -> str:
            difference = (counted_macs / formula - 1).abs().max()
            return "equal" if difference == 0 else f"{difference:.2e}"

        uncounted = sorted({op for ops in counted.uncounted_ops.fillna("") for op in ops.split(";") if op})
        rows.append([
            name, str(len(counted)),
            worst(counted.fwd_macs_fvcore, counted.fwd_macs - counted.final_state_macs),
            worst(counted.fwd_macs_flop_counter, counted.fwd_macs),
            worst(counted.fwd_bwd_macs_flop_counter, counted.fwd_bwd_macs),
            ", ".join(uncounted) or "none",
        ])
    return rows


def render_markdown(
    frame: pd.DataFrame,
    exponents: pd.DataFrame,
    targets: list[Target],
    shape: Shape,
    threads: int,
    count_flops_max_seq_len: int,
) -> str:
    low, high = EXPONENT_SEQ_LEN_RANGE
    result_rows = [
        [
            r.layer, str(r.seq_len), r.status,
            number(r.fwd_ms, ".2f"),
            f"{number(r.fwd_bwd_ms, '.2f')} ({number(r.fwd_bwd_p20_ms, '.2f')}–{number(r.fwd_bwd_p80_ms, '.2f')})"
            if r.status == "ok" else "",
            number(r.fwd_bwd_tflops_per_s * 1e3, ".1f"),
            number(r.fwd_bwd_peak_bytes / MiB, ".1f"),
            number(r.fwd_flops / 1e9, ".3f"),
            number(r.fwd_useful_flops / 1e9, ".3f"),
            number(r.fwd_bwd_flops / 1e9, ".3f"),
            r.message if isinstance(r.message, str) else "",
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
            f"{frame.dtype.iloc[0]} on {frame.device.iloc[0]}, {threads} CPU threads; "
            f"batch {shape.batch}, {shape.n_heads} heads x head dim "
            f"{shape.head_dim} (d_model {shape.d_model}); torch {torch.__version__}, {platform.platform()}.",
            "Forward+backward: forward, loss = sum of the output times a fixed random projection, backward into "
            "the input and the parameters (gradients zeroed outside the timed region). Forward: the same forward "
            "with autograd recording. Times are the median (p20–p80) of the timed repeats after a warm-up call. "
            "Peak is the tracked live tensor bytes of forward+backward: storages returned by aten ops, "
            "inputs and parameters excluded, workspace inside fused kernels not seen. "
            "GFLOP are the layer's analytic counts (FLOPs = 2 x MACs, matrix products only): forward as "
            "executed (dense: a causal mask still costs the full product), forward useful (what the causal mask "
            "keeps) and forward+backward as executed; GFLOP/s is the executed forward+backward count over the "
            "median time.",
            markdown_table(
                ["layer", "N", "status", "fwd ms", "fwd+bwd ms (p20–p80)", "fwd+bwd GFLOP/s", "peak MiB",
                 "fwd GFLOP", "fwd useful GFLOP", "fwd+bwd GFLOP", "message"],
                result_rows,
            ),
            "## FLOP counts",
            "The same matmul work counted three ways: the layer's formula, fvcore on a `torch.jit.trace` of the "
            "forward (minus work that only makes the final state, which a trace prunes) and FlopCounterMode on "
            "the ops that run, forward and forward+backward. Largest relative difference to the formula over "
            "the cells counted (N <= " + str(count_flops_max_seq_len) + "); operators a counter had no rule "
            "for are listed.",
            markdown_table(["layer", "cells", "fvcore fwd", "FlopCounterMode fwd", "FlopCounterMode fwd+bwd",
                            "uncounted ops"], flop_agreement_rows(frame)),
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
    parser.add_argument("--device", default="cpu", help="'cpu' (default) or 'cuda[:i]'")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument(
        "--out", type=Path, help="output folder (default results/cpu-layer-bench, --quick results/cpu-quick-layer-bench)"
    )
    parser.add_argument("--quick", action="store_true", help="small grid and short timings (a few minutes)")
    parser.add_argument(
        "--count-flops-max-seq-len", type=int, default=COUNT_FLOPS_MAX_SEQ_LEN,
        help=f"count FLOPs with fvcore and FlopCounterMode up to this N (default {COUNT_FLOPS_MAX_SEQ_LEN}); "
        "the analytic count is in every row",
    )
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
    for option in ("batch", "heads", "head_dim", "threads", "count_flops_max_seq_len"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')}={getattr(args, option)}: it must be >= 1")
    if args.out is None:
        args.out = Path("results/cpu-quick-layer-bench" if args.quick else "results/cpu-layer-bench")
    if args.seq_lens is None:
        args.seq_lens = list(QUICK_SEQ_LENS if args.quick else DEFAULT_SEQ_LENS)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device={args.device!r} is not a device; use 'cpu' or 'cuda[:i]'")
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        parser.error(f"--device={args.device!r} is not available here; use 'cpu' or a CUDA device torch can see")
    if args.memory_budget_gib is not None:
        args.memory_budget_bytes = int(args.memory_budget_gib * 2**30)
    elif device.type == "cuda":
        args.memory_budget_bytes = None  # the card's own limit
    else:
        # Tracked bytes miss kernel workspace and allocator slack, so leave the other half for them.
        available = available_memory_bytes()
        args.memory_budget_bytes = None if available is None else available // 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = Shape(batch=args.batch, n_heads=args.heads, head_dim=args.head_dim)
    budget = QUICK_BUDGET if args.quick else FULL_BUDGET
    torch.set_num_threads(args.threads)
    env = environment(args.device)
    frame = run_sweep(
        args.layer_names, args.seq_lens, shape, args.threads, budget, args.memory_budget_bytes,
        args.count_flops_max_seq_len, env, args.device, args.dtype,
    )
    exponents = fit_exponents(frame)
    targets = evaluate_targets(frame, exponents)
    markdown = render_markdown(frame, exponents, targets, shape, args.threads, args.count_flops_max_seq_len)

    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "layer_bench.csv", index=False)
    (args.out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    (args.out / "layer_bench.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
