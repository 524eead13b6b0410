"""Runs a suite's cells in isolated worker processes and appends their rows to a results folder.

What a worker does with a cell, profile or train it, is in ttt_bench.sweep.cell; this module only supervises.

One worker process per device measures cells one after another. An exception inside a cell comes back
as a row with its status (measure_cell never raises); a worker that dies (a segfault, a SIGKILL) or gives no
result within the cell's timeout is killed and replaced, and the cell is recorded as 'error' or 'timeout' with
what happened. Finished cells are skipped on a rerun.

A worker leads its own process group, which is killed whole on a timeout or a stop, so processes a cell started
die with it; and it kills that group when its parent dies (SIGKILLed included), so a dead run leaves nothing behind.

A run never blends settings: into a folder whose cells were all measured with other [measure] settings it is
refused (BlendedSettingsError) unless `add` is given. Before it starts it warns when the suite's threads
exceed the cores that the machine's load leaves free; every row carries the load when its cell started.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

import torch

from ttt_bench.errors import ConfigError
from ttt_bench.profile.env import cpus_available, environment, load_average, machine_load
from ttt_bench.results import (
    FAILED_STATUSES,
    RETRIABLE_STATUSES,
    TRAIN_MEASUREMENT,
    UNFINISHED_STATUSES,
    ResultStore,
    StoredCell,
)
from ttt_bench.sweep.cell import measure_planned_cell, now_utc
from ttt_bench.sweep.plan import PlannedCell, Suite
from ttt_bench.sweep.progress import Progress
from ttt_bench.sweep.schema import SuiteError

READY = "ready"
WORKER_START_TIMEOUT_S = 300
PARENT_WATCH_INTERVAL_S = 0.5
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class BlendedSettingsError(ConfigError):
    """A run into a folder whose cells were measured with other [measure] settings: a report would blend them."""


@dataclass(frozen=True)
class RunSummary:
    total: int  # cells in the suite
    already_done: int  # skipped because a previous run finished them
    ran: int
    statuses: dict[str, int]  # of the cells run now
    suite_statuses: dict[str, int]  # of all the suite's cells in the folder after the run
    run_id: str | None = None  # None: nothing was due, no run was recorded

    @property
    def failures(self) -> int:
        return sum(count for status, count in self.statuses.items() if status in FAILED_STATUSES)

    @property
    def unfinished(self) -> dict[str, int]:
        """Of the suite's cells, those that gave no answer (error, timeout), by status."""
        return {status: count for status, count in sorted(self.suite_statuses.items())
                if status in UNFINISHED_STATUSES}


class Executor(Protocol):
    def run(self, cells: list[PlannedCell], store: ResultStore, progress: Progress) -> None: ...


def pending_cells(cells: list[PlannedCell], store: ResultStore, retry_failed: bool = False,
                  retry_noisy: bool = False) -> list[PlannedCell]:
    """The cells still to run: missing ones, skipped ones the suite no longer skips, with `retry_failed`
    those that ended in error, oom or timeout, and with `retry_noisy` those with a timing flagged noisy."""
    stored = store.stored_cells()
    return [cell for cell in cells if needs_run(cell, stored.get(cell.config_hash), retry_failed, retry_noisy)]


def needs_run(cell: PlannedCell, stored: StoredCell | None, retry_failed: bool, retry_noisy: bool = False) -> bool:
    """Whether a cell stored as `stored` (None: not stored) runs again."""
    if stored is None:
        return True
    if stored.status == "skipped":
        return cell.skip_reason is None
    return (retry_failed and stored.status in RETRIABLE_STATUSES) or (retry_noisy and stored.noisy)


