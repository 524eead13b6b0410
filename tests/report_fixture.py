"""A results folder written by hand for the report tests: exact power laws (so fits and crossovers have known
answers), training and per-position rows, and cells that ended oom, error, timeout, diverged and skipped."""

from __future__ import annotations

from pathlib import Path

from ttt_bench.results import ResultStore

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
