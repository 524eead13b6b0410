"""The device's practical ceiling: the throughput of one large square matmul in the cell's dtype, measured in
the same worker as the cells. Reports draw achieved TFLOP/s against it (and against a datasheet peak where
one is known), so a layer's efficiency reads as a fraction of what this machine really does.
"""

from __future__ import annotations

import torch

from ttt_bench.profile.timing import time_callable

# Large enough to reach the BLAS's steady state, small enough to cost well under a second per (device, dtype).
MATMUL_SIZE = {"cpu": 1024, "cuda": 8192}


def matmul_tflops_per_s(device: str | torch.device, dtype: torch.dtype) -> float:
    """2 n^3 FLOPs of an n x n matmul over its median time, in TFLOP/s."""
    device = torch.device(device)
    size = MATMUL_SIZE[device.type]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    timing = time_callable(lambda: a @ b, warmup=2, min_total_s=0.1, min_repeats=5, device=device)
    return 2 * size**3 / (timing.median_ms * 1e-3) / 1e12
