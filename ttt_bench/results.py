"""The results folder of a run: one parquet file per finished cell, so appending is crash-safe.

    results/<run>/
      cells/<config_hash>.parquet   the cell's tidy rows (one per measurement), written whole or not at all
      env.json                      the environment of the latest run
      suite.toml                    the suite file as it was run (the latest)
      .lock                         held while a run writes here

A file appears by an atomic rename once its rows are on disk, so a kill -9 at any moment leaves
every finished cell readable and no partial one. Rerunning a cell replaces its file: each config
hash appears once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import pandas as pd

from ttt_bench.errors import ConfigError
from ttt_bench.profile.measure import TIDY_METRIC_COLUMNS
from ttt_bench.sweep.cell import TRAIN_METRIC_COLUMNS

FAILED_STATUSES = ("error", "oom", "timeout")
NUMERIC_COLUMNS = (*TIDY_METRIC_COLUMNS, *TRAIN_METRIC_COLUMNS, "state_numel", "final_state_macs", "nvml_used_bytes",
                   "wall_s", "memory_budget_bytes", "matmul_tflops_per_s")


class RunLockedError(ConfigError):
    """Another run is writing into the same results folder."""


class ResultStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.cells_dir = self.root / "cells"

    def write_cell(self, config_hash: str, rows: list[dict[str, object]]) -> None:
        """Replace the cell's rows, atomically."""
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(rows)
        _replace_atomically(self.cells_dir / f"{config_hash}.parquet", lambda file: frame.to_parquet(file, index=False))

    def statuses(self) -> dict[str, str]:
        """config hash -> status of every finished cell."""
        statuses = {}
        for path in self._cell_files():
            status = pd.read_parquet(path, columns=["status"]).status
            statuses[path.stem] = str(status.iloc[0]) if len(status) else "error"
        return statuses

    def modification_times(self) -> dict[str, int]:
        """config hash -> when its file was last written (ns): a rerun cell shows a new time."""
        return {path.stem: path.stat().st_mtime_ns for path in self._cell_files()}

    def read_cell(self, config_hash: str) -> pd.DataFrame | None:
        """The cell's rows, or None when it has not finished."""
        path = self.cells_dir / f"{config_hash}.parquet"
        return pd.read_parquet(path) if path.exists() else None

    def load(self) -> pd.DataFrame:
        """Every finished cell's rows, in the order the cells finished."""
        files = sorted(self._cell_files(), key=lambda p: p.stat().st_mtime_ns)
        frames = [pd.read_parquet(path) for path in files]
        frames = [frame for frame in frames if not frame.empty]
        if not frames:
            return pd.DataFrame()
        frame = pd.concat(frames, ignore_index=True)
        # A metric that no row of a cell has (a skipped or failed cell) is stored as nulls; keep it numeric.
        for column in NUMERIC_COLUMNS:
            if column in frame and frame[column].dtype == object:
                frame[column] = pd.to_numeric(frame[column])
        return frame

    def write_run_files(self, env: dict[str, object], suite_text: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        env_text = json.dumps(env, indent=2, default=str) + "\n"
        _replace_atomically(self.root / "env.json", lambda file: file.write(env_text.encode()))
        _replace_atomically(self.root / "suite.toml", lambda file: file.write(suite_text.encode()))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held for a whole run; a second run into the same folder is refused. The kernel drops the lock
        when its process dies, so a killed run never leaves the folder locked."""
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
            try:
                yield
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)

    def _cell_files(self) -> list[Path]:
        return list(self.cells_dir.glob("*.parquet")) if self.cells_dir.is_dir() else []


def load_results(root: str | Path) -> pd.DataFrame:
    """The tidy dataframe of a results folder: one row per (cell, measurement)."""
    root = Path(root)
    if not (root / "cells").is_dir():
        raise ConfigError(f"{root}: not a ttt-bench results folder (it has no cells/); run `ttt-bench run` into it")
    return ResultStore(root).load()


def _replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` into a temporary file beside `path`, flush it to disk, then rename it over `path`: a reader
    (or a run killed at any moment) sees the old file or the new one, never a part."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
