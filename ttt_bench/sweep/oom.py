"""The out-of-memory frontier: for each layer variant, the largest N whose forward+backward (or forward)
fits a memory budget at fixed batch and width, found by doubling until a failure and then bisection.

On CPU the budget is the tracked live tensor bytes (ttt_bench.profile.memory): a probe above it is 'oom'
wherever it runs, so the search is deterministic and testable anywhere. On CUDA the allocator is capped
at the budget too (a fraction of the card by default). Every probe is a cell of the results folder, run
in the crash-isolated worker, so a rerun reuses the probes already made.

Beside the search, the peaks measured at a few small N are fitted with a polynomial in N
(ttt_bench.profile.memory_fit), which predicts the frontier for any budget (say an 80 GB card).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ttt_bench.profile.env import environment
from ttt_bench.profile.memory_fit import MemoryFit, fit_memory
from ttt_bench.results import PASS_OF_MEASUREMENT, GiB, ResultStore
from ttt_bench.sweep.plan import PlannedCell, Suite
from ttt_bench.sweep.progress import Progress
from ttt_bench.sweep.runner import Worker, check_devices
from ttt_bench.sweep.schema import OomSettings, SuiteError


@dataclass(frozen=True)
class Probe:
    seq_len: int
    status: str
    peak_bytes: float  # tracked live bytes of the pass (NaN unless ok)
    cuda_peak_bytes: float  # NaN off CUDA
    message: str = ""

    @property
    def fits(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Frontier:
    status: str  # 'found'; 'capped' (fits at max_seq_len); 'none fits' (fails at min_seq_len); or a probe's failure
    max_seq_len: int | None  # the largest N that fit
    first_failing_seq_len: int | None  # the smallest N seen to fail
    at_max: Probe | None
    probes: int
    message: str = ""


def search_frontier(probe: Callable[[int], Probe], settings: OomSettings) -> Frontier:
    """Double from start_seq_len until a probe fails (or halve until one fits), then bisect until the
    fitting and the failing N are at most `resolution` apart; N stays a multiple of `resolution` above it."""
    seen: dict[int, Probe] = {}

    def run(seq_len: int) -> Probe:
        seen[seq_len] = probe(seq_len)
        return seen[seq_len]

    def stopped(result: Probe) -> Frontier:
        fitting = [p for p in seen.values() if p.fits]
        best = max(fitting, key=lambda p: p.seq_len) if fitting else None
        return Frontier(result.status, best and best.seq_len, None, best, len(seen), result.message)

    lo: Probe | None = None
    hi: Probe | None = None
    seq_len = settings.start_seq_len
    while True:
        result = run(seq_len)
        if result.status not in ("ok", "oom"):
            return stopped(result)
        if result.fits:
            lo = result
            if hi is not None or seq_len >= settings.max_seq_len:
                break
            seq_len = min(2 * seq_len, settings.max_seq_len)
        else:
            hi = result
            if lo is not None:
                break
            if seq_len // 2 < settings.min_seq_len:
                return Frontier("none fits", None, seq_len, None, len(seen),
                                f"N = {seq_len} does not fit and min_seq_len = {settings.min_seq_len}")
            seq_len //= 2
    if hi is None:
        return Frontier("capped", lo.seq_len, None, lo, len(seen), f"fits at max_seq_len = {settings.max_seq_len}")
    step = settings.resolution
    while hi.seq_len - lo.seq_len > step:
        middle = lo.seq_len + max(step, (hi.seq_len - lo.seq_len) // 2 // step * step)
        result = run(middle)
        if result.status not in ("ok", "oom"):
            return stopped(result)
        lo, hi = (result, hi) if result.fits else (lo, result)
    return Frontier("found", lo.seq_len, hi.seq_len, lo, len(seen))


def budget_bytes(suite: Suite, device: str) -> int:
    """[oom].budget_gib if set; else, on CUDA, budget_fraction of the card; on CPU cpu_budget_gib."""
    settings = suite.oom
    if settings.budget_gib is not None:
        return int(settings.budget_gib * GiB)
    if device.startswith("cuda"):
        return int(settings.budget_fraction * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return int(settings.cpu_budget_gib * GiB)


def frontier_table(suite: Suite, out: str | Path, show_progress: bool = True) -> pd.DataFrame:
    """Search every variant and grid point of `suite` (grid.seq_len is not used) into `out`; the table
    has one row per variant and point: the measured frontier, the fit and its predictions."""
    if suite.trains:
        raise SuiteError(f"{suite.path}: this suite trains models (it lists 'tasks'); the out-of-memory search "
                         f"measures layers: run it on a profiling suite such as suites/oom.toml")
    settings = suite.oom
    pass_name = PASS_OF_MEASUREMENT[settings.measurement]
    searches = [cell for cell in suite.variant_cells(settings.start_seq_len) if cell.skip_reason is None]
    if not searches:
        raise SuiteError(f"{suite.path}: no layer variant is left to search after the 'exclude' and 'only' rules")
    check_devices(searches)
    store = ResultStore(out)
    rows = []
    with store.lock(), Worker() as worker:
        store.write_run_files(environment(searches[0].cell.device), suite.text)
        progress = Progress(len(searches), enabled=show_progress)
        for planned in searches:
            budget = budget_bytes(suite, planned.cell.device)

            def probe(seq_len: int, planned=planned, budget=budget) -> Probe:
                return run_probe(worker, store, probe_cell(planned, seq_len, budget, pass_name))

            name = planned.describe(with_seq_len=False)
            progress.start(name)
            start = time.perf_counter()
            frontier = search_frontier(probe, settings)
            fitted = [probe(n) for n in sorted(set(settings.fit_seq_lens))]
            fit = fit_memory([p.seq_len for p in fitted if p.fits], [p.peak_bytes for p in fitted if p.fits])
            rows.append(frontier_row(planned, settings, budget, frontier, fit))
            progress.finish(f"{name}: {frontier.status}, max N {frontier.max_seq_len}", frontier_status(frontier),
                            time.perf_counter() - start)
        progress.close()
    table = pd.DataFrame(rows)
    table.to_csv(store.root / "oom_frontier.csv", index=False)
    return table


def frontier_status(frontier: Frontier) -> str:
    return "ok" if frontier.status in ("found", "capped", "none fits") else frontier.status


def probe_cell(planned: PlannedCell, seq_len: int, budget: int, pass_name: str) -> PlannedCell:
    return dataclasses.replace(
        planned,
        cell=dataclasses.replace(planned.cell, seq_len=seq_len),
        metrics=("memory",),
        passes=(pass_name,),
        settings=dataclasses.replace(planned.settings, memory_budget_gib=budget / GiB),
    )


def run_probe(worker: Worker, store: ResultStore, cell: PlannedCell) -> Probe:
    """A probe's result from the results folder when a previous search made it, else from the worker."""
    rows = store.read_cell(cell.config_hash)
    if rows is None:
        store.write_cell(cell.config_hash, worker.run(cell))
        rows = store.read_cell(cell.config_hash)  # read back, so a new probe and a stored one look alike
    row = rows.iloc[0]

    def number(column: str) -> float:
        value = row.get(column)
        return math.nan if value is None else float(value)

    return Probe(cell.cell.seq_len, str(row["status"]), number("peak_bytes"), number("cuda_peak_bytes"),
                 str(row.get("message") or ""))


