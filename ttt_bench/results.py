"""The row vocabulary of ttt-bench and the results folder that stores it.

A result is a tidy row per (cell, measurement). Every column a row may carry is declared once, in COLUMNS
below (name, type, unit, meaning; for a metric also its heading, shown scale, better direction and whether
it repeats exactly), with the statuses and the measurements. The sweep writes these rows, the report,
compare and the CI gate read them, and docs/result-columns.md is generated from the same declaration.

    results/<folder>/
      cells/<config_hash>.parquet   the cell's rows, written whole or not at all, in one fixed schema (SCHEMA)
      cells/_quarantine/            cell files a run found unreadable, moved aside (their cells run again)
      runs/<run_id>/suite.toml      every run into the folder, kept: the suite file as it was run
      runs/<run_id>/env.json        and the environment it ran in (with the CPUs available and the load)
      env.json                      a copy of the latest run's environment
      suite.toml                    a copy of the latest run's suite file
      .lock                         held while a run writes here

A run that measures something gets a run_id (its UTC start, sortable) and every row it writes carries it, so a
row's runs/<run_id>/ says which suite file and environment produced it. A file appears by an atomic rename once
its rows are on disk, so a kill -9 at any moment leaves every finished cell readable and no partial one.
Rerunning a cell replaces its file: each config hash appears once. Temporary files a kill left behind are
removed when the next run takes the lock; files are created with the permissions the umask allows.
A cell file that cannot be read (garbage, truncated, empty) is named in one warning line and skipped; a run moves
it to cells/_quarantine/ so that its cell is due again, while reading for a report or a comparison leaves the
folder as it is (or, strict, refuses it). A full disk stops a write with one line naming the folder and the space
left (DiskFullError).
Every cell file has the same schema, so `pyarrow.dataset.dataset("<run>/cells")`, DuckDB's
`read_parquet('<run>/cells/*.parquet')`, polars and `pandas.read_parquet("<run>/cells")` read a folder
directly; files written before the schema was fixed are conformed to it when ttt-bench loads them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ttt_bench.errors import ConfigError, DiskFullError

SCHEMA_VERSION = 2  # raise on any change to COLUMNS that an older reader would misread
SCHEMA_VERSION_KEY = b"ttt_bench.schema_version"  # in each cell file's parquet key-value metadata
NOT_AVAILABLE = "not available"  # what the environment says of a fact it cannot know (a number's null)

STATUSES = ("ok", "oom", "error", "timeout", "diverged", "skipped")
# Failures a rerun may cure (`ttt-bench run --retry-failed`); a diverged run diverges again with its seed.
RETRIABLE_STATUSES = ("oom", "error", "timeout")
# Every status that is not a result: 'ok' in one set and one of these in another is a regression.
FAILED_STATUSES = (*RETRIABLE_STATUSES, "diverged")
# Cells that gave no answer at all (oom, skipped and diverged are answers): a run that ends with one exits 1.
UNFINISHED_STATUSES = ("error", "timeout")

PASSES = ("fwd_bwd", "fwd")  # what a profiling cell measures unless its suite asks: forward+backward and forward
# Inference (docs/measurement.md#inference): the prompt's forward under inference_mode returning the state, and
# the time of each generated token after it.
INFERENCE_PASSES = ("prefill", "decode")
ALL_PASSES = (*PASSES, *INFERENCE_PASSES)
MEASUREMENT_OF_PASS = {"fwd_bwd": "forward_backward", "fwd": "forward", "prefill": "prefill", "decode": "decode"}
PASS_OF_MEASUREMENT = {measurement: name for name, measurement in MEASUREMENT_OF_PASS.items()}
PROFILE_MEASUREMENTS = tuple(MEASUREMENT_OF_PASS[name] for name in ALL_PASSES)
DEFAULT_MEASUREMENTS = tuple(MEASUREMENT_OF_PASS[name] for name in PASSES)
BACKENDS = ("eager", "compile")  # how a profiling cell runs its layer: as written, or through torch.compile
TRAIN_MEASUREMENT = "train"  # a training cell's one summary row
POSITION_MEASUREMENT = "loss_by_position"  # a per-token task's held-out loss over a bin of positions
EVAL_MEASUREMENT = "eval"  # one evaluation during training: a point of the learning curve
MEASUREMENTS = (*PROFILE_MEASUREMENTS, TRAIN_MEASUREMENT, EVAL_MEASUREMENT, POSITION_MEASUREMENT)

MiB, GiB = 2**20, 2**30
# A timing whose p80 / p20 is above this is flagged noisy (docs/measurement.md): on an idle machine the calls of
# one cell stay within a few percent of each other; contention for the cores shows as a spread of 2x or more.
NOISY_SPREAD = 1.5

QUARANTINE_DIR = "_quarantine"  # under cells/; the '_' keeps pyarrow.dataset and pandas from reading inside it
CORRUPT_FILE_POLICIES = ("skip", "quarantine", "fail")  # what a store does with a cell file it cannot read


@dataclass(frozen=True)
class Column:
    """One column of the result rows. A metric has a `label`: the heading it is shown under, ending with
    the shown unit (stored value x `scale`)."""

    name: str
    type: pa.DataType
    unit: str  # of the stored value; '' for names and text
    doc: str
    kind: str  # 'config', 'outcome', 'metric', 'run' or 'environment'
    label: str | None = None
    scale: float = 1.0
    better: str = "lower"  # 'lower' or 'higher'
    deterministic: bool = False  # the same code and config give the same value on any run (no timer in it)
    compared: bool = False  # in `ttt-bench compare`'s default set of metrics
    gate_tolerance: float | None = None  # relative change the CI gate allows (timings have their own rule)

    def shown(self, value: float) -> float:
        return value * self.scale


def _columns(kind: str, *specs: tuple) -> list[Column]:
    """(name, type, unit, doc[, {metric fields}]) -> Columns of one kind."""
    return [Column(*spec[:4], kind, **(spec[4] if len(spec) > 4 else {})) for spec in specs]


STRING, INT, FLOAT = pa.string(), pa.int64(), pa.float64()
TIMESTAMP = pa.timestamp("ms", tz="UTC")

COLUMNS: tuple[Column, ...] = (
    *_columns(
        "config",
        ("suite", STRING, "", "the suite's name"),
        ("config_hash", STRING, "", "the cell's identity: a hash of its config and of how it is measured"),
        ("variant", STRING, "", "the suite's label for the layer with its knobs"),
        ("layer", STRING, "", "the registered layer name"),
        ("seq_len", INT, "tokens", "sequence length N"),
        ("batch", INT, "sequences", "batch size B"),
        ("d_model", INT, "features", "model width D"),
        ("n_heads", INT, "count", "heads H"),
        ("head_dim", INT, "features", "head width d = D / H"),
        ("dtype", STRING, "", "parameter and activation dtype"),
        ("device", STRING, "", "'cpu', 'cuda' or 'cuda:<index>'"),
        ("seed", INT, "", "seeds the initial weights and the inputs (and a training run's data order)"),
        ("backend", STRING, "", f"profiling cells: how the layer ran, one of {', '.join(BACKENDS)} (torch.compile; "
         "empty in results written before it was an axis: eager)"),
        ("amp", pa.bool_(), "", "profiling cells: run under torch.autocast to `dtype` with float32 weights (false: the "
         "whole layer cast to `dtype`; empty in older results: false)"),
        ("knobs", STRING, "", "the layer's knobs as set by the suite (JSON)"),
        ("task", STRING, "", "training cells: the suite's label for the task"),
        ("task_name", STRING, "", "training cells: the registered task"),
        ("task_options", STRING, "", "training cells: the task's options (JSON)"),
        ("n_layers", INT, "count", "training cells: blocks of the backbone"),
        ("match_params", STRING, "", "training cells: the layer or parameter count the backbone is matched to"),
        ("model_settings", STRING, "", "training cells: the backbone's MLP ratio, pooling and position "
         "initialisation (JSON)"),
        ("train_settings", STRING, "", "training cells: the outer loop's settings (JSON; lr: the task's default "
         "where the suite set none)"),
        ("measure_settings", STRING, "", "how the cell was measured: the suite's [measure] settings that shape "
         "its numbers (JSON); rows that differ here are never averaged together"),
    ),
    *_columns(
        "outcome",
        ("measurement", STRING, "", f"what the row measures: one of {', '.join(MEASUREMENTS)}"),
        ("status", STRING, "", f"one of {', '.join(STATUSES)}"),
        ("message", STRING, "", "why a cell is not ok (empty when it is)"),
        ("task_description", STRING, "", "training cells: the data the task loaded"),
        ("uncounted_ops", STRING, "", "ops a FLOP counter met without a rule, 'counter:op;...'"),
        ("noisy", pa.bool_(), "", f"the timing's spread (time_spread) is above NOISY_SPREAD = {NOISY_SPREAD:g}: "
         "the median is not a result to fit or compare"),
    ),
    *_columns(
        "metric",
        ("time_ms", FLOAT, "ms", "median wall-clock of one call (decode rows: of one generated token)",
         {"label": "time (ms)", "compared": True}),
        ("time_p20_ms", FLOAT, "ms", "20th percentile of the timed calls", {"label": "time p20 (ms)"}),
        ("time_p80_ms", FLOAT, "ms", "80th percentile of the timed calls", {"label": "time p80 (ms)"}),
        ("time_repeats", INT, "count", "timed calls"),
        ("time_spread", FLOAT, "ratio", "p80 / p20 of the timed calls: 1 is a steady clock",
         {"label": "spread p80/p20 (ratio)"}),
        ("tokens_per_sample", INT, "tokens", "decode rows: generated tokens per timed sample (consecutive steps, "
         "enough for a sample to last 1 ms, so the timer's jitter does not swamp a short step); time_ms and its "
         "percentiles are per token, time_repeats counts samples"),
        ("tokens_per_s", FLOAT, "tokens/s", "B x N over the median time (decode rows: B; training cells: over "
         "training)",
         {"label": "throughput (tokens/s)", "better": "higher"}),
        ("tflops_per_s", FLOAT, "TFLOP/s", "analytic FLOPs over the median time (training cells: over training)",
         {"label": "achieved (TFLOP/s)", "better": "higher"}),
        ("peak_bytes", INT, "bytes", "peak of the tracked live tensor bytes during the call",
         {"label": "peak tracked memory (MiB)", "scale": 1 / MiB, "deterministic": True, "compared": True,
          "gate_tolerance": 0.0}),
        ("cuda_peak_bytes", INT, "bytes", "torch.cuda.max_memory_allocated during the call",
         {"label": "CUDA peak memory (MiB)", "scale": 1 / MiB, "compared": True, "gate_tolerance": 0.0}),
        ("nvml_used_bytes", INT, "bytes", "the card's used memory (NVML) after the cell"),
        ("state_bytes", INT, "bytes", "prefill and decode rows: the bytes of the state the layer carries to the next "
         "token (attention's KV cache; the fast weights and pending mini-batch of a recurrent or TTT layer), measured "
         "from its tensors after the prompt", {"label": "decode state (MiB)", "scale": 1 / MiB, "deterministic": True,
                                               "compared": True, "gate_tolerance": 0.0}),
        ("state_bytes_stated", INT, "bytes", "prefill and decode rows: the state's bytes as the layer states them "
         "(decode_state_numel x the element size of `dtype`), beside the measured state_bytes; train rows: the "
         "whole model's recurrent state per sequence after N tokens, from the same figure (empty: the layer cannot "
         "decode)"),
        ("compile_s", FLOAT, "s", "backend 'compile': wall-clock of the pass's first call, which compiles it; kept out "
         "of the timed calls; train rows with [train] compile: the first step's, inside train_time_s and out of "
         "step_time_ms", {"label": "compile time (s)"}),
        ("compile_error", FLOAT, "ratio", "backend 'compile': max |compiled - eager| / max |eager| of the pass's "
         "outputs on the same input, checked before timing"),
        ("eager_time_ms", FLOAT, "ms", "backend 'compile': the median time of the same pass through the eager layer, "
         "timed in the same cell in rounds interleaved with the compiled calls (decode: per token)"),
        ("compile_speedup", FLOAT, "ratio", "backend 'compile': eager / compiled time, the median over interleaved "
         "rounds (above 1: compiling made the pass faster); a ratio measured in one process survives the machine's "
         "drift, which times of cells measured apart do not", {"label": "speed-up (eager / compiled, x)",
                                                                 "better": "higher"}),
        ("compile_speedup_spread", FLOAT, "ratio", "backend 'compile': p80 / p20 of the per-round speed-ups; above "
         "NOISY_SPREAD the speed-up is noise"),
        ("profiled_time_ms", FLOAT, "ms", "metric op_time: wall-clock of one call under torch.profiler, whose own "
         "cost per operator is included (decode rows: per generated token); the denominator of matmul_time_share",
         {"label": "profiled time (ms)"}),
        ("matmul_time_ms", FLOAT, "ms", "metric op_time: self time of the matrix-product operators "
         "(op_policy.MATMUL_OPS, fused attention kernels included) in one profiled call; on CUDA the device time "
         "of the kernels they launched", {"label": "matrix products, self (ms)"}),
        ("other_time_ms", FLOAT, "ms", "metric op_time: self time of every other operator in one profiled call (CUDA: "
         "the rest of the device's time); profiled_time_ms less both is time outside any operator (the Python "
         "between operators, the autograd engine's work around backward nodes, a hand-written backward's Python; "
         "CUDA: the device waiting for the host)", {"label": "other operators, self (ms)"}),
        ("matmul_time_share", FLOAT, "fraction", "metric op_time: matmul_time_ms / profiled_time_ms, the share of the "
         "call spent in matrix products: high in a compute-bound call, low in one that is overhead-bound",
         {"label": "matrix-product share of the time (fraction)", "better": "higher"}),
        ("ops_per_call", FLOAT, "count", "metric op_time: operators launched per call (ATen's and any library's; "
         "nested calls included: each passes the dispatcher); many small operators make a call overhead-bound",
         {"label": "operators per call (count)"}),
        ("memory_budget_bytes", INT, "bytes", "the tracked-bytes budget the cell ran under (empty: none)"),
        ("macs", INT, "MACs", "analytic multiply-accumulates of one call, as executed (dense)",
         {"label": "MACs per call (MACs)", "deterministic": True}),
        ("flops", INT, "FLOPs", "analytic FLOPs of one call: 2 per multiply-add",
         {"label": "FLOPs per call (FLOPs)", "deterministic": True, "compared": True, "gate_tolerance": 0.0}),
        ("useful_macs", FLOAT, "MACs", "the part of the analytic MACs a causal mask keeps"),
        ("useful_flops", FLOAT, "FLOPs", "the part of the analytic FLOPs a causal mask keeps"),
        ("macs_per_token", FLOAT, "MACs", "analytic MACs of one call over B x N"),
        ("final_state_macs", INT, "MACs", "forward work that only produces the final recurrent state"),
        ("state_numel", INT, "elements", "the recurrent state per sequence (empty: no state, as in attention)"),
        ("macs_fvcore", FLOAT, "MACs", "forward MACs counted by fvcore's tracer"),
        ("macs_flop_counter", INT, "MACs", "MACs counted by torch's FlopCounterMode"),
        ("matmul_tflops_per_s", FLOAT, "TFLOP/s", "a dense matmul's rate measured in the same worker, dtype and "
         "threads: the ceiling the cell's TFLOP/s is read against"),
        ("accuracy", FLOAT, "fraction correct", "held-out accuracy at the end of training",
         {"label": "accuracy (fraction correct)", "better": "higher", "deterministic": True, "compared": True,
          "gate_tolerance": 0.01}),
        ("eval_loss_nats", FLOAT, "nats/token", "held-out cross-entropy (loss_by_position rows: over the bin)",
         {"label": "held-out loss (nats/token)", "deterministic": True, "compared": True, "gate_tolerance": 0.01}),
        ("train_loss_nats", FLOAT, "nats/token", "training cross-entropy of the last steps",
         {"label": "training loss (nats/token)", "deterministic": True}),
        ("params", INT, "count", "trainable parameters of the model", {"label": "parameters (count)",
                                                                        "deterministic": True}),
        ("mlp_hidden", INT, "features", "the backbone's MLP width (after parameter matching)"),
        ("flops_per_token", FLOAT, "FLOPs", "the model's analytic forward FLOPs per token",
         {"label": "forward FLOPs per token (FLOPs)", "deterministic": True}),
        ("train_flops_per_token", FLOAT, "FLOPs", "the model's analytic forward+backward FLOPs per token"),
        ("train_flops", FLOAT, "FLOPs", "analytic FLOPs of the whole training run",
         {"label": "training FLOPs (FLOPs)", "deterministic": True}),
        ("train_time_s", FLOAT, "s", "wall-clock of the training steps", {"label": "training time (s)",
                                                                          "compared": True}),
        ("steps", INT, "count", "optimiser steps taken"),
        ("steps_to_target", INT, "count", "steps until the target accuracy was first reached (empty: never)"),
        ("target_accuracy", FLOAT, "fraction correct", "train and eval rows: the suite's target accuracy (0: none)"),
        ("step_time_ms", FLOAT, "ms", "train rows: wall-clock per optimiser step (train_time_s / steps; compiled: the "
         "steps after the first)",
         {"label": "time per training step (ms)"}),
        ("chance_accuracy", FLOAT, "fraction correct", "train and eval rows: a uniform guess among the task's "
         "answers, from its data"),
        ("floor_accuracy", FLOAT, "fraction correct", "train and eval rows: the best accuracy reachable without "
         "the capability the task probes (floor_name), from its data"),
        ("floor_name", STRING, "", "train rows: the strategy floor_accuracy scores, in words"),
        ("step", INT, "count", "eval rows: optimiser steps taken before the evaluation"),
        ("tokens_seen", INT, "tokens", "eval rows: training tokens (B x N per step) before the evaluation"),
        ("position", INT, "token index", "loss_by_position rows: the bin's first position"),
        ("position_end", INT, "token index", "loss_by_position rows: the bin's end (exclusive)"),
    ),
    *_columns(
        "run",
        ("started_at", TIMESTAMP, "UTC", "when the cell started"),
        ("finished_at", TIMESTAMP, "UTC", "when the cell finished"),
        ("wall_s", FLOAT, "s", "the whole cell's wall-clock in its worker, setup included"),
        ("run_id", STRING, "", "the `ttt-bench run` that wrote the cell: runs/<run_id>/ holds its suite and "
         "environment"),
    ),
    *_columns(
        "environment",
        ("torch_version", STRING, "", "torch.__version__"),
        ("cuda_version", STRING, "", "the CUDA torch was built with"),
        ("python_version", STRING, "", "the interpreter"),
        ("platform", STRING, "", "platform.platform()"),
        ("cpu_model", STRING, "", "the CPU's model name"),
        ("cpu_count", INT, "count", "logical CPUs of the machine"),
        ("threads", INT, "count", "torch's intra-op threads in the worker"),
        ("cpus_available", INT, "count", "CPUs the worker may run on (its affinity mask)"),
        ("load_average", FLOAT, "runnable tasks", "the machine's 1-minute load average when the cell started (it "
         "counts the run's own worker, busy with the cells before)"),
        ("ttt_bench_version", STRING, "", "the installed ttt-bench"),
        ("git_commit", STRING, "", "the ttt-bench checkout's commit ('+dirty' with uncommitted changes)"),
        ("gpu_name", STRING, "", "the CUDA device's name"),
        ("gpu_memory_bytes", INT, "bytes", "the CUDA device's memory"),
        ("driver_version", STRING, "", "the NVIDIA driver (NVML)"),
    ),
)
COLUMN = {column.name: column for column in COLUMNS}
METRICS = {column.name: column for column in COLUMNS if column.label is not None}  # shown, compared and gated
NUMERIC_COLUMNS = tuple(c.name for c in COLUMNS if pa.types.is_integer(c.type) or pa.types.is_floating(c.type))
SCHEMA = pa.schema([pa.field(c.name, c.type) for c in COLUMNS],
                   metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()})


class UnstorableRowsError(ValueError):
    """A row holds a value its column's type cannot store (an integer past int64, text in a number column)."""


