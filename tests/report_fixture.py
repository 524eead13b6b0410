"""Results folders written by hand for the report tests. write_fixture_results: exact power laws (so fits and
crossovers have known answers), training and per-position rows, and cells that ended oom, error, timeout, diverged
and skipped, in a folder from before measure settings and noise flags were stored. write_two_settings_results: one
suite run twice into one folder under different threads, the first run on a busy machine."""

from __future__ import annotations

import json
from pathlib import Path

from ttt_bench.results import NOISY_SPREAD, ResultStore

ENV = {"torch_version": "2.13.0+cpu", "cuda_version": "not available", "python_version": "3.11.7",
       "platform": "Linux", "cpu_model": "Test CPU", "cpu_count": 2, "threads": 2, "ttt_bench_version": "0.1.0",
       "git_commit": "abc123", "gpu_name": "not available", "gpu_memory_bytes": "not available",
       "driver_version": "not available"}
SETTING = {"batch": 1, "d_model": 64, "n_heads": 2, "head_dim": 32, "dtype": "float32", "device": "cpu",
           "knobs": "{}"}
SEQ_LENS = (256, 1024, 4096)
BUDGET_BYTES = 2**30
# time_ms = a N^p, peak_bytes = c0 + c1 N (+ c2 N^2): attention quadratic, the others linear.
PROFILES = {
    "attention-sdpa-causal": {"time": (1e-5, 2.0), "memory": (1e5, 100.0, 8.0)},
    "linear-attention-causal": {"time": (4e-3, 1.0), "memory": (1e5, 2000.0, 0.0)},
    "ttt-linear": {"time": (1e-2, 1.0), "memory": (1e5, 4000.0, 0.0)},
}
MESSAGES = {
    "oom": "tracked memory 1.2 GiB is over the budget of 1.0 GiB",
    "error": "RuntimeError: something broke in the kernel",
    "timeout": "no result within 300 s; the worker was killed",
    "skipped": "materialises the N x N scores",
    "diverged": "loss became nan at step 12 (lr 0.003)",
}


def time_ms(variant: str, seq_len: int) -> float:
    a, p = PROFILES[variant]["time"]
    return a * seq_len**p


def peak_bytes(variant: str, seq_len: int) -> float:
    c0, c1, c2 = PROFILES[variant]["memory"]
    return c0 + c1 * seq_len + c2 * seq_len**2


def _profile_row(variant: str, seq_len: int, measurement: str, status: str = "ok") -> dict:
    factor = 3.0 if measurement == "forward_backward" else 1.0
    row = {**ENV, **SETTING, "suite": "fixture", "config_hash": f"{variant}-{seq_len}", "variant": variant,
           "layer": variant, "seq_len": seq_len, "seed": 0, "measurement": measurement, "status": status,
           "message": MESSAGES.get(status, ""), "memory_budget_bytes": BUDGET_BYTES,
           "started_at": "2026-11-25T00:00:00+00:00", "finished_at": "2026-11-25T00:01:00+00:00"}
    if status == "ok":
        time = time_ms(variant, seq_len) * factor
        flops = 2e6 * seq_len * factor
        row |= {"time_ms": time, "time_p20_ms": 0.97 * time, "time_p80_ms": 1.03 * time,
                "peak_bytes": peak_bytes(variant, seq_len) * factor, "flops": flops,
                "tflops_per_s": flops / (time * 1e-3) / 1e12, "matmul_tflops_per_s": 0.35}
    return row


def _train_row(variant: str, task: str, seq_len: int, seed: int, accuracy: float, flops_per_token: float,
               status: str = "ok") -> dict:
    return {**ENV, **SETTING, "suite": "fixture-train", "config_hash": f"{variant}-{task}-{seed}",
            "variant": variant, "layer": variant, "seq_len": seq_len, "seed": seed, "batch": 32, "task": task,
            "task_name": task, "measurement": "train", "status": status, "message": MESSAGES.get(status, ""),
            "accuracy": accuracy if status == "ok" else float("nan"), "flops_per_token": flops_per_token,
            "params": 1e5, "eval_loss_nats": 1.0, "train_time_s": 2.0}