def check_settings_match(cells: list[PlannedCell], store: ResultStore) -> None:
    """Refuse a run into a folder that holds cells of the suite's kind (profiling or training) none of which was
    measured with the suite's [measure] settings: name each setting that differs, old -> new. A folder that
    already holds the suite's settings (a resume, or a series kept with --add) passes. A cell file written
    before rows recorded their settings counts as the suite's when its config hash is one of the suite's (the
    hash covers the settings), else as unknown settings."""
    trains = cells[0].training is not None
    wanted = cells[0].measure_settings
    suite_hashes = {cell.config_hash for cell in cells}
    stored = {h: c for h, c in store.stored_cells().items() if (c.measurement == TRAIN_MEASUREMENT) == trains}
    if not stored or suite_hashes & stored.keys():
        return
    known = [json.loads(text) for text in sorted({c.measure_settings for c in stored.values()} - {None})]
    if wanted in known:
        return
    differing = {key: sorted({_shown(old.get(key)) for old in known if old.get(key) != wanted.get(key)})
                 for key in sorted({key for old in known for key in old} | wanted.keys())}
    changes = [f"{key} {' or '.join(old)} -> {_shown(wanted.get(key))}" for key, old in differing.items() if old]
    unknown = sum(c.measure_settings is None for c in stored.values())
    if unknown:
        changes.append(f"{unknown} cells of unknown settings (written before ttt-bench recorded them)")
    raise BlendedSettingsError(
        f"{store.root}: none of its cells was measured with this suite's [measure] settings ({'; '.join(changes)}): "
        f"a report would blend them; run into another folder (--out), or pass --add to keep both in this one "
        f"(reports then draw them as separate series)"
    )


def _shown(value: object) -> str:
    return "unset" if value is None else str(value)


def busy_machine_warning(threads: int | None) -> str | None:
    """A warning when the threads (None: torch's default) exceed the cores the machine's load leaves free
    (cpus_available minus the whole tasks of the 1-minute load average, at least 1: the average lags by a minute,
    so the fraction a just-finished job leaves behind is not a busy core); None when they fit or the load
    cannot be read."""
    cpus, load = cpus_available(), load_average()
    if load is None:
        return None
    free = max(1, cpus - math.floor(load))
    used = threads or torch.get_num_threads()
    if used <= free:
        return None
    source = "" if threads else " (torch's default: [measure] threads is unset)"
    return (f"ttt-bench: warning: threads = {used}{source} exceed the cores free, {free} ({cpus} CPUs available, "
            f"1-minute load average {load:.2f}): the timings will contend for the cores and be flagged noisy; set "
            f"[measure] threads = {free} or run on an idle machine")


def run_suite(
    suite: Suite,
    out: str | Path,
    *,
    retry_failed: bool = False,
    retry_noisy: bool = False,
    add: bool = False,
    executor: Executor | None = None,
    show_progress: bool = True,
) -> RunSummary:
    """Run what is missing of `suite` into `out`; refused while another run writes there, and (unless `add`)
    into a folder whose cells were measured with other [measure] settings. A run with something to do is
    recorded under runs/<run_id>/ and its rows carry the run_id."""
    refuse_while_a_worker_imports_the_script()
    cells = suite.cells()
    check_devices(cells)
    store = ResultStore(out, corrupt_files="quarantine")
    run_id = None
    with store.lock():
        if not add:
            check_settings_match(cells, store)
        pending = pending_cells(cells, store, retry_failed, retry_noisy)
        if pending:
            devices = sorted({cell.cell.device for cell in cells})
            run_id = store.write_run_files({**environment(devices[-1]), **machine_load()}, suite.text)
            pending = [dataclasses.replace(cell, run_id=run_id) for cell in pending]
            warning = busy_machine_warning(suite.settings.threads) if executor is None and "cpu" in devices else None
            if warning is not None:
                print(warning, file=sys.stderr, flush=True)
        progress = Progress(len(pending), enabled=show_progress)
        (executor or LocalExecutor()).run(pending, store, progress)
        progress.close()
        statuses = store.statuses()
    ran = Counter(statuses.get(cell.config_hash, "missing") for cell in pending)
    final = Counter(statuses.get(cell.config_hash, "missing") for cell in cells)
    return RunSummary(total=len(cells), already_done=len(cells) - len(pending), ran=len(pending),
                      statuses=dict(ran), suite_statuses=dict(final), run_id=run_id)


