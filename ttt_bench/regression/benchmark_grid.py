"""A suite's grid as asv benchmark parameters, so one suite file serves `ttt-bench run` and asv alike.

The parameters are the variants, the tasks (a training suite) and the sequence lengths; every other grid
axis must hold one value. asv runs the full product of the parameters: a combination the suite excludes
(with its reason) or leaves out (an [[only]] rule) is skipped the asv way, by NotImplementedError in setup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ttt_bench.sweep.parse import load_suite
from ttt_bench.sweep.plan import PlannedCell, Suite
from ttt_bench.sweep.schema import GRID_AXES, SuiteError

PARAMETER_AXES = ("variant", "seq_len")
TRAINING_PARAMETER_AXES = ("task", *PARAMETER_AXES)  # a training suite's


@dataclass(frozen=True)
class BenchmarkGrid:
    suite: Suite
    param_names: tuple[str, ...]
    params: tuple[tuple, ...]  # one tuple of values per name, in asv's order
    cells: dict[tuple, PlannedCell]  # parameter values -> the suite's cell

    def cell(self, *values: object) -> PlannedCell:
        """The suite's cell at these parameter values; NotImplementedError (asv: skipped) where it has none
        to run, naming the reason."""
        planned = self.cells.get(values)
        described = ", ".join(f"{name}={value}" for name, value in zip(self.param_names, values))
        if planned is None:
            raise NotImplementedError(f"{described}: not in suite {self.suite.name!r} (its [[only]] rules)")
        if planned.skip_reason is not None:
            raise NotImplementedError(f"{described}: excluded by suite {self.suite.name!r}: {planned.skip_reason}")
        return planned


def benchmark_grid(path: str | Path) -> BenchmarkGrid:
    """The grid of the suite file at `path`; SuiteError when an axis other than the parameters varies."""
    suite = load_suite(path)
    varying = [axis for axis in GRID_AXES if axis not in PARAMETER_AXES and len(suite.grid[axis]) > 1]
    if varying:
        values = "; ".join(f"grid.{axis} = {suite.grid[axis]}" for axis in varying)
        raise SuiteError(f"{suite.path}: a benchmark suite varies only the layers, tasks and seq_len; it also varies "
                         f"{values}. Give each of these one value (one suite file per setting)")
    cells = suite.cells()
    if suite.trains:
        names = TRAINING_PARAMETER_AXES
        params = (tuple(e.label for e in suite.task_entries), tuple(e.label for e in suite.layer_entries),
                  tuple(suite.grid["seq_len"]))
        keyed = {(c.training.task.label, c.variant, c.cell.seq_len): c for c in cells}
    else:
        names = PARAMETER_AXES
        params = (tuple(e.label for e in suite.layer_entries), tuple(suite.grid["seq_len"]))
        keyed = {(c.variant, c.cell.seq_len): c for c in cells}
    return BenchmarkGrid(suite, names, params, keyed)
