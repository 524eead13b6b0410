"""The CI gate: this commit's asv run against the baseline committed in the repository.

Deterministic metrics must match: counted FLOPs and tracked peak bytes exactly; the fixed-seed accuracy and
held-out loss within 1% (they repeat bit for bit on one machine; another CPU's vector kernels round
differently, and training carries that along). Timings count only beyond a wide factor (TIME_FACTOR), and only
on the CPU model the baseline was measured on: one cold CPU sample here varied by 22%. Printed as compare's
markdown (what moved, worst first); the exit status is 1 on a regression, else 0.

Refreshing the baseline is deliberate: `ttt-bench gate --refresh` copies this commit's asv result file over
it, refusing a run with failed benchmarks; commit the file with a message that says why the numbers moved.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from ttt_bench.errors import ConfigError

DEFAULT_BASELINE = Path("suites/baseline/cpu.json")
DEFAULT_RESULTS = Path(".asv/results")  # asv.conf.json's results_dir
TIME_FACTOR = 2.5  # a timing regresses beyond this many times the baseline's (same-commit runs here: 0.76-1.64x)


def gate_thresholds(same_cpu: bool, time_factor: float = TIME_FACTOR) -> dict[str, float]:
    """Relative tolerances per metric, a change beyond one is a regression (or an improvement): each deterministic
    metric's `gate_tolerance` as ttt_bench.results declares it, and the timing rule."""
    # Imported here: the results vocabulary loads pandas, which the CLI's parser (it reads the defaults above)
    # need not wait for.
    from ttt_bench.results import METRICS

    tolerances = {name: metric.gate_tolerance for name, metric in METRICS.items() if metric.gate_tolerance is not None}
    return {**tolerances, "time_ms": time_factor - 1.0 if same_cpu else math.inf}


def run_gate(baseline: Path, results_dir: Path, commit: str, time_factor: float = TIME_FACTOR,
             out: Path | None = None) -> int:
    """Compare the commit's newest asv result with the baseline; print it (and write `out`); 1 on a regression."""
    # Imported here: they load torch, which the CLI's parser (it reads the defaults above) need not wait for.
    from ttt_bench.regression.asv_results import find_result_file, load_asv_results
    from ttt_bench.report.compare import compare_results, publish_comparison

    if time_factor <= 1:
        raise ConfigError(f"--time-factor {time_factor:g} is not allowed; it must be > 1 (2 means twice as slow)")
    if not baseline.is_file():
        raise ConfigError(f"{baseline}: no baseline; make one with `ttt-bench gate --refresh` after an asv run")
    current = find_result_file(results_dir, commit)
    a, b = load_asv_results(baseline), load_asv_results(current)
    same_cpu = set(a.cpu_model) == set(b.cpu_model)
    comparison = compare_results(a, b, thresholds=gate_thresholds(same_cpu, time_factor))
    cpus = [", ".join(sorted(set(frame.cpu_model))) for frame in (a, b)]
    notes = () if same_cpu else (f"Timings are shown but not gated: the baseline ran on {cpus[0]}, "
                                 f"this run on {cpus[1]}.",)
    return publish_comparison(comparison, f"baseline {baseline}", f"this run {current}", out, notes, only_moved=True)


def refresh_baseline(baseline: Path, results_dir: Path, commit: str) -> int:
    """Copy the commit's newest asv result over the baseline, unless one of its benchmarks failed."""
    from ttt_bench.regression.asv_results import find_result_file, load_asv_results

    current = find_result_file(results_dir, commit)
    rows = load_asv_results(current)
    failed = rows[rows.status == "error"]
    if len(failed):
        cells = "; ".join(sorted({f"{r.benchmark} {r.variant} N={r.seq_len}" for r in failed.itertuples()}))
        raise ConfigError(f"{current}: {len(failed)} benchmark values failed ({cells}); fix them before they "
                          f"become the baseline")
    baseline.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(current, baseline)
    print(f"{baseline}: now the asv run of commit {rows.git_commit.iloc[0][:12]} on {rows.cpu_model.iloc[0] or '?'} "
          f"({len(rows)} values); commit it with the reason the numbers moved")
    return 0