def rows_table(rows: list[dict[str, object]]) -> pa.Table:
    """Rows as a table of SCHEMA: undeclared columns, statuses and measurements are refused (a new column is
    declared in COLUMNS first), absent columns are null, ISO timestamps are parsed, 'not available' in a
    numeric column is null. A value its column cannot store raises UnstorableRowsError naming the column."""
    undeclared = sorted({key for row in rows for key in row} - COLUMN.keys())
    if undeclared:
        raise ValueError(f"result columns {undeclared} are not declared; declare each once in ttt_bench/results.py "
                         f"COLUMNS (name, type, unit, meaning)")
    for key, allowed in (("status", STATUSES), ("measurement", MEASUREMENTS)):
        unknown = sorted({str(row.get(key)) for row in rows} - set(allowed))
        if unknown:
            raise ValueError(f"result {key} {unknown} is not one of {list(allowed)} (ttt_bench/results.py)")
    arrays = [_array(column, [row.get(column.name) for row in rows]) for column in COLUMNS]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _array(column: Column, values: list[object]) -> pa.Array:
    try:
        if pa.types.is_timestamp(column.type):
            values = [datetime.fromisoformat(v) if isinstance(v, str) else v for v in values]
        elif column.type != STRING:
            values = [None if isinstance(v, str) and v == NOT_AVAILABLE else v for v in values]
        return pa.array(values, type=column.type, from_pandas=True)
    except (OverflowError, TypeError, ValueError, pa.ArrowException) as error:
        raise UnstorableRowsError(f"column {column.name} ({column.type}) cannot store {_first_line(error)}") from None


