"""The out-of-memory frontier: for each layer variant, the largest N whose forward+backward (or forward, prefill, or
decode) fits a memory budget at fixed batch and width, found by doubling until a failure and then bisection. With
[oom] measurement = "decode" it is the inference frontier: the longest context whose chunked prefill and decoding
fit (profile/inference.py), where attention's KV cache grows with batch x context and a recurrent state does not;
the layers that cannot decode (non-causal ones) are left out of that search, with a line saying so.

On CPU the budget is the tracked live tensor bytes (ttt_bench.profile.memory): a probe above it is 'oom'
wherever it runs, so the search is deterministic and testable anywhere. On CUDA the allocator is capped
at the budget too (a fraction of the card by default). Every probe is a cell of the results folder, run
in the crash-isolated worker, so a rerun reuses the probes already made.

Beside the search, the peaks at a few N below the frontier are fitted with a polynomial in N of the layer's
declared order (ttt_bench.profile.memory_fit), which predicts the frontier for other budgets (say an 80 GiB card)
where the points support it, and says why not where they do not.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from ttt_bench import layers
from ttt_bench.profile.env import environment
from ttt_bench.profile.memory_fit import (
    POINTS_PER_COEFFICIENT,
    MemoryFit,
    declared_memory_order,
    fit_memory,
    points_needed,
)
from ttt_bench.results import PASS_OF_MEASUREMENT, GiB, MiB, ResultStore
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
    stored: bool = False  # taken from the results folder, where an earlier search made it

    @property
    def fits(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        if self.fits:
            outcome = f"fits, peak {self.peak_bytes / MiB:,.1f} MiB"
        else:
            outcome = self.status + (f" ({self.message})" if self.message and self.status != "oom" else "")
        return f"N = {self.seq_len}: {outcome}" + ("; from the results folder" if self.stored else "")


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


def fit_seq_lens(largest: int, count: int, min_seq_len: int) -> list[int]:
    """`count` lengths spread evenly over the upper half of those that fit, largest / 2 ... largest (the
    largest N that fit), each rounded down to a multiple of the largest power of two within the spacing, so
    that no two merge and chunked layers run whole chunks (a partial last chunk puts a peak off its line);
    none below min_seq_len. The upper half because a peak is the largest of the memory at several moments of
    the pass, each a polynomial in N, and at small N another moment (the weights' gradients, say) may hold it
    than at the frontier and beyond."""
    spacing = largest / 2 / max(count - 1, 1)
    grain = 2 ** math.floor(math.log2(spacing)) if spacing >= 1 else 1
    lengths = {math.floor((largest / 2 + j * spacing) / grain) * grain for j in range(count)}
    return sorted(n for n in lengths if n >= max(min_seq_len, 1))


def budget_bytes(suite: Suite, device: str) -> int:
    """[oom].budget_gib if set; else, on CUDA, budget_fraction of the card; on CPU cpu_budget_gib."""
    settings = suite.oom
    if settings.budget_gib is not None:
        return int(settings.budget_gib * GiB)
    if device.startswith("cuda"):
        return int(settings.budget_fraction * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return int(settings.cpu_budget_gib * GiB)


def budget_source(suite: Suite, device: str) -> tuple[str, str]:
    """The budget on `device` in words, and the [oom] key it comes from."""
    gib = f"{budget_bytes(suite, device) / GiB:.4g} GiB"
    if suite.oom.budget_gib is not None:
        return f"{gib} on {device}", "budget_gib"
    if device.startswith("cuda"):
        return f"{gib} on {device}, {suite.oom.budget_fraction:g} of the card", "budget_fraction"
    return f"{gib} of tracked tensor bytes on {device}", "cpu_budget_gib"


def settings_lines(suite: Suite) -> list[str]:
    """What the search will do, each setting with its [oom] key, marked where its value is the default (set or
    not): printed before the search starts, so that a suite without an [oom] table shows what it gets."""
    settings, defaults = suite.oom, OomSettings()
    changed = [f.name for f in dataclasses.fields(OomSettings)
               if getattr(settings, f.name) != getattr(defaults, f.name)]

    def key(*names: str) -> str:
        return ", ".join(name if name in changed else f"{name}: default" for name in names)

    budgets = [budget_source(suite, device) for device in sorted(set(suite.grid["device"]))]
    origin = (f"other than the defaults (by the suite or the command line): {', '.join(changed)}"
              if changed else "every [oom] key at its default")
    fit_budgets = ", ".join(f"{gib:g}" for gib in settings.predict_budget_gib)
    return [
        f"oom search of {suite.name} ({suite.path}): {origin} (docs/suite-keys.md#oom)",
        *(f"  budget: {text} ({key(source)})" for text, source in budgets),
        f"  the pass that must fit: {settings.measurement} ({key('measurement')})",
        f"  N: doubling from {settings.start_seq_len}, within {settings.min_seq_len} ... {settings.max_seq_len}, "
        f"then bisection until the fitting and the failing N are {settings.resolution} apart "
        f"({key('start_seq_len', 'min_seq_len', 'max_seq_len', 'resolution')})",
        f"  memory fit: {POINTS_PER_COEFFICIENT} points per coefficient of the layer's declared order "
        f"({points_needed(1)} for memory ~ N, {points_needed(2)} for ~ N^2), spread evenly from half the largest "
        f"N that fits up to it; predictions at {fit_budgets} GiB ({key('predict_budget_gib')})",
    ]


class Prober:
    """Probes one variant at any N, once per N (from the results folder where an earlier search made the
    probe, else in the worker), with a line per probe on stderr when `announce`."""

    def __init__(self, worker: Worker, store: ResultStore, planned: PlannedCell, budget: int, pass_name: str,
                 announce: bool) -> None:
        self.worker, self.store, self.planned = worker, store, planned
        self.budget, self.pass_name, self.announce = budget, pass_name, announce
        self.name = planned.describe(with_seq_len=False)
        self.seen: dict[int, Probe] = {}

    def probe(self, seq_len: int, purpose: str) -> Probe:
        if seq_len not in self.seen:
            self.seen[seq_len] = run_probe(self.worker, self.store,
                                           probe_cell(self.planned, seq_len, self.budget, self.pass_name))
            if self.announce:
                tqdm.write(f"  {self.name} ({purpose}) {self.seen[seq_len].describe()}", file=sys.stderr)
        return self.seen[seq_len]


def frontier_table(suite: Suite, out: str | Path, show_progress: bool = True) -> pd.DataFrame:
    """Search every variant and grid point of `suite` (grid.seq_len is not used) into `out`; the table
    has one row per variant and point: the measured frontier, the fit and its predictions (or why not).
    With `show_progress`, a line per probe and the progress per variant on stderr."""
    if suite.trains:
        raise SuiteError(f"{suite.path}: this suite trains models (it lists 'tasks'); the out-of-memory search "
                         f"measures layers: run it on a profiling suite such as suites/oom.toml")
    settings = suite.oom
    pass_name = PASS_OF_MEASUREMENT[settings.measurement]
    searches = [cell for cell in suite.variant_cells(settings.start_seq_len) if cell.skip_reason is None]
    if pass_name == "decode":
        searches = _decoding(searches, show_progress)
    if any(planned.cell.backend != "eager" and planned.cell.device == "cpu" for planned in searches):
        raise SuiteError(f"{suite.path}: key 'grid.backend': the CPU frontier is searched on tracked tensor bytes, "
                         f"which compiled kernels allocate outside of; search it with backend = 'eager'")
    if not searches:
        decoding = " and among the layers that decode" if pass_name == "decode" else ""
        raise SuiteError(f"{suite.path}: no layer variant is left to search after the 'exclude' and 'only' "
                         f"rules{decoding}")
    check_devices(searches)
    store = ResultStore(out)
    rows = []
    with store.lock(), Worker() as worker:
        store.write_run_files(environment(searches[0].cell.device), suite.text)
        progress = Progress(len(searches), enabled=show_progress)
        for planned in searches:
            cell = planned.cell
            budget = budget_bytes(suite, cell.device)
            prober = Prober(worker, store, planned, budget, pass_name, announce=show_progress)
            name = prober.name
            progress.start(name)
            start = time.perf_counter()
            frontier = search_frontier(lambda n, prober=prober: prober.probe(n, "search"), settings)
            order = (DECODE_MEMORY_ORDER if pass_name == "decode"
                     else declared_memory_order(cell.layer, cell.d_model, cell.n_heads, cell.overrides))
            fit = fit_below(frontier, order, settings, lambda n, prober=prober: prober.probe(n, "fit"))
            rows.append(frontier_row(planned, settings, budget, frontier, fit))
            outcome = "the fit predicts" if fit.predicts else "no prediction"
            progress.finish(f"{name}: max N {frontier.max_seq_len} ({frontier.status}; {outcome})",
                            frontier_status(frontier), time.perf_counter() - start)
        progress.close()
    table = pd.DataFrame(rows)
    table.to_csv(store.root / "oom_frontier.csv", index=False)
    return table


# Decoding holds a state that grows at most linearly with the context (a KV cache) beside one prefill chunk's work.
DECODE_MEMORY_ORDER = 1


def _decoding(searches: list[PlannedCell], announce: bool) -> list[PlannedCell]:
    """The cells whose layer can decode; a line on stderr for each variant left out."""
    kept = []
    for planned in searches:
        cell = planned.cell
        why = layers.build(cell.layer, d_model=cell.d_model, n_heads=cell.n_heads, **cell.overrides).no_decode_reason
        if why is None:
            kept.append(planned)
        elif announce:
            tqdm.write(f"ttt-bench: {planned.variant}: left out of the decode frontier: it does not decode token by "
                       f"token: {why}", file=sys.stderr)
    return kept


def fit_below(frontier: Frontier, order: int, settings: OomSettings, probe: Callable[[int], Probe]) -> MemoryFit:
    """The memory fit of the layer's declared order to the peaks at fit_seq_lens below the frontier (a length
    the search probed already is not probed again)."""
    if frontier.max_seq_len is None:
        return MemoryFit(order, (), (), note="no N fits the budget, so there is no peak to fit")
    fitting = [p for p in map(probe, fit_seq_lens(frontier.max_seq_len, points_needed(order), settings.min_seq_len))
               if p.fits]
    return fit_memory([p.seq_len for p in fitting], [p.peak_bytes for p in fitting], order)


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
    stored = rows is not None
    if not stored:
        store.write_cell(cell.config_hash, worker.run(cell))
        rows = store.read_cell(cell.config_hash)  # read back, so a new probe and a stored one look alike
    row = rows.iloc[0]

    def number(column: str) -> float:
        value = row.get(column)
        return math.nan if value is None else float(value)

    return Probe(cell.cell.seq_len, str(row["status"]), number("peak_bytes"), number("cuda_peak_bytes"),
                 str(row.get("message") or ""), stored)


def frontier_row(planned: PlannedCell, settings: OomSettings, budget: int, frontier: Frontier,
                 fit: MemoryFit) -> dict[str, object]:
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
        **fit.columns(),
        "predicted_max_seq_len": fit.max_seq_len(budget),
    }
    for gib in settings.predict_budget_gib:
        row[f"predicted_max_seq_len_at_{gib:g}_gib"] = fit.max_seq_len(gib * GiB)
    return row
