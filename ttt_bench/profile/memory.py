"""Peak live tensor bytes of a computation, counted from the storages its ops allocate.

The count is the same on every device (a CPU run predicts the activation memory of a GPU run),
and the same run to run. What it counts: the bytes of every storage that an aten op returns while
the tracker is active, from the op that first returns it until the storage is freed; forward and
backward alike, since the autograd engine runs backward ops under the dispatch mode that was active
when `backward()` was called. What it does not count: storages that existed before the tracker
started (inputs, parameters, their views), workspace a fused kernel allocates and frees inside
itself (e.g. the blocks of a flash-attention kernel), and allocator rounding or caching.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _TrackedStorage:
    """One storage counted in `live_bytes`; the weak reference fires `release` when it is freed."""

    __slots__ = ("nbytes", "ref")

    def __init__(self, nbytes: int, ref: weakref.ref) -> None:
        self.nbytes = nbytes
        self.ref = ref


class LiveBytesTracker(TorchDispatchMode):
    """Follows the live bytes of op-allocated storages and keeps their maximum.

        with LiveBytesTracker(budget_bytes=2**30) as tracker:
            loss = model(x).sum()
            loss.backward()
        tracker.peak_bytes

    A storage is identified by its Python object: torch keeps one `UntypedStorage` object per
    storage for as long as the storage lives, so a weak reference to it fires exactly when the
    memory is released, and every view of a tensor hands back the same object (views are counted
    once). A storage first met as an op input without having been returned by an op under the
    tracker existed before it started; it is remembered as foreign and never counted.

    With `budget_bytes`, an op whose outputs take the live bytes above the budget raises
    `torch.OutOfMemoryError` after it returns, as an allocator that ran out would have at that op.
    Leaving the block drops every weak reference, so nothing of the tracker outlives it;
    `live_bytes` and `peak_bytes` stay readable.
    """

    def __init__(self, budget_bytes: int | None = None) -> None:
        super().__init__()
        # The first op under any dispatch mode imports torch._dynamo; done mid-measurement, that
        # import leaves reference cycles holding the caller's tensors, counted until collected.
        import torch._dynamo  # noqa: F401

        if budget_bytes is not None and budget_bytes < 0:
            raise ValueError(f"budget_bytes={budget_bytes} is not allowed; it must be >= 0 or None")
        self.budget_bytes = budget_bytes
        self.live_bytes = 0
        self.peak_bytes = 0
        self._tracked: dict[int, _TrackedStorage] = {}
        self._foreign: dict[int, weakref.ref] = {}
        # Frees can arrive from autograd's device threads (CUDA backward) and inside an update.
        self._lock = threading.RLock()

    def __exit__(self, exc_type, exc_value, traceback):
        try:
            return super().__exit__(exc_type, exc_value, traceback)
        finally:
            with self._lock:
                # A weak reference that dies before its referent never calls back.
                self._tracked.clear()
                self._foreign.clear()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for storage in _storages((args, kwargs)):
            self._note_input(storage)
        out = func(*args, **kwargs)
        for storage in _storages(out):
            self._note_output(storage)
        if self.budget_bytes is not None and self.live_bytes > self.budget_bytes:
            raise torch.OutOfMemoryError(
                f"tracked live tensor bytes {self.live_bytes:,} exceed the budget of {self.budget_bytes:,} bytes "
                f"after {func} (LiveBytesTracker budget_bytes)"
            )
        return out

    def _note_input(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        with self._lock:
            if key in self._tracked or key in self._foreign:
                return
            self._foreign[key] = weakref.ref(storage, lambda _, key=key: self._forget_foreign(key))

    def _note_output(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        nbytes = storage.nbytes()
        with self._lock:
            if key in self._foreign:
                return
            record = self._tracked.get(key)
            if record is None:
                ref = weakref.ref(storage, lambda _, key=key: self._release(key))
                self._tracked[key] = _TrackedStorage(nbytes, ref)
                self._add(nbytes)
            elif record.nbytes != nbytes:
                # An out= or resize_ op grew (or shrank) a storage the tracker already counts.
                self._add(nbytes - record.nbytes)
                record.nbytes = nbytes

    def _add(self, nbytes: int) -> None:
        self.live_bytes += nbytes
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes

    def _release(self, key: int) -> None:
        with self._lock:
            record = self._tracked.pop(key, None)
            if record is not None:
                self.live_bytes -= record.nbytes

    def _forget_foreign(self, key: int) -> None:
        with self._lock:
            self._foreign.pop(key, None)


def _storages(tree: Any) -> list[torch.UntypedStorage]:
    """Storages of the tensors in an op's arguments or results (tensors, possibly in lists, tuples, dicts)."""
    storages: list[torch.UntypedStorage] = []
    pending = [tree]
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            try:
                storages.append(item.untyped_storage())
            except (NotImplementedError, RuntimeError):
                # Sparse and other storage-less layouts: nothing dense to count.
                continue
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return storages


def measure_peak_bytes(fn: Callable[..., Any], *args: Any, budget_bytes: int | None = None) -> int:
    """Peak bytes of tensors allocated by `fn(*args)` above what already existed (inputs, parameters).

    `fn` may run a forward pass or a forward and backward pass; gradients of parameters that the
    backward creates are counted. The garbage collector is paused during the call, so tensors kept
    alive only by reference cycles count until the call returns, the same way on every run.
    Raises torch.OutOfMemoryError when the live bytes exceed `budget_bytes`.
    """
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with LiveBytesTracker(budget_bytes) as tracker:
            fn(*args)
    finally:
        if gc_was_enabled:
            gc.enable()
    return tracker.peak_bytes


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes; None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def measure_cuda_peak_bytes(fn: Callable[..., Any], *args: Any, device: str | torch.device = "cuda") -> int:
    """Peak bytes the CUDA caching allocator handed out during `fn(*args)`, above what was allocated
    before it (inputs, parameters): `max_memory_allocated` after `reset_peak_memory_stats`. Unlike the
    tracker it sees kernel workspace; like it, it leaves out the allocator's cached, unused blocks."""
    device = torch.device(device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn(*args)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def nvml_device_info(device: str | torch.device = "cuda") -> dict[str, object] | None:
    """Device-level memory in use (all processes, the CUDA context included) and the driver version,
    from nvidia-ml-py; None where there is no NVIDIA driver or library (`pynvml.NVMLError`)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        device = torch.device(device)
        handle = _nvml_handle(pynvml, device.index if device.index is not None else torch.cuda.current_device())
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {
            "used_bytes": int(memory.used),
            "total_bytes": int(memory.total),
            "driver_version": driver.decode() if isinstance(driver, bytes) else str(driver),
        }
    except (pynvml.NVMLError, RuntimeError, AssertionError):  # no such device, or torch without CUDA
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _nvml_handle(pynvml, index: int):
    """NVML's handle of torch's CUDA device `index`. CUDA_VISIBLE_DEVICES renumbers devices for torch
    but not for NVML, so the device is found by its PCI address where torch reports one."""
    properties = torch.cuda.get_device_properties(index)
    address = [getattr(properties, f"pci_{part}_id", None) for part in ("domain", "bus", "device")]
    if None not in address:
        domain, bus, slot = address
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(f"{domain:08X}:{bus:02X}:{slot:02X}.0")
        except pynvml.NVMLError:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)