def conform(table: pa.Table) -> pa.Table:
    """A cell file's table in SCHEMA: a current file as it is; an older one (columns typed by their values,
    nulls as a null type, timestamps as text), or one written before a column was declared, converted (the
    columns it lacks are null), its undeclared columns kept after the declared ones."""
    current = table.schema.metadata and table.schema.metadata.get(SCHEMA_VERSION_KEY) == str(SCHEMA_VERSION).encode()
    if current and table.schema.names == SCHEMA.names:
        return table
    frame = table.to_pandas()
    profiled = frame["measurement"].isin(PROFILE_MEASUREMENTS) if "measurement" in frame else False
    for name, before_the_axis in (("backend", "eager"), ("amp", False)):  # what every older profiling cell ran as
        if name not in frame:
            frame[name] = None
        frame[name] = frame[name].astype(object).where(~(profiled & frame[name].isna()), before_the_axis)
    present = [name for name in SCHEMA.names if name in frame]
    declared = rows_table(frame[present].astype(object).where(frame[present].notna(), None).to_dict("records")
                          if present else [{}] * len(frame))
    extra = [name for name in table.column_names if name not in COLUMN]
    for name in extra:
        declared = declared.append_column(table.schema.field(name), table.column(name))
    return declared


class RunLockedError(ConfigError):
    """Another run is writing into the same results folder."""