def refuse_while_a_worker_imports_the_script() -> None:
    """A worker started by spawn imports the main script again; a script that calls run_suite without the
    `if __name__ == "__main__":` guard would run the suite once more in there (and be refused by its own lock).
    Exit that worker with one line; its parent then says the same (WorkerStartError)."""
    # multiprocessing's own check for this state (Process.start refusing to run while the main module imports).
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SystemExit("ttt-bench: error: a worker process, importing the script again, reached run_suite: put the "
                         "call under `if __name__ == \"__main__\":` (workers are started with multiprocessing's spawn)")


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
            rows = write_rows(store, cell, worker.run(cell))
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
        """The cell's tidy rows, with the CPUs available and the load as it started; a crash or a timeout
        becomes rows with that status."""
        if self._process is None or not self._process.is_alive():
            self._start()
        started, load = now_utc(), machine_load()  # the worker inherits this process's affinity mask
        return [{**row, **load} for row in self._rows(cell, started)]

    def _rows(self, cell: PlannedCell, started: str) -> list[dict[str, object]]:
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
        self._process = self._context.Process(target=_worker_main, args=(child, os.getpid()), daemon=True)
        self._process.start()
        child.close()
        self._connection = parent
        # The start (a fresh interpreter importing torch) must not count against the first cell's timeout.
        if not parent.poll(WORKER_START_TIMEOUT_S):
            self._kill()
            raise WorkerStartError(f"the worker process did not start within {WORKER_START_TIMEOUT_S} s")
        try:
            parent.recv()
        except (EOFError, OSError):
            self._process.join(timeout=5)
            message = describe_exit(self._process.exitcode, before="it was ready")
            self._kill()
            raise WorkerStartError(
                f"{message}, while starting (its own error, if it printed one, is above); a script that calls "
                f"run_suite needs the call under `if __name__ == \"__main__\":`, because workers are started with "
                f"multiprocessing's spawn, which imports the script again"
            ) from None

    def _kill(self) -> None:
        if self._process is not None:
            _kill_group(self._process.pid)
            if self._process.is_alive():
                self._process.kill()
            self._process.join(timeout=10)
            self._process = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class WorkerStartError(RuntimeError):
    """The worker process died or hung before it was ready to take a cell."""


def _kill_group(pgid: int | None) -> None:
    """SIGKILL the worker's process group (its id is the worker's pid) with whatever a cell started in it; nothing
    where there is no such group (the worker had not made it yet, or it is gone) or no process groups (Windows)."""
    if pgid is None or not hasattr(os, "killpg"):
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(exitcode: int | None, before: str = "returning a result") -> str:
    """What a worker's exit code tells, and no more: a SIGKILL comes from outside the worker, but not saying whom."""
    if exitcode is not None and exitcode < 0:
        signum = signal.Signals(-exitcode)
        if signum == signal.SIGKILL:
            return (f"the worker process was killed by signal {signum.value} ({signum.name}) from outside it: the "
                    f"kernel's out-of-memory killer sends it, so do people and schedulers; nothing here says which")
        return f"the worker process died from signal {signum.value} ({signum.name})"
    return f"the worker process exited with code {exitcode} before {before}"


def _worker_main(connection: Connection, parent_pid: int) -> None:
    # Ctrl-C goes to the terminal's process group; the parent decides what happens to the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _lead_own_group_and_die_with(parent_pid)
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


def _lead_own_group_and_die_with(parent_pid: int) -> None:
    """In the worker: lead a process group of its own (what the parent kills on a timeout or a stop, so processes a
    cell starts die too), and kill that group when the parent dies: on Linux the kernel's parent-death signal
    (SIGHUP here), and on every OS a thread that sees the parent change (it also covers a parent that died before
    the signal was asked for, and a main thread that cannot run a signal handler while it is inside a C call)."""
    if hasattr(os, "setsid"):
        os.setsid()
    if sys.platform.startswith("linux"):
        signal.signal(signal.SIGHUP, _kill_own_group)
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGHUP), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watching thread still covers it
    # PR_SET_PDEATHSIG fires when the parent's thread that started this process ends; that thread outlives the Worker.
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_WATCH_INTERVAL_S)
    _kill_own_group()


def _kill_own_group(*_signal_args: object) -> None:
    if hasattr(os, "killpg"):
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(1)


def write_rows(store: ResultStore, cell: PlannedCell, rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Store the cell's rows; rows the store cannot encode (a value past its column's type) are stored as the cell's
    'error' rows saying so, and the sweep goes on. The rows stored."""
    try:
        store.write_cell(cell.config_hash, rows)
        return rows
    except ValueError as error:
        failed = failure_rows(cell, "error", f"its rows could not be stored: {error}",
                              rows[0].get("started_at"))
        store.write_cell(cell.config_hash, failed)
        return failed


def failure_rows(cell: PlannedCell, status: str, message: str, started: str) -> list[dict[str, object]]:
    """Rows for a cell whose worker gave no result: its config, the status and what happened."""
    return [
        {**cell.config_columns(), "measurement": measurement, "status": status, "message": message,
         "started_at": started, "finished_at": now_utc()}
        for measurement in cell.measurements
    ]
