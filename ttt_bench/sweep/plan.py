"""A suite as the runner sees it: its layer and task entries, and the cells its grid expands into.

A cell (PlannedCell) is one configuration to measure (a profiling cell) or to train (a training cell), with how
it is measured; its config hash is its identity in a results folder.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ttt_bench import layers
from ttt_bench.errors import ConfigError
from ttt_bench.profile.measure import Cell
from ttt_bench.results import MEASUREMENT_OF_PASS, PASSES, TRAIN_MEASUREMENT
from ttt_bench.sweep.rules import rule_verdict
from ttt_bench.sweep.schema import (
    GRID_AXES,
    LOW_PRECISION_DTYPES,
    PROFILING_AXES,
    MeasureSettings,
    OomSettings,
    SuiteError,
)
from ttt_bench.training import tasks
from ttt_bench.training.models import ModelSettings
from ttt_bench.training.train import TrainSettings


@dataclass(frozen=True)
class LayerEntry:
    """One variant a suite lists: a registered layer with knob values, under a label."""

    label: str
    layer: str  # the registry name
    knobs: dict
    key: str  # where the suite file lists it, e.g. 'layers[2]'


@dataclass(frozen=True)
class TaskEntry:
    """One task a training suite lists: a registered task with options, under a label."""

    label: str
    task: str  # the task's registered name
    options: dict
    key: str  # where the suite file lists it, e.g. 'tasks[1]'
    train: dict = field(default_factory=dict)  # [train] settings for this task only, over the suite's
    model: dict = field(default_factory=dict)  # [model] settings for this task only, over the suite's

    def train_settings(self, suite: TrainSettings) -> TrainSettings:
        """The suite's [train] with this task's own settings over it, and the task's default lr where none is set."""
        return replace(suite, **self.train).for_task(tasks.task_kind(self.task).default_lr)

    def model_settings(self, suite: ModelSettings) -> ModelSettings:
        return replace(suite, **self.model)


# [model] and [train] settings added after results folders existed: at their defaults they stay out of a cell's
# hash, so those folders resume.
LATER_MODEL_SETTINGS = ("pooling", "position_init_std")
LATER_TRAIN_SETTINGS = ("compile",)


def _without_later_defaults(settings, later: tuple[str, ...]) -> dict[str, object]:
    defaults = {f.name: f.default for f in fields(settings)}
    return {key: value for key, value in asdict(settings).items() if key not in later or value != defaults[key]}
# The backbone's settings that are not columns of their own (n_layers, match_params are): the model_settings column.
RECIPE_MODEL_SETTINGS = ("mlp_ratio", "pooling", "position_init_std")


@dataclass(frozen=True)
class Training:
    """What makes a cell a training cell: the task, the backbone and the outer loop."""

    task: TaskEntry
    model: ModelSettings
    train: TrainSettings

    def identity(self) -> dict[str, object]:
        return {"task": self.task.label, "task_name": self.task.task, "task_options": self.task.options,
                "model": _without_later_defaults(self.model, LATER_MODEL_SETTINGS),
                "train": _without_later_defaults(self.train, LATER_TRAIN_SETTINGS)}

    def config_columns(self) -> dict[str, object]:
        return {
            "task": self.task.label, "task_name": self.task.task,
            "task_options": json.dumps(self.task.options, sort_keys=True), "n_layers": self.model.n_layers,
            "match_params": None if self.model.match_params is None else str(self.model.match_params),
            "model_settings": json.dumps({key: getattr(self.model, key) for key in RECIPE_MODEL_SETTINGS},
                                         sort_keys=True),
            "train_settings": json.dumps(asdict(self.train), sort_keys=True),
        }


DECODE_SETTINGS = ("decode_samples", "prefill_chunk")  # [measure] settings that shape decode rows only


@dataclass(frozen=True)
class PlannedCell:
    """One cell of a suite: what to measure (`cell`), as which variant, and how."""

    cell: Cell
    variant: str  # the layer entry's label (the layer name unless a label or knobs make another)
    settings: MeasureSettings
    metrics: tuple[str, ...]
    # What the worker imports first (layers.user_modules): module names and .py files' absolute paths, which
    # register layers of the user's own
    imports: tuple[str, ...] = ()
    skip_reason: str | None = None  # recorded as 'skipped' with this reason instead of running
    passes: tuple[str, ...] = PASSES  # measure_cell's passes: any of results.ALL_PASSES
    suite: str = ""  # the suite's name, carried into the rows (not part of the identity)
    training: Training | None = None  # set: train a backbone around the layer on a task instead of profiling it
    run_id: str | None = None  # the run that measures it, carried into the rows (not part of the identity)

    @property
    def config_hash(self) -> str:
        """Identity of the result: the cell, its knobs and how it is measured (not the timeout)."""
        identity = {**self.cell.config_columns(), "knobs": self.cell.overrides, "variant": self.variant,
                    "metrics": sorted(self.metrics), **self.measure_settings}
        for axis in PROFILING_AXES:  # at their defaults, hashes from before these axes existed stay valid
            if [identity[axis]] == GRID_AXES[axis].default:
                del identity[axis]
        if self.training is None:
            identity |= {"passes": sorted(self.passes)}
        else:
            identity |= self.training.identity()
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def measure_settings(self) -> dict[str, object]:
        """The [measure] settings that shape this cell's numbers: all but the timeout for a profiling cell, the
        threads for a training cell (the outer loop times itself)."""
        if self.training is not None:
            return {"threads": self.settings.threads}
        unused = {"timeout_s"} | (set() if "decode" in self.passes else set(DECODE_SETTINGS))
        return {k: v for k, v in asdict(self.settings).items() if k not in unused}

    @property
    def measurements(self) -> tuple[str, ...]:
        """The `measurement` of the rows this cell gives (a training cell may add per-position rows)."""
        if self.training is not None:
            return (TRAIN_MEASUREMENT,)
        return tuple(MEASUREMENT_OF_PASS[name] for name in self.passes)

    def config_columns(self) -> dict[str, object]:
        return {
            "suite": self.suite, "config_hash": self.config_hash, "variant": self.variant, **self.cell.config_columns(),
            "knobs": json.dumps(self.cell.overrides, sort_keys=True),
            **(self.training.config_columns() if self.training is not None else {}),
            "measure_settings": json.dumps(self.measure_settings, sort_keys=True), "run_id": self.run_id,
        }

    def describe(self, with_seq_len: bool = True) -> str:
        cell = self.cell
        seq_len = f" N={cell.seq_len}" if with_seq_len else ""
        task = f"{self.training.task.label} " if self.training is not None else ""
        how = ("" if cell.backend == "eager" else f" {cell.backend}") + (" amp" if cell.amp else "")
        return (f"{task}{self.variant}{seq_len} B={cell.batch} D={cell.d_model} H={cell.n_heads} {cell.dtype} "
                f"{cell.device}{how}" + (f" seed={cell.seed}" if self.training is not None else ""))