class CorruptCellFileError(ConfigError):
    """A cell file that cannot be read, met by a strict reader (`ttt-bench report --strict`, `compare --strict`)."""


_warned_corrupt: set[tuple[Path, int, int]] = set()  # (file, size, mtime): a file is named once per process


@dataclass(frozen=True)
class StoredCell:
    """What a rerun needs to know of a finished cell, read from its file."""

    status: str
    measurement: str | None  # of its first row: 'train' marks a training cell
    measure_settings: str | None  # the JSON of its rows; None in a file written before ttt-bench recorded it
    noisy: bool  # one of its timings is flagged noisy


class ResultStore:
    """A results folder. `corrupt_files` says what reading does with a cell file it cannot read: 'skip' it with a
    warning (reports and comparisons: a folder someone sent you is not modified), 'quarantine' it (a run: moved
    to cells/_quarantine/ with a warning, so its cell is due again) or 'fail' (CorruptCellFileError)."""

    def __init__(self, root: str | Path, corrupt_files: str = "skip") -> None:
        if corrupt_files not in CORRUPT_FILE_POLICIES:
            raise ValueError(f"corrupt_files {corrupt_files!r} is not one of {list(CORRUPT_FILE_POLICIES)}")
        self.root = Path(root)
        self.cells_dir = self.root / "cells"
        self.runs_dir = self.root / "runs"
        self.corrupt_files = corrupt_files

    def write_cell(self, config_hash: str, rows: list[dict[str, object]]) -> None:
        """Replace the cell's rows, atomically; rows a column cannot store raise UnstorableRowsError, a full disk
        DiskFullError, and either leaves the cell's file as it was."""
        table = rows_table(rows)
        with _disk_full_as_one_line(self.cells_dir):
            self.cells_dir.mkdir(parents=True, exist_ok=True)
            _replace_atomically(self.cells_dir / f"{config_hash}.parquet", lambda file: pq.write_table(table, file))

    def statuses(self) -> dict[str, str]:
        """config hash -> status of every finished cell."""
        return {config_hash: cell.status for config_hash, cell in self.stored_cells().items()}

    def stored_cells(self) -> dict[str, StoredCell]:
        """config hash -> what the file of every finished cell says of it (an unreadable file: not finished)."""
        cells = {}
        for path, table in self._readable_cells(self._cell_files()):
            values = table.select(["status", "measurement", "measure_settings", "noisy"]).to_pydict()
            first = {name: column[0] for name, column in values.items()}
            cells[path.stem] = StoredCell(
                status=str(first["status"] or "error"), measurement=first["measurement"],
                measure_settings=first["measure_settings"], noisy=any(values["noisy"]),
            )
        return cells

    def modification_times(self) -> dict[str, int]:
        """config hash -> when its file was last written (ns): a rerun cell shows a new time."""
        return {path.stem: path.stat().st_mtime_ns for path in self._cell_files()}

    def read_cell(self, config_hash: str) -> pd.DataFrame | None:
        """The cell's rows, or None when it has not finished (or its file cannot be read)."""
        path = self.cells_dir / f"{config_hash}.parquet"
        readable = dict(self._readable_cells([path] if path.exists() else []))
        return readable[path].to_pandas() if path in readable else None

    def load(self) -> pd.DataFrame:
        """Every finished cell's rows, in the order the cells finished, with every declared column."""
        files = sorted(self._cell_files(), key=lambda p: p.stat().st_mtime_ns)
        tables = [table for _, table in self._readable_cells(files)]
        if not tables:
            return SCHEMA.empty_table().to_pandas()
        return pa.concat_tables(tables, promote_options="default").to_pandas()

    def _readable_cells(self, paths: list[Path]) -> Iterator[tuple[Path, pa.Table]]:
        """(path, table in SCHEMA) of each cell file that reads as one; the others as `corrupt_files` says."""
        for path in paths:
            try:
                table = conform(pq.read_table(path))
                if not table.num_rows:
                    raise ValueError("it holds no rows")
            except (OSError, ValueError, TypeError, pa.ArrowException) as error:
                # pyarrow's message repeats the path the warning names already
                self._set_aside(path, _first_line(error).replace(f"Could not open Parquet input source '{path}': ", ""))
                continue
            yield path, table

    def _set_aside(self, path: Path, reason: str) -> None:
        what = f"{path}: not a readable cell file ({reason})"
        if self.corrupt_files == "fail":
            raise CorruptCellFileError(f"{what}; without --strict it is skipped with a warning, and a `ttt-bench "
                                       f"run` into the folder moves it aside and measures its cell again")
        if self.corrupt_files == "quarantine":
            target = _free_name(self.cells_dir / QUARANTINE_DIR / path.name)
            target.parent.mkdir(exist_ok=True)
            os.replace(path, target)
            _warn(f"{what}; moved to {target}, its cell runs again")
            return
        stat = path.stat()
        key = (path.resolve(), stat.st_size, stat.st_mtime_ns)
        if key not in _warned_corrupt:
            _warned_corrupt.add(key)
            _warn(f"{what}; skipped (a `ttt-bench run` into this folder moves it to cells/{QUARANTINE_DIR}/ and "
                  f"measures its cell again; --strict refuses the folder instead)")

    def write_run_files(self, env: dict[str, object], suite_text: str) -> str:
        """Keep a run's environment and suite file in runs/<run_id>/ and copy them to the top level (the latest
        run's, which readers use); the new run_id."""
        env_text = json.dumps(env, indent=2, default=str) + "\n"
        with _disk_full_as_one_line(self.root):
            run_dir = self._new_run_dir()
            for folder in (run_dir, self.root):
                _replace_atomically(folder / "env.json", lambda file: file.write(env_text.encode()))
                _replace_atomically(folder / "suite.toml", lambda file: file.write(suite_text.encode()))
        return run_dir.name

    def _new_run_dir(self) -> Path:
        """runs/<UTC start to the microsecond>/, made here: run ids sort by time, and no two runs share one."""
        while True:
            run_dir = self.runs_dir / datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            try:
                run_dir.mkdir(parents=True)
                return run_dir
            except FileExistsError:  # a run in the same microsecond: the clock moves on
                continue

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held for a whole run; a second run into the same folder is refused. The kernel drops the lock
        when its process dies, so a killed run never leaves the folder locked; the temporary files such a run
        may have left are removed once the lock is taken (no writer can own them then)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip() or "another process"
                raise RunLockedError(
                    f"{self.root}: another ttt-bench run ({holder}) is writing into this folder; wait for it to "
                    f"finish or choose another --out"
                ) from None
            file.seek(0)
            file.truncate()
            file.write(f"pid {os.getpid()}")
            file.flush()
            self._remove_stale_temporaries()
            try:
                yield
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)

    def _remove_stale_temporaries(self) -> None:
        """The `.<name>.*.tmp` files of _replace_atomically that a kill between their fsync and rename left."""
        patterns = {self.cells_dir: [".*.parquet.*.tmp"]}
        for folder in (self.root, *self.runs_dir.glob("*/")):
            patterns[folder] = [".env.json.*.tmp", ".suite.toml.*.tmp"]
        for folder, names in patterns.items():
            for temporary in (path for name in names for path in folder.glob(name)):
                temporary.unlink(missing_ok=True)

    def _cell_files(self) -> list[Path]:
        return list(self.cells_dir.glob("*.parquet")) if self.cells_dir.is_dir() else []


