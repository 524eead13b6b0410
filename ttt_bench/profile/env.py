"""The environment a measurement ran in, carried by every result: software versions, devices, threads, commit,
and how busy the machine was (the CPUs this process may use and the load average)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

import ttt_bench
from ttt_bench.profile.memory import nvml_device_info
from ttt_bench.results import NOT_AVAILABLE


def environment(device: str | torch.device = "cpu") -> dict[str, object]:
    """Flat, JSON-ready facts; an entry that cannot be known here reads 'not available'."""
    device = torch.device(device)
    info: dict[str, object] = {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or NOT_AVAILABLE,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "ttt_bench_version": ttt_bench.__version__,
        "git_commit": git_commit(),
        "gpu_name": NOT_AVAILABLE,
        "gpu_memory_bytes": NOT_AVAILABLE,
        "driver_version": NOT_AVAILABLE,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu_name=properties.name, gpu_memory_bytes=properties.total_memory)
        nvml = nvml_device_info(device)
        if nvml is not None:
            info["driver_version"] = nvml["driver_version"]
    return info


def machine_load() -> dict[str, object]:
    """How many CPUs this process may run on and how busy the machine is, now (columns of every row)."""
    return {"cpus_available": cpus_available(), "load_average": load_average()}


def cpus_available() -> int:
    """The CPUs in this process's affinity mask (what taskset or a cpuset leaves it), else the machine's.
    A container's CPU quota (docker --cpus) is not a mask and is not seen."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this OS (macOS)
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average: tasks running or waiting for a CPU, averaged (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or NOT_AVAILABLE


def git_commit() -> str:
    """The commit of the ttt-bench checkout in use ('+dirty' with uncommitted changes), if it is one."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return NOT_AVAILABLE
    return commit + ("+dirty" if dirty else "")


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=10)
    return result.stdout.strip()
