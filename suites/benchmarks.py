"""asv regression benchmarks over a suite's grid: every variant x N of suites/regression.toml (profiling)
and every variant of suites/regression-accuracy.toml (a tiny fixed-seed training run).

    asv run --python=same --set-commit-hash $(git rev-parse HEAD)

Other suite files (a GPU grid, say) go in through the environment, for discovery and runs alike:
    TTT_BENCH_ASV_SUITE=suites/regression-gpu.toml asv continuous main HEAD --launch-method spawn
A combination the suite excludes or leaves out is skipped (NotImplementedError in setup), not failed.
Units: time_* in seconds (asv's), FLOPs counted by FlopCounterMode (2 per multiply-add), bytes.
"""

import os
from pathlib import Path

import torch
import torch._dynamo  # noqa: F401  (the FLOP counter and tracker import it on first use: 0.8 s in every

from ttt_bench.profile.flops import count_with_flop_counter
from ttt_bench.profile.measure import Workload
from ttt_bench.profile.memory import measure_cuda_peak_bytes, measure_peak_bytes

#                       forked benchmark process, unless asv's forkserver has it loaded already)
from ttt_bench.regression.benchmark_grid import benchmark_grid
from ttt_bench.sweep.cell import train_cell

SUITES = Path(__file__).resolve().parent
PROFILE_GRID = benchmark_grid(os.environ.get("TTT_BENCH_ASV_SUITE", SUITES / "regression.toml"))
ACCURACY_GRID = benchmark_grid(os.environ.get("TTT_BENCH_ASV_ACCURACY_SUITE", SUITES / "regression-accuracy.toml"))


def _use_threads(threads):
    if threads is not None:
        torch.set_num_threads(threads)


class _LayerCell:
    """The setup the layer benchmarks share: the suite's cell at (variant, N), its layer and inputs built."""

    params = [list(values) for values in PROFILE_GRID.params]
    param_names = list(PROFILE_GRID.param_names)
    timeout = 300

    def setup(self, *values):
        planned = PROFILE_GRID.cell(*values)
        _use_threads(planned.settings.threads)
        self.work = Workload.build(planned.cell)
        self.device = torch.device(planned.cell.device)


class Layer(_LayerCell):
    """Wall-clock, counted FLOPs and tracked peak bytes of one layer at one N, forward and forward+backward."""

    # One round of 2-10 samples of at least 20 ms, after 50 ms of warm-up: the CI budget; the gate reads
    # the median against a wide factor, as one cold CPU sample can be 22% off.
    rounds = 1
    repeat = (2, 10, 1.0)
    sample_time = 0.02
    warmup_time = 0.05

    def _timed(self, name):
        self.work.zero_grads()
        self.work.calls[name]()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time_forward(self, *values):
        self._timed("fwd")

    def time_forward_backward(self, *values):
        self._timed("fwd_bwd")

    def track_flops_forward(self, *values):
        return count_with_flop_counter(self.work.calls["fwd"]).flops

    def track_flops_forward_backward(self, *values):
        self.work.zero_grads()
        return count_with_flop_counter(self.work.calls["fwd_bwd"]).flops

    def track_peak_bytes_forward(self, *values):
        return measure_peak_bytes(self.work.calls["fwd"])

    def track_peak_bytes_forward_backward(self, *values):
        self.work.zero_grads()
        return measure_peak_bytes(self.work.calls["fwd_bwd"])

    track_flops_forward.unit = track_flops_forward_backward.unit = "FLOPs (2 per multiply-add)"
    track_peak_bytes_forward.unit = track_peak_bytes_forward_backward.unit = "bytes (tracked live tensors)"


class CudaMemory(_LayerCell):
    """The CUDA caching allocator's peak (kernel workspace included), beside the device-independent tracker;
    asv's own peakmem_ sees only the process's RSS. Skipped where the grid's device is not CUDA."""

    def setup(self, *values):
        planned = PROFILE_GRID.cell(*values)
        if not planned.cell.device.startswith("cuda") or not torch.cuda.is_available():
            raise NotImplementedError(f"device {planned.cell.device}: the CUDA peak needs a CUDA device")
        super().setup(*values)

    def track_cuda_peak_bytes_forward(self, *values):
        return measure_cuda_peak_bytes(self.work.calls["fwd"], device=self.device)

    def track_cuda_peak_bytes_forward_backward(self, *values):
        self.work.zero_grads()
        return measure_cuda_peak_bytes(self.work.calls["fwd_bwd"], device=self.device)

    track_cuda_peak_bytes_forward.unit = track_cuda_peak_bytes_forward_backward.unit = "bytes (CUDA allocator)"


class Training:
    """A tiny fixed-seed training run per variant: held-out accuracy and loss, bit for bit repeatable on one
    CPU at the suite's thread count, so any change is a real one. Each variant trains once (setup_cache)
    for both tracks; a run that did not end 'ok' fails its benchmarks with its status and message."""

    params = [list(values) for values in ACCURACY_GRID.params]
    param_names = list(ACCURACY_GRID.param_names)

    def setup_cache(self):
        rows = {}
        for values, planned in ACCURACY_GRID.cells.items():
            if planned.skip_reason is None:
                _use_threads(planned.settings.threads)
                rows[values] = train_cell(planned)[0]
        return rows

    setup_cache.timeout = 1200

    def setup(self, rows, *values):
        planned = ACCURACY_GRID.cell(*values)
        row = rows[values]
        if row["status"] != "ok":
            raise RuntimeError(f"{planned.describe()}: {row['status']}: {row['message']}")

    def track_accuracy(self, rows, *values):
        return rows[values]["accuracy"]

    def track_eval_loss(self, rows, *values):
        return rows[values]["eval_loss_nats"]

    track_accuracy.unit = "fraction of held-out examples right"
    track_eval_loss.unit = "nats per held-out example"