def _position_rows(variant: str, seed: int, slope: float) -> list[dict]:
    rows = []
    for start, end in ((0, 1), (1, 2), (2, 4), (4, 8), (8, 16)):
        rows.append({**ENV, **SETTING, "suite": "fixture-train", "config_hash": f"{variant}-bytes-lm-{seed}",
                     "variant": variant, "layer": variant, "seq_len": 16, "seed": seed, "task": "bytes-lm",
                     "measurement": "loss_by_position", "status": "ok", "message": "", "position": start,
                     "position_end": end, "eval_loss_nats": 3.0 - slope * end + 0.01 * seed})
    return rows


def write_fixture_results(root: Path) -> Path:
    store = ResultStore(root)
    for variant in PROFILES:
        for seq_len in SEQ_LENS:
            store.write_cell(f"{variant}-{seq_len}", [_profile_row(variant, seq_len, m)
                                                      for m in ("forward", "forward_backward")])
    store.write_cell("attention-16384", [_profile_row("attention-sdpa-causal", 16384, m, "oom")
                                         for m in ("forward", "forward_backward")])
    store.write_cell("ttt-16384", [_profile_row("ttt-linear", 16384, m, "error")
                                   for m in ("forward", "forward_backward")])
    store.write_cell("linear-16384", [_profile_row("linear-attention-causal", 16384, m, "timeout")
                                      for m in ("forward", "forward_backward")])
    store.write_cell("naive-4096", [{**_profile_row("attention-naive-causal", 4096, m, "skipped")}
                                    for m in ("forward", "forward_backward")])
    accuracies = {"attention-sdpa-causal": (0.80, 3e5), "linear-attention-causal": (0.70, 2e5),
                  "ttt-linear": (0.85, 2.5e5)}
    for variant, (accuracy, flops) in accuracies.items():
        for seed in (0, 1):
            store.write_cell(f"{variant}-mnist-{seed}",
                             [_train_row(variant, "mnist", 196, seed, accuracy + 0.02 * seed, flops)])
            store.write_cell(f"{variant}-bytes-lm-{seed}",
                             [_train_row(variant, "bytes-lm", 16, seed, 0.3, flops), *_position_rows(variant, seed,
                                                                                                     0.05)])
    store.write_cell("ttt-mlp-mnist-0", [_train_row("ttt-mlp", "mnist", 196, 0, 0.0, 4e5, status="diverged")])
    store.write_run_files(ENV, 'name = "fixture"\n')
    return root


# Two runs of one suite into one folder: threads = 2 on a busy machine, then threads = 1 on a quiet one (issue 16).
TWO_SETTINGS_SEQ_LENS = (256, 512, 1024, 2048)
BUSY = {"threads": 2, "cpus_available": 2, "load_average": 3.5}
QUIET = {"threads": 1, "cpus_available": 2, "load_average": 0.2}
# The busy run's SDPA forward at N = 512 and the quiet run's: averaged, they would read 13.95 ms.
BUSY_SDPA_512_MS, QUIET_SDPA_512_MS = 24.0, 3.9
SPREADS = {("attention-sdpa-causal", 512): 17.0, ("attention-sdpa-causal", 2048): 3.0}  # busy run, forward
# The busy run's ttt-linear forward takes less time at 2048 than at 1024, every timing steady: not a power law.
FALLING = {1024: 31.0, 2048: 20.0}
FORWARD_SLOWER = ("attention-sdpa-causal", 1024)  # busy run: its forward took longer than its forward+backward


def measure_settings_json(threads: int) -> str:
    return json.dumps({"count_flops_max_seq_len": 1024, "memory_budget_gib": None, "min_time_s": 0.5,
                       "repeats": 5, "slow_repeats": 3, "threads": threads}, sort_keys=True)