def load_results(root: str | Path, strict: bool = False) -> pd.DataFrame:
    """The tidy dataframe of a results folder: one row per (cell, measurement). A cell file that cannot be read
    is skipped with a warning on stderr (`strict`: CorruptCellFileError); the folder is never modified."""
    root = Path(root)
    if not (root / "cells").is_dir():
        raise ConfigError(f"{root}: not a ttt-bench results folder (it has no cells/); run `ttt-bench run` into it")
    return ResultStore(root, corrupt_files="fail" if strict else "skip").load()


def columns_reference() -> str:
    """docs/result-columns.md, generated from COLUMNS (a test keeps the committed file equal to it)."""
    lines = ["# Result columns", "",
             "Generated from `ttt_bench/results.py` (`python -m ttt_bench.results > docs/result-columns.md`); "
             f"schema version {SCHEMA_VERSION}. Every cell file has all of these columns, in this order; a "
             "column a row has no value for is null.", "",
             f"Statuses: {', '.join(STATUSES)}. Measurements: {', '.join(MEASUREMENTS)}.", ""]
    for kind in dict.fromkeys(column.kind for column in COLUMNS):
        lines += [f"## {kind}", "", "| column | type | unit | meaning |", "|---|---|---|---|"]
        lines += [f"| `{c.name}` | {c.type} | {c.unit or '—'} | {c.doc}"
                  + (f"; shown as {c.label}, {c.better} is better" if c.label else "") + " |"
                  for c in COLUMNS if c.kind == kind]
        lines.append("")
    return "\n".join(lines)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _warn(message: str) -> None:
    print(f"ttt-bench: warning: {message}", file=sys.stderr, flush=True)