def frontier_row(planned: PlannedCell, settings: OomSettings, budget: int, frontier: Frontier,
                 fit: MemoryFit | None) -> dict[str, object]:
    cell = planned.cell
    at_max = frontier.at_max
    row: dict[str, object] = {
        "variant": planned.variant, "layer": cell.layer, "batch": cell.batch, "d_model": cell.d_model,
        "n_heads": cell.n_heads, "dtype": cell.dtype, "device": cell.device, "measurement": settings.measurement,
        "budget_bytes": budget, "status": frontier.status, "message": frontier.message,
        "max_seq_len": frontier.max_seq_len, "first_failing_seq_len": frontier.first_failing_seq_len,
        "resolution": settings.resolution, "probes": frontier.probes,
        "peak_bytes_at_max": at_max.peak_bytes if at_max else math.nan,
        "cuda_peak_bytes_at_max": at_max.cuda_peak_bytes if at_max else math.nan,
        "fit_seq_lens": ",".join(map(str, fit.seq_lens)) if fit else "",
    }
    coefficients = fit.coefficients if fit else (math.nan,) * 3
    row.update(fit_bytes=coefficients[0], fit_bytes_per_token=coefficients[1], fit_bytes_per_token_sq=coefficients[2])
    row["predicted_max_seq_len"] = fit.max_seq_len(budget) if fit else math.nan
    for gib in settings.predict_budget_gib:
        row[f"predicted_max_seq_len_at_{gib:g}_gib"] = fit.max_seq_len(gib * GiB) if fit else math.nan
    return row
