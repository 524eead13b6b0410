"""asv's result files (one per commit, environment and machine) read as ttt-bench result rows, so that the
comparison behind `ttt-bench compare` also gates asv runs.

asv stores per benchmark the values over the product of its parameters: a number, NaN where setup skipped
the combination (NotImplementedError) and null where the benchmark failed. Each value becomes one row with
the parameters as config columns (variant, seq_len, task), the measurement and metric the benchmark names
(BENCHMARK_METRICS), and a status: ok, skipped or error. A benchmark skipped at every combination (the CUDA
peak on a CPU machine) gives no rows, so its skips do not hide the other benchmarks of the same cells.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ttt_bench.errors import ConfigError
from ttt_bench.regression.benchmark_grid import PARAMETER_AXES, TRAINING_PARAMETER_AXES

# Benchmark method (suites/benchmarks.py) -> (measurement, metric column in ttt-bench units, factor from asv's unit).
BENCHMARK_METRICS = {
    "time_forward": ("forward", "time_ms", 1e3),  # asv times in seconds
    "time_forward_backward": ("forward_backward", "time_ms", 1e3),
    "track_flops_forward": ("forward", "flops", 1),
    "track_flops_forward_backward": ("forward_backward", "flops", 1),
    "track_peak_bytes_forward": ("forward", "peak_bytes", 1),
    "track_peak_bytes_forward_backward": ("forward_backward", "peak_bytes", 1),
    "track_cuda_peak_bytes_forward": ("forward", "cuda_peak_bytes", 1),
    "track_cuda_peak_bytes_forward_backward": ("forward_backward", "cuda_peak_bytes", 1),
    "track_accuracy": ("train", "accuracy", 1),
    "track_eval_loss": ("train", "eval_loss_nats", 1),
}
FAILED_MESSAGE = "the asv benchmark failed (asv run --show-stderr prints why)"


def find_result_file(results_dir: str | Path, commit: str) -> Path:
    """The newest result file of `commit` under `results_dir` (any machine, any environment)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: no asv results folder; run `asv run --python=same --set-commit-hash <commit>` "
                          f"first (asv.conf.json sets results_dir)")
    found = sorted(root.glob(f"*/{commit[:8]}-*.json"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise ConfigError(f"{root}: no asv result for commit {commit[:8]}; results are saved only with "
                          f"`asv run --set-commit-hash {commit}`")
    return found[-1]


def load_asv_results(path: str | Path) -> pd.DataFrame:
    """One row per benchmark and parameter combination of the asv result file at `path`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        columns, results = data["result_columns"], data["results"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: not an asv result file ({type(error).__name__}: {error})") from None
    environment = {
        "suite": "asv", "git_commit": data.get("commit_hash", ""), "cpu_model": data.get("params", {}).get("cpu", ""),
    }
    rows = []
    for benchmark, stored in results.items():
        method = benchmark.rsplit(".", 1)[-1]
        if method not in BENCHMARK_METRICS:
            continue
        measurement, metric, factor = BENCHMARK_METRICS[method]
        entry = dict(zip(columns, stored))
        names = _param_names(benchmark, entry["params"])
        combinations = pd.MultiIndex.from_product(entry["params"]).to_list()
        values = entry["result"] if entry["result"] is not None else [None] * len(combinations)
        if all(_skipped(value) for value in values):
            continue
        for combination, value in zip(combinations, values):
            status = "error" if value is None else "skipped" if _skipped(value) else "ok"
            rows.append({
                **environment, "benchmark": benchmark, "config_hash": "/".join(map(str, combination)),
                **{n: _param_value(v) for n, v in zip(names, combination)},
                "measurement": measurement, "status": status,
                "message": FAILED_MESSAGE if status == "error" else "",
                metric: value * factor if status == "ok" else math.nan,
            })
    if not rows:
        raise ConfigError(f"{path}: no ttt-bench benchmark ({', '.join(BENCHMARK_METRICS)}) has a result")
    return pd.DataFrame(rows)


def _param_names(benchmark: str, params: list[list[str]]) -> list[str]:
    """asv's result files keep parameter values, not names; the benchmarks take theirs from the suite's grid."""
    for names in (PARAMETER_AXES, TRAINING_PARAMETER_AXES):
        if len(params) == len(names):
            return list(names)
    raise ConfigError(f"benchmark {benchmark}: {len(params)} parameters; ttt-bench's benchmarks have "
                      f"{', '.join(PARAMETER_AXES)} and, when they train, the task first")


def _param_value(text: str) -> object:
    """asv stores a parameter as its repr: "'ttt-mlp'" or '1024'."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return int(text)
    except ValueError:
        return text


def _skipped(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)
