"""Runs a suite's cells in isolated worker processes and appends their rows to a results folder.

What a worker does with a cell, profile or train it, is in ttt_bench.sweep.cell; this module only supervises.

One worker process per device measures cells one after another. An exception inside a cell comes back
as a row with its status (measure_cell never raises); a worker that dies (a segfault, the kernel's
out-of-memory killer) or gives no result within the cell's timeout is killed and replaced, and the
cell is recorded as 'error' or 'timeout' with what happened. Finished cells are skipped on a rerun.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

import torch

from ttt_bench.profile.env import environment
from ttt_bench.results import RETRIABLE_STATUSES, ResultStore
from ttt_bench.sweep.cell import measure_planned_cell, now_utc
from ttt_bench.sweep.plan import PlannedCell, Suite
from ttt_bench.sweep.progress import Progress
from ttt_bench.sweep.schema import SuiteError

READY = "ready"
WORKER_START_TIMEOUT_S = 300


@dataclass(frozen=True)
class RunSummary:
    total: int  # cells in the suite
    already_done: int  # skipped because a previous run finished them
    ran: int
    statuses: dict[str, int]  # of the cells run now

    @property
    def failures(self) -> int:
        return sum(count for status, count in self.statuses.items() if status in RETRIABLE_STATUSES)


class Executor(Protocol):
    def run(self, cells: list[PlannedCell], store: ResultStore, progress: Progress) -> None: ...


def pending_cells(cells: list[PlannedCell], store: ResultStore, retry_failed: bool = False) -> list[PlannedCell]:
    """The cells still to run: missing ones, skipped ones the suite no longer skips, and with `retry_failed`
    those that ended in error, oom or timeout."""
    statuses = store.statuses()
    return [cell for cell in cells if needs_run(cell, statuses.get(cell.config_hash), retry_failed)]


def needs_run(cell: PlannedCell, status: str | None, retry_failed: bool) -> bool:
    """Whether a cell whose stored status is `status` (None: not stored) runs again."""
    if status is None:
        return True
    if status == "skipped":
        return cell.skip_reason is None
    return retry_failed and status in RETRIABLE_STATUSES


def run_suite(
    suite: Suite,
    out: str | Path,
    *,
    retry_failed: bool = False,
    executor: Executor | None = None,
    show_progress: bool = True,
) -> RunSummary:
    """Run what is missing of `suite` into `out`; refused while another run writes there."""
    cells = suite.cells()
    check_devices(cells)
    store = ResultStore(out)
    with store.lock():
        pending = pending_cells(cells, store, retry_failed)
        devices = sorted({cell.cell.device for cell in cells})
        store.write_run_files(environment(devices[-1]), suite.text)
        progress = Progress(len(pending), enabled=show_progress)
        (executor or LocalExecutor()).run(pending, store, progress)
        progress.close()
        statuses = store.statuses()
    ran = Counter(statuses.get(cell.config_hash, "missing") for cell in pending)
    return RunSummary(total=len(cells), already_done=len(cells) - len(pending), ran=len(pending), statuses=dict(ran))


def check_devices(cells: list[PlannedCell]) -> None:
    """Refuse, before anything runs, a device this machine does not have."""
    for device in sorted({cell.cell.device for cell in cells}):
        if device == "cpu":
            continue
        index = int(device.split(":")[1]) if ":" in device else 0
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise SuiteError(f"device {device!r} is not available here (torch sees {count} CUDA devices); "
                             f"run this suite on a machine with one, or set grid.device to 'cpu'")


class LocalExecutor:
    """Cells run on this machine: one worker per device, the devices side by side."""

    def run(self, cells: list[PlannedCell], store: ResultStore, progress: Progress) -> None:
        by_device: dict[str, list[PlannedCell]] = {}
        for cell in cells:
            by_device.setdefault(cell.cell.device, []).append(cell)
        if len(by_device) <= 1:
            for device_cells in by_device.values():
                run_on_worker(device_cells, store, progress)
            return
        threads = [
            threading.Thread(target=run_on_worker, args=(device_cells, store, progress), daemon=True)
            for device_cells in by_device.values()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)  # wakes up for Ctrl-C


def run_on_worker(cells: list[PlannedCell], store: ResultStore, progress: Progress) -> list[str]:
    """Measure `cells` one after another on one worker, each written as it finishes; their statuses."""
    statuses = []
    with Worker() as worker:
        for cell in cells:
            progress.start(cell.describe())
            start = time.perf_counter()
            rows = worker.run(cell)
            store.write_cell(cell.config_hash, rows)
            statuses.append(str(rows[0]["status"]))
            progress.finish(cell.describe(), statuses[-1], time.perf_counter() - start)
    return statuses


class Worker:
    """A child process that measures cells sent to it; replaced after it dies or hangs."""

    def __init__(self) -> None:
        # spawn, not fork: a forked child would inherit the parent's threads and CUDA state.
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self._connection: Connection | None = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        # On an error or Ctrl-C the cell in flight is abandoned at once rather than awaited.
        self._kill() if exc_type is not None else self.close()

    def run(self, cell: PlannedCell) -> list[dict[str, object]]:
        """The cell's tidy rows; a crash or a timeout becomes rows with that status."""
        if self._process is None or not self._process.is_alive():
            self._start()
        started = now_utc()
        self._connection.send(cell)
        if not self._connection.poll(cell.settings.timeout_s):
            self._kill()
            return failure_rows(cell, "timeout", f"no result after {cell.settings.timeout_s:g} s "
                                f"(measure.timeout_s); the worker was killed", started)
        try:
            return self._connection.recv()
        except (EOFError, OSError):
            self._process.join(timeout=5)
            message = describe_exit(self._process.exitcode)
            self._kill()
            return failure_rows(cell, "error", message, started)

    def close(self) -> None:
        if self._process is not None and self._process.is_alive():
            try:
                self._connection.send(None)
                self._process.join(timeout=10)
            except (BrokenPipeError, OSError):
                pass
        self._kill()

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_worker_main, args=(child,), daemon=True)
        self._process.start()
        child.close()
        self._connection = parent
        # The start (a fresh interpreter importing torch) must not count against the first cell's timeout.
        if not parent.poll(WORKER_START_TIMEOUT_S) or parent.recv() != READY:
            self._kill()
            raise RuntimeError(f"the worker process did not start within {WORKER_START_TIMEOUT_S} s")

    def _kill(self) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(timeout=10)
            self._process = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"the worker process died from signal {name}{hint}"
    return f"the worker process exited with code {exitcode} before returning a result"


def _worker_main(connection: Connection) -> None:
    # Ctrl-C goes to the whole process group; the parent decides what happens to the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Imported here, before the first cell's timeout starts: the memory tracker's dynamo and the FLOP counter.
    import fvcore.nn  # noqa: F401
    import torch._dynamo  # noqa: F401

    connection.send(READY)
    while True:
        try:
            cell = connection.recv()
        except EOFError:
            return
        if cell is None:
            return
        connection.send(measure_planned_cell(cell))


def failure_rows(cell: PlannedCell, status: str, message: str, started: str) -> list[dict[str, object]]:
    """Rows for a cell whose worker gave no result: its config, the status and what happened."""
    return [
        {**cell.config_columns(), "measurement": measurement, "status": status, "message": message,
         "started_at": started, "finished_at": now_utc()}
        for measurement in cell.measurements
    ]
