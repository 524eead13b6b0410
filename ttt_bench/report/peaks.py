"""Datasheet peak throughput of the GPUs ttt-bench is run on, dense (no structured sparsity), in TFLOP/s.

Sources: NVIDIA's H100 Tensor Core GPU datasheet (SXM and PCIe columns), NVIDIA's H200 datasheet (SXM)
and NVIDIA's A100 datasheet. float32 is the CUDA-core figure, since PyTorch leaves TF32 off for matmuls by
default; bfloat16 and float16 are the Tensor Core figures, halved from the "with sparsity" numbers.
"""

from __future__ import annotations

DATASHEET_TFLOPS = {  # (name fragment, dtype) -> TFLOP/s; the first fragment found in the GPU's name wins
    ("H200", "float64"): 34.0, ("H200", "float32"): 67.0, ("H200", "bfloat16"): 989.5, ("H200", "float16"): 989.5,
    ("H100 PCIe", "float64"): 26.0, ("H100 PCIe", "float32"): 51.0,
    ("H100 PCIe", "bfloat16"): 756.0, ("H100 PCIe", "float16"): 756.0,
    ("H100", "float64"): 34.0, ("H100", "float32"): 67.0, ("H100", "bfloat16"): 989.5, ("H100", "float16"): 989.5,
    ("A100", "float64"): 9.7, ("A100", "float32"): 19.5, ("A100", "bfloat16"): 312.0, ("A100", "float16"): 312.0,
}


def datasheet_tflops(gpu_name: str, dtype: str) -> float | None:
    """The dense peak for this GPU and dtype, or None when the GPU is not in the table (every CPU)."""
    for (fragment, peak_dtype), tflops in DATASHEET_TFLOPS.items():
        if fragment in str(gpu_name) and peak_dtype == dtype:
            return tflops
    return None