@dataclass(frozen=True)
class Suite:
    path: Path
    text: str  # the file as read, kept beside the results
    name: str
    description: str
    metrics: tuple[str, ...]
    imports: tuple[str, ...]
    layer_entries: tuple[LayerEntry, ...]
    grid: dict[str, list]
    settings: MeasureSettings
    rules: tuple[tuple[str, dict], ...]  # ('exclude' | 'only', conditions incl. an optional 'reason')
    oom: OomSettings = field(default_factory=OomSettings)
    task_entries: tuple[TaskEntry, ...] = ()  # a training suite's tasks; empty for a profiling suite
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    passes: tuple[str, ...] = PASSES  # what each profiling cell measures (the suite's `measurements`)

    @property
    def trains(self) -> bool:
        return bool(self.task_entries)

    def cells(self) -> list[PlannedCell]:
        """The grid's cells in order (variants outermost), the rules applied; needs grid.seq_len."""
        if self.grid["seq_len"] is None:
            raise SuiteError(f"{self.path}: key 'grid.seq_len' is missing; give the sequence lengths to run")
        return self._expand(self.grid)

    def variant_cells(self, seq_len: int) -> list[PlannedCell]:
        """One cell per variant and grid point at this N (the OOM search's probes), rules applied."""
        return self._expand({**self.grid, "seq_len": [seq_len]})

    def _expand(self, grid: dict[str, list]) -> list[PlannedCell]:
        planned = []
        axes = list(GRID_AXES)
        for task in self.task_entries or (None,):
            for entry in self.layer_entries:
                for values in itertools.product(*(grid[axis] for axis in axes)):
                    point = dict(zip(axes, values))
                    task_names = None if task is None else (task.label, task.task)
                    kept, skip_reason = rule_verdict(self.rules, (entry.label, entry.layer), task_names, point)
                    if not kept:
                        continue
                    training = None
                    if task is not None:
                        self._check_task_length(task, point["seq_len"])
                        training = Training(task, task.model_settings(self.model), task.train_settings(self.train))
                        skip_reason = skip_reason or causality_skip(entry, task)
                    skip_reason = skip_reason or amp_skip(point)
                    cell = Cell(layer=entry.layer, overrides=entry.knobs, **point)
                    planned.append(PlannedCell(
                        cell, entry.label, self.settings, self.metrics, self.imports, skip_reason, suite=self.name,
                        training=training, **({} if training else {"passes": self.passes}),
                    ))
        return planned

    def _check_task_length(self, task: TaskEntry, seq_len: int) -> None:
        try:
            tasks.task_options(task.task, task.options, seq_len)
        except ConfigError as error:
            raise SuiteError(f"{self.path}: key {task.key!r} (task {task.label!r}) at grid.seq_len {seq_len}: {error}; "
                             f"an [[only]] rule with 'task' and 'seq_len' keeps each task to the lengths it "
                             f"takes") from None


def amp_skip(point: dict[str, object]) -> str | None:
    """Why a grid point with amp = true does not run (None: it does): autocast lowers float32 ops to a dtype."""
    if point["amp"] and point["dtype"] not in LOW_PRECISION_DTYPES:
        return (f"amp autocasts float32 weights to a low-precision dtype ({', '.join(LOW_PRECISION_DTYPES)}); with "
                f"dtype {point['dtype']} there is nothing to autocast to")
    return None


def causality_skip(entry: LayerEntry, task: TaskEntry) -> str | None:
    """Why a non-causal layer cannot train on a task that predicts tokens of its own input (None: it can)."""
    if tasks.task_kind(task.task).needs_causal and not layers.is_causal(entry.layer, **entry.knobs):
        return (f"{entry.label} is not causal: on {task.task}, which predicts tokens of its own input, it would see "
                f"the answers")
    return None