def _free_name(path: Path) -> Path:
    """`path`, or `<stem>.<n><suffix>` beside it for the first n not taken: nothing set aside is overwritten."""
    candidates = (path.with_name(f"{path.stem}.{n}{path.suffix}") for n in itertools.count(1))
    return path if not path.exists() else next(c for c in candidates if not c.exists())


@contextlib.contextmanager
def _disk_full_as_one_line(folder: Path) -> Iterator[None]:
    """A write that finds the disk (or the user's quota) full raises DiskFullError naming `folder` and the space
    left on its disk; whatever was written before stays intact."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        free = shutil.disk_usage(existing).free
        quota = " (or the disk quota is used up)" if error.errno == errno.EDQUOT else ""
        raise DiskFullError(f"{folder}: the disk is full{quota}, {free / MiB:,.1f} MiB free: the finished cells "
                            f"are kept; free some space and rerun the same command to go on") from None


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc/self/status; os.umask can only
    be read by setting it, which races with other threads creating files), else by setting and restoring it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` into a temporary file beside `path`, flush it to disk, then rename it over `path`: a reader
    (or a run killed at any moment) sees the old file or the new one, never a part. The file gets the mode an
    ordinary open() would give it (0666 less the umask), not mkstemp's private 0600."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fchmod(file.fileno(), 0o666 & ~_umask())
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    print(columns_reference(), end="")