def _timed_row(variant: str, seq_len: int, measurement: str, run: dict, time: float, spread: float) -> dict:
    """A profiling row with the columns a current run writes: measure settings, spread, noisy flag, run id."""
    p20, p80 = time / spread**0.5, time * spread**0.5
    threads = run["threads"]
    return {**ENV, **SETTING, **run, "suite": "fixture-two-settings", "variant": variant, "layer": variant,
            "config_hash": f"{variant}-{seq_len}-t{threads}", "seq_len": seq_len, "seed": 0,
            "measurement": measurement, "status": "ok", "message": "",
            "measure_settings": measure_settings_json(threads),
            "run_id": f"run-threads-{threads}", "time_ms": time, "time_p20_ms": p20, "time_p80_ms": p80,
            "time_spread": spread, "noisy": spread > NOISY_SPREAD, "time_repeats": 5,
            "peak_bytes": peak_bytes(variant, seq_len), "flops": 2e6 * seq_len,
            "started_at": "2026-11-25T00:00:00+00:00", "finished_at": "2026-11-25T00:01:00+00:00"}


def quiet_time_ms(variant: str, seq_len: int) -> float:
    """The quiet run's forward: a clean power law through QUIET_SDPA_512_MS for attention (N^2), N^1 for ttt."""
    return QUIET_SDPA_512_MS * (seq_len / 512) ** 2 if variant == "attention-sdpa-causal" else 0.01 * seq_len


def write_two_settings_results(root: Path) -> Path:
    """The folder of the issue: every cell measured at threads = 2 (noisy: wide spreads, a forward slower than its
    forward + backward, a time that falls with N) and again at threads = 1 (clean power laws)."""
    store = ResultStore(root)
    for variant in ("attention-sdpa-causal", "ttt-linear"):
        for seq_len in TWO_SETTINGS_SEQ_LENS:
            quiet = quiet_time_ms(variant, seq_len)
            store.write_cell(f"{variant}-{seq_len}-t1", [
                _timed_row(variant, seq_len, "forward", QUIET, quiet, 1.05),
                _timed_row(variant, seq_len, "forward_backward", QUIET, 3 * quiet, 1.05)])
            busy = BUSY_SDPA_512_MS if (variant, seq_len) == ("attention-sdpa-causal", 512) else 2 * quiet
            if variant == "ttt-linear" and seq_len in FALLING:
                busy = FALLING[seq_len]
            backward = busy / 2 if (variant, seq_len) == FORWARD_SLOWER else 3 * busy
            store.write_cell(f"{variant}-{seq_len}-t2", [
                _timed_row(variant, seq_len, "forward", BUSY, busy, SPREADS.get((variant, seq_len), 1.05)),
                _timed_row(variant, seq_len, "forward_backward", BUSY, backward, 1.05)])
    store.write_run_files(ENV, 'name = "fixture-two-settings"\n')
    return root


# Operator profiles (metric op_time): per layer, the profiled call's split into matrix products, other operators and
# the rest, as fractions, and the operators per call; the profiled call runs 1.5x the timed one.
SPLITS = {"attention-sdpa-causal": (0.8, 0.15, 60), "linear-attention-causal": (0.5, 0.3, 400),
          "ttt-linear": (0.2, 0.6, 5000)}
PROFILER_INFLATION = 1.5
OP_TIME_SEQ_LENS = (256, 1024)
OP_TIME_FAILED = ("ttt-linear", 1024)  # timed out at the N the split is shown at
OP_TIME_UNPROFILED = ("linear-attention-causal", 256)  # measured without op_time
CEILING_TFLOPS = 0.35


