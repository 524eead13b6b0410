"""Layers timed side by side in one process: the speed ratios a sweep's separate workers cannot give.

A sweep measures each cell in its own worker, so two layers' times come from different moments of a shared
machine. Here every layer runs in one process on the same input, each pass of each layer once per round, in turn
(time_interleaved: the order reversed every other round), and a layer's ratio to the first is the median of the
per-round ratios, so a drift of the machine moves both sides alike. Per layer and pass: the median time in ms with
p20 and p80 (`noisy` where p80 / p20 > 1.5, as everywhere in ttt-bench), and once, outside the timed rounds, the
tracked peak bytes of the pass above its inputs and parameters, per token. With --profile, each pass also runs under
torch.profiler (op_time.py, after the timed rounds): the operators it launches and its share of time in matrix
products, in other operators and outside any operator (Python, autograd): where an overhead-bound layer's time goes.

    python -m ttt_bench.profile.side_by_side linear-attention-causal ttt-linear ttt-mlp --seq-len 4096
    python -m ttt_bench.profile.side_by_side ttt-mlp ttt-mlp:checkpoint_group=4 --seq-len 4096 --passes train

A layer is a registered name, optionally with knobs: `name:knob=value,knob=value` (values read as Python literals).
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ttt_bench.errors import ConfigError, UnknownLayerError
from ttt_bench.profile.memory import measure_peak_bytes
from ttt_bench.profile.op_time import profile_op_time
from ttt_bench.profile.timing import time_interleaved, timing_of

PASSES = {"train": "forward + backward", "infer": "forward under inference_mode"}
NOISY_SPREAD = 1.5


@dataclass(frozen=True)
class LayerSpec:
    label: str  # as given: the name and its knobs
    name: str
    knobs: dict


def parse_layer(text: str) -> LayerSpec:
    """'ttt-mlp' or 'ttt-mlp:checkpoint_group=4,gelu_approximate="tanh"' -> LayerSpec."""
    name, _, knob_text = text.partition(":")
    knobs = {}
    for item in filter(None, knob_text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"layer {text!r}: knob {item!r} is not key=value (e.g. ttt-linear:mini_batch=64)")
        try:
            knobs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            knobs[key.strip()] = value.strip()  # a bare word: a string knob such as form=primal
    return LayerSpec(text, name, knobs)


def _train_call(layer: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor) -> Callable[[], None]:
    x = x.detach().requires_grad_()

    def call() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        (layer(x) * weight).sum().backward()

    return call


def _infer_call(layer: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        with torch.inference_mode():
            layer(x)

    return call


def side_by_side(specs: list[LayerSpec], *, seq_len: int, batch: int = 1, d_model: int = 256, n_heads: int = 4,
                 dtype: torch.dtype = torch.float32, passes: tuple[str, ...] = ("train", "infer"), rounds: int = 9,
                 memory: bool = True, profile: bool = False, seed: int = 0) -> list[dict[str, object]]:
    """One row per (pass, layer): times over `rounds` interleaved rounds, the ratio to specs[0], peak bytes and, with
    `profile`, op_time's split of one profiled call."""
    from ttt_bench.layers import build

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq_len, d_model, generator=generator, dtype=dtype)
    weight = torch.randn(batch, seq_len, d_model, generator=generator, dtype=dtype)
    layers = []
    for spec in specs:
        torch.manual_seed(seed)
        layers.append(build(spec.name, d_model=d_model, n_heads=n_heads, **spec.knobs).to(dtype))
    rows = []
    for pass_name in passes:
        calls = [_train_call(layer, x, weight) if pass_name == "train" else _infer_call(layer, x) for layer in layers]
        for call in calls:  # warm-up: first-call allocations and lazy initialisation stay out of the rounds
            call()
        times = time_interleaved(calls, rounds=rounds)
        for spec, call, layer_times in zip(specs, calls, times):
            timing = timing_of(layer_times)
            ratio = statistics.median(t / base for t, base in zip(layer_times, times[0]))
            row = {"pass": pass_name, "layer": spec.label, "seq_len": seq_len, "time_ms": timing.median_ms,
                   "time_p20_ms": timing.p20_ms, "time_p80_ms": timing.p80_ms, "ratio_to_first": ratio,
                   "noisy": timing.spread > NOISY_SPREAD}
            if memory:
                row["peak_bytes_per_token"] = measure_peak_bytes(call) / (batch * seq_len)
            if profile:
                split = profile_op_time(call, device=torch.device("cpu"), call_ms=timing.median_ms)
                row |= {"ops_per_call": split.ops, "matmul_share": split.matmul_share,
                        "other_share": split.other_ms / split.profiled_ms,
                        "unprofiled_us_per_op": 1000.0 * timing.median_ms / split.ops}
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, object]], first: str) -> str:
    profiled = any("ops_per_call" in row for row in rows)
    head = f"| pass | layer | N | time (ms, median [p20, p80]) | ratio to {first} | tracked peak (bytes/token) |"
    if profiled:
        head += (" operators per call (count) | matmul / other / outside operators (share of profiled time) |"
                 " unprofiled time per operator (us) |")
    lines = [head, "|---" * head.count(" | ") + "|---|"]
    for row in rows:
        noisy = " (noisy)" if row["noisy"] else ""
        peak = f"{row['peak_bytes_per_token']:,.0f}" if "peak_bytes_per_token" in row else "-"
        line = (f"| {PASSES[row['pass']]} | {row['layer']} | {row['seq_len']} | {row['time_ms']:.1f} "
                f"[{row['time_p20_ms']:.1f}, {row['time_p80_ms']:.1f}]{noisy} | {row['ratio_to_first']:.2f} | {peak} |")
        if profiled:
            outside = 1.0 - row["matmul_share"] - row["other_share"]
            line += (f" {row['ops_per_call']:,.0f} | {row['matmul_share']:.2f} / {row['other_share']:.2f} / "
                     f"{outside:.2f} | {row['unprofiled_us_per_op']:.1f} |")
        lines.append(line)
    return "\n".join(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; give an integer >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ttt_bench.profile.side_by_side",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("layers", nargs="+", help="registered names, optionally name:knob=value,...; ratios are to "
                        "the first")
    parser.add_argument("--seq-len", type=_positive, nargs="+", default=[4096])
    parser.add_argument("--batch", type=_positive, default=1)
    parser.add_argument("--d-model", type=_positive, default=256)
    parser.add_argument("--n-heads", type=_positive, default=4)
    parser.add_argument("--threads", type=_positive, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--rounds", type=_positive, default=9)
    parser.add_argument("--passes", nargs="+", choices=list(PASSES), default=list(PASSES))
    parser.add_argument("--no-memory", action="store_true", help="skip the tracked peak bytes")
    parser.add_argument("--profile", action="store_true", help="each pass once more under torch.profiler: operators "
                        "per call and the time in matrix products, other operators and outside them")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        specs = [parse_layer(text) for text in args.layers]
        for seq_len in args.seq_len:
            rows = side_by_side(specs, seq_len=seq_len, batch=args.batch, d_model=args.d_model,
                                n_heads=args.n_heads, passes=tuple(args.passes), rounds=args.rounds,
                                memory=not args.no_memory, profile=args.profile)
            print(markdown(rows, specs[0].label))
    except (ConfigError, UnknownLayerError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\n{args.rounds} interleaved rounds in one process, {torch.get_num_threads()} threads, B = {args.batch}, "
          f"D = {args.d_model}, {args.n_heads} heads, float32; ratio: the median of per-round ratios.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