def write_op_time_results(root: Path) -> Path:
    """The fixture's layers with operator profiles at N = 256 and 1024, two series profiled at each: ttt-linear timed
    out at 1024 and linear attention was not profiled at 256, so the split is shown at 1024 (the larger N) with
    ttt-linear named by its status."""
    store = ResultStore(root)
    for variant in SPLITS:
        for seq_len in OP_TIME_SEQ_LENS:
            failed = (variant, seq_len) == OP_TIME_FAILED
            rows = [_profile_row(variant, seq_len, m, "timeout" if failed else "ok")
                    for m in ("forward", "forward_backward")]
            for row in rows:
                row["suite"] = "fixture-op-time"
                if failed or (variant, seq_len) == OP_TIME_UNPROFILED:
                    continue
                matmul, other, ops = SPLITS[variant]
                profiled = PROFILER_INFLATION * row["time_ms"]
                row |= {"profiled_time_ms": profiled, "matmul_time_ms": matmul * profiled,
                        "other_time_ms": other * profiled, "matmul_time_share": matmul, "ops_per_call": ops,
                        "matmul_tflops_per_s": CEILING_TFLOPS}
            store.write_cell(f"{variant}-{seq_len}", rows)
    store.write_run_files(ENV, 'name = "fixture-op-time"\n')
    return root


# A mini-batch sweep (suites/mini-batch.toml's shape): time_ms = a (N / b + c b) and peak bytes = N (m + b k) per layer,
# b = 1 ... 64 at N = 512; ttt-mlp at b = 1 timed out; ttt-linear measured again at threads = 1 (its own series).
MINI_BATCHES = (1, 4, 16, 64)
MINI_BATCH_SEQ_LEN = 512
MINI_BATCH_LAWS = {"ttt-linear": (0.01, 1.0, 400.0, 20.0), "ttt-mlp": (0.05, 2.0, 1600.0, 80.0)}
MINI_BATCH_FAILED = ("ttt-mlp", 1)


def mini_batch_time_ms(layer: str, b: int) -> float:
    a, c, _, _ = MINI_BATCH_LAWS[layer]
    return a * (MINI_BATCH_SEQ_LEN / b + c * b)


def mini_batch_peak_bytes(layer: str, b: int) -> float:
    _, _, m, k = MINI_BATCH_LAWS[layer]
    return MINI_BATCH_SEQ_LEN * (m + b * k)


def write_mini_batch_results(root: Path) -> Path:
    store = ResultStore(root)
    for layer in MINI_BATCH_LAWS:
        for b in MINI_BATCHES:
            for run in (BUSY, QUIET) if layer == "ttt-linear" else (BUSY,):
                status = "timeout" if (layer, b) == MINI_BATCH_FAILED else "ok"
                threads = run["threads"]
                rows = []
                for measurement, factor in (("forward", 1.0), ("forward_backward", 3.0)):
                    row = {**ENV, **SETTING, **run, "suite": "fixture-mini-batch", "variant": f"{layer}-mini_batch={b}",
                           "layer": layer, "knobs": json.dumps({"form": "dual", "mini_batch": b}, sort_keys=True),
                           "config_hash": f"{layer}-{b}-t{threads}", "seq_len": MINI_BATCH_SEQ_LEN, "seed": 0,
                           "measurement": measurement, "status": status, "message": MESSAGES.get(status, ""),
                           "measure_settings": measure_settings_json(threads), "run_id": f"run-threads-{threads}",
                           "started_at": "2026-11-25T00:00:00+00:00", "finished_at": "2026-11-25T00:01:00+00:00"}
                    if status == "ok":
                        time = factor * mini_batch_time_ms(layer, b) * (1.0 if threads == 1 else 1.25)
                        row |= {"time_ms": time, "time_p20_ms": 0.98 * time, "time_p80_ms": 1.02 * time,
                                "time_spread": 1.04, "noisy": False, "time_repeats": 5,
                                "peak_bytes": factor * mini_batch_peak_bytes(layer, b), "flops": 1e6 * b}
                    rows.append(row)
                store.write_cell(f"{layer}-{b}-t{threads}", rows)
    store.write_run_files(ENV, 'name = "fixture-mini-batch"\n')
    return root
