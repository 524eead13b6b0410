"""Suite files: the TOML schema, its validation and the expansion of its grid into cells.

    name = "quick"
    metrics = ["flops", "memory", "time"]
    layers = ["attention-sdpa-causal", "ttt-*", { name = "ttt-linear", label = "b64", knobs = { mini_batch = 64 } }]

    [grid]                       # every axis is a list (or one value); the cells are their product
    seq_len = [256, 1024, 4096]
    dtype = "float32"

    [measure]                    # how each cell is measured
    repeats = 3

    [[exclude]]                  # drop the cells that match every condition ...
    layer = "attention-naive*"
    seq_len = { gt = 4096 }
    reason = "the N x N scores do not fit"   # ... and record them as 'skipped' with this reason

    [[only]]                     # the cells whose layer matches keep only the values that match
    layer = "*-primal"
    seq_len = { le = 1024 }

A training suite lists tasks and trains a backbone around each layer instead of profiling the layer:

    metrics = ["accuracy"]
    tasks = ["mnist", { name = "mqar", label = "mqar-16", options = { n_pairs = 16 } }]
    [model]                      # the backbone: blocks, MLP width, parameter matching
    n_layers = 2
    match_params = "linear-attention"
    [train]                      # the outer loop
    steps = 300

Everything is checked before anything runs; a mistake raises one SuiteError naming the file, the key,
the bad value and what is allowed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import itertools
import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ttt_bench import layers
from ttt_bench.errors import ConfigError, UnknownLayerError
from ttt_bench.profile.measure import DTYPES, METRICS, Cell, TimingBudget
from ttt_bench.results import MEASUREMENT_OF_PASS, PASSES, PROFILE_MEASUREMENTS, TRAIN_MEASUREMENT
from ttt_bench.training import tasks
from ttt_bench.training.models import ModelSettings
from ttt_bench.training.train import TrainSettings

GRID_AXES = {  # axis -> default values
    "seq_len": None,  # required by `run`; `oom` searches it instead
    "batch": [1],
    "d_model": [256],
    "n_heads": [4],
    "dtype": ["float32"],
    "device": ["cpu"],
    "seed": [0],
}
TRAINING_BATCH = [32]  # grid.batch of a training suite that does not set it
TOP_LEVEL_KEYS = ("name", "description", "metrics", "imports", "layers", "tasks", "grid", "measure", "model", "train",
                  "exclude", "only", "oom")
LAYER_ENTRY_KEYS = ("name", "label", "knobs", "sweep")
TASK_ENTRY_KEYS = ("name", "label", "options", "sweep")
ACCURACY = "accuracy"  # the metric of a training suite
RULE_OPERATORS = ("gt", "ge", "lt", "le")
NUMERIC_AXES = ("seq_len", "batch", "d_model", "n_heads", "seed")
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


class SuiteError(ConfigError):
    """A suite file that cannot run as written; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class MeasureSettings:
    """How each cell is measured ([measure]); all but `timeout_s` are part of a cell's identity."""

    repeats: int = 5  # timed repeats of a call, at least
    slow_repeats: int = 3  # at least, for a call slower than 2 x min_time_s
    min_time_s: float = 0.5  # timed repeats go on until they add up to this
    threads: int | None = None  # CPU threads (torch.set_num_threads); None leaves torch's default
    memory_budget_gib: float | None = None  # tracked-bytes budget per cell; None: half the free memory (CPU)
    count_flops_max_seq_len: int = 1024  # count FLOPs with fvcore and FlopCounterMode up to this N
    timeout_s: float = 900.0  # a cell with no result after this long is recorded as 'timeout'

    def timing_budget(self) -> TimingBudget:
        return TimingBudget(
            min_total_s=self.min_time_s, min_repeats=self.repeats, slow_call_s=2 * self.min_time_s,
            slow_min_repeats=self.slow_repeats,
        )


@dataclass(frozen=True)
class OomSettings:
    """The out-of-memory frontier search ([oom]); see ttt_bench.sweep.oom."""

    budget_gib: float | None = None  # the memory budget on any device; None: the two below
    budget_fraction: float = 1.0  # on CUDA: this fraction of the card's memory
    cpu_budget_gib: float = 1.0  # on CPU: this many GiB of tracked live tensor bytes
    measurement: str = "forward_backward"  # the pass whose peak must fit
    start_seq_len: int = 1024  # the doubling starts here (and halves from here if this does not fit)
    min_seq_len: int = 16  # give up below this
    max_seq_len: int = 2**20  # stop doubling here: the frontier is at least this
    resolution: int = 256  # bisect until the fitting and the failing N are this close; N stays a multiple of it
    fit_seq_lens: tuple[int, ...] = (512, 1024, 2048, 4096)  # small N whose peaks the memory polynomial is fitted to
    predict_budget_gib: tuple[float, ...] = (80.0,)  # budgets to predict the frontier for from the fit


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


@dataclass(frozen=True)
class Training:
    """What makes a cell a training cell: the task, the backbone and the outer loop."""

    task: TaskEntry
    model: ModelSettings
    train: TrainSettings

    def identity(self) -> dict[str, object]:
        return {"task": self.task.label, "task_name": self.task.task, "task_options": self.task.options,
                "model": asdict(self.model), "train": asdict(self.train)}

    def config_columns(self) -> dict[str, object]:
        return {
            "task": self.task.label, "task_name": self.task.task,
            "task_options": json.dumps(self.task.options, sort_keys=True), "n_layers": self.model.n_layers,
            "match_params": None if self.model.match_params is None else str(self.model.match_params),
            "train_settings": json.dumps(asdict(self.train), sort_keys=True),
        }


@dataclass(frozen=True)
class PlannedCell:
    """One cell of a suite: what to measure (`cell`), as which variant, and how."""

    cell: Cell
    variant: str  # the layer entry's label (the layer name unless a label or knobs make another)
    settings: MeasureSettings
    metrics: tuple[str, ...]
    imports: tuple[str, ...] = ()  # modules the worker imports first (they register extra layers)
    skip_reason: str | None = None  # recorded as 'skipped' with this reason instead of running
    passes: tuple[str, ...] = PASSES  # measure_cell's passes: 'fwd_bwd' and/or 'fwd'
    suite: str = ""  # the suite's name, carried into the rows (not part of the identity)
    training: Training | None = None  # set: train a backbone around the layer on a task instead of profiling it

    @property
    def config_hash(self) -> str:
        """Identity of the result: the cell, its knobs and how it is measured (not the timeout)."""
        identity = {**self.cell.config_columns(), "knobs": self.cell.overrides, "variant": self.variant,
                    "metrics": sorted(self.metrics)}
        if self.training is None:
            identity |= {"passes": sorted(self.passes),
                         **{k: v for k, v in asdict(self.settings).items() if k != "timeout_s"}}
        else:
            identity |= {**self.training.identity(), "threads": self.settings.threads}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

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
        }

    def describe(self, with_seq_len: bool = True) -> str:
        cell = self.cell
        seq_len = f" N={cell.seq_len}" if with_seq_len else ""
        task = f"{self.training.task.label} " if self.training is not None else ""
        return (f"{task}{self.variant}{seq_len} B={cell.batch} D={cell.d_model} H={cell.n_heads} {cell.dtype} "
                f"{cell.device}" + (f" seed={cell.seed}" if self.training is not None else ""))


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
                    point = dict(zip(axes, values, strict=False))
                    kept, skip_reason = _rule_verdict(self.rules, entry, task, point)
                    if not kept:
                        continue
                    training = None
                    if task is not None:
                        self._check_task_length(task, point["seq_len"])
                        training = Training(task, self.model, self.train)
                        skip_reason = skip_reason or _causality_skip(entry, task)
                    cell = Cell(layer=entry.layer, overrides=entry.knobs, **point)
                    planned.append(PlannedCell(
                        cell, entry.label, self.settings, self.metrics, self.imports, skip_reason, suite=self.name,
                        training=training,
                    ))
        return planned

    def _check_task_length(self, task: TaskEntry, seq_len: int) -> None:
        try:
            tasks.task_options(task.task, task.options, seq_len)
        except ConfigError as error:
            raise SuiteError(f"{self.path}: key {task.key!r} (task {task.label!r}) at grid.seq_len {seq_len}: {error}; "
                             f"an [[only]] rule with 'task' and 'seq_len' keeps each task to the lengths it "
                             f"takes") from None


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file; SuiteError on anything that would not run."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise SuiteError(f"{path}: cannot read the suite file ({error})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SuiteError(f"{path}: not valid TOML: {error}") from None
    return parse_suite(data, path, text)


def parse_suite(data: dict, path: Path, text: str = "") -> Suite:
    check = _Checker(path)
    check.keys("", data, TOP_LEVEL_KEYS)
    name = check.string("name", data.get("name", path.stem))
    description = check.string("description", data.get("description", ""))
    imports = tuple(
        check.string(f"imports[{i}]", module) for i, module in enumerate(check.list("imports", data.get("imports", [])))
    )
    for index, module in enumerate(imports):
        try:
            importlib.import_module(module)
        except Exception as error:  # any failure to import is the suite's problem, reported as such
            raise SuiteError(
                f"{path}: key 'imports[{index}]': cannot import {module!r} ({type(error).__name__}: {error})"
            ) from None
    task_entries = _parse_tasks(check, data.get("tasks", []))
    default_metrics = [ACCURACY] if task_entries else list(METRICS)
    metrics = tuple(check.list("metrics", data.get("metrics", default_metrics), nonempty=True))
    for index, metric in enumerate(metrics):
        check.choice(f"metrics[{index}]", metric, (*METRICS, ACCURACY))
    if task_entries and metrics != (ACCURACY,):
        raise check.fail("metrics", list(metrics), "a suite with 'tasks' trains models: its metrics are ['accuracy']; "
                         "profile the layers in a suite of its own (both may write to one results folder)")
    if ACCURACY in metrics and not task_entries:
        raise SuiteError(f"{path}: key 'tasks' is missing; 'accuracy' trains a model on tasks: list them "
                         f"(tasks: {', '.join(tasks.task_names())})")
    for key in ("model", "train"):
        if key in data and not task_entries:
            raise SuiteError(f"{path}: key {key!r} applies to training suites only; add 'tasks' or remove it")
    grid = _parse_grid(check, data.get("grid", {}))
    if task_entries and "batch" not in data.get("grid", {}):
        grid["batch"] = TRAINING_BATCH
    entries = _parse_layers(check, data.get("layers"))
    for entry in entries:
        for d_model, n_heads in itertools.product(grid["d_model"], grid["n_heads"]):
            try:
                layers.config(entry.layer, d_model=d_model, n_heads=n_heads, **entry.knobs)
            except (ValueError, TypeError) as error:
                raise SuiteError(f"{path}: key {entry.key!r} (layer {entry.layer!r} as {entry.label!r}, "
                                 f"d_model={d_model}, n_heads={n_heads}): {error}") from None
    settings = _parse_measure(check, data.get("measure", {}))
    rules = tuple(
        (kind, _parse_rule(check, f"{kind}[{i}]", rule))
        for kind in ("exclude", "only")
        for i, rule in enumerate(check.list(kind, data.get(kind, [])))
    )
    suite = Suite(path, text, name, description, metrics, imports, tuple(entries), grid, settings, rules,
                  _parse_oom(check, data.get("oom", {})), tuple(task_entries),
                  _parse_model(check, data.get("model", {}), entries), _parse_train(check, data.get("train", {})))
    if grid["seq_len"] is not None and not suite.cells():
        raise SuiteError(f"{path}: the grid is empty after the 'exclude' and 'only' rules; nothing would run")
    return suite


class _Checker:
    """Value checks whose errors name the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, value: Any, allowed: str) -> SuiteError:
        return SuiteError(f"{self.path}: key {key!r}: value {value!r} is not allowed; {allowed}")

    def keys(self, prefix: str, table: Any, allowed: tuple[str, ...]) -> None:
        if not isinstance(table, dict):
            raise self.fail(prefix.rstrip(".") or "(top level)", table, "it must be a table")
        for key in table:
            if key not in allowed:
                raise SuiteError(f"{self.path}: unknown key {prefix + key!r}; allowed keys here: {', '.join(allowed)}")

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(key, value, "it must be a string")
        return value

    def list(self, key: str, value: Any, nonempty: bool = False) -> list:
        if not isinstance(value, list):
            raise self.fail(key, value, "it must be a list")
        if nonempty and not value:
            raise self.fail(key, value, "it must list at least one value")
        return value

    def integer(self, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, value, f"it must be an integer >= {minimum}")
        return value

    def number(self, key: str, value: Any, low: float = 0.0, high: float = float("inf")) -> float:
        """A number in (low, high]."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
            allowed = f"a number > {low}" + ("" if high == float("inf") else f" and <= {high}")
            raise self.fail(key, value, f"it must be {allowed}")
        return float(value)

    def choice(self, key: str, value: Any, allowed) -> Any:
        if not isinstance(value, str) or value not in allowed:
            raise self.fail(key, value, f"choose one of {list(allowed)}")
        return value


def _parse_grid(check: _Checker, table: Any) -> dict[str, list]:
    check.keys("grid.", table, tuple(GRID_AXES))
    grid = {}
    for axis, default in GRID_AXES.items():
        raw = table.get(axis, default)
        if raw is None:
            grid[axis] = None
            continue
        values = check.list(f"grid.{axis}", raw if isinstance(raw, list) else [raw], nonempty=True)
        for i, value in enumerate(values):
            key = f"grid.{axis}[{i}]"
            if axis == "dtype":
                check.choice(key, value, sorted(DTYPES))
            elif axis == "device":
                if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value):
                    raise check.fail(key, value, "use 'cpu', 'cuda' or 'cuda:<index>'")
            else:
                check.integer(key, value, 0 if axis == "seed" else 1)
        if len(set(map(str, values))) != len(values):
            raise check.fail(f"grid.{axis}", values, "each value may appear once")
        grid[axis] = values
    return grid


def _parse_layers(check: _Checker, raw: Any) -> list[LayerEntry]:
    if raw is None:
        raise SuiteError(f"{check.path}: key 'layers' is missing; list registered layer names (see `ttt-bench ls`)")
    entries = []
    for i, entry in enumerate(check.list("layers", raw, nonempty=True)):
        key = f"layers[{i}]"
        if isinstance(entry, str):
            matched = fnmatch.filter(layers.names(), entry)
            if not matched:
                raise SuiteError(f"{check.path}: key {key!r}: no registered layer matches {entry!r}; "
                                 f"registered layers: {', '.join(layers.names())}")
            entries += [LayerEntry(name, name, {}, key) for name in matched]
            continue
        check.keys(key + ".", entry, LAYER_ENTRY_KEYS)
        name = check.string(f"{key}.name", entry.get("name"))
        try:
            layers.variant(name)
        except UnknownLayerError as error:
            raise SuiteError(f"{check.path}: key '{key}.name': {error}") from None
        knobs = entry.get("knobs", {})
        check.keys(f"{key}.knobs.", knobs, tuple(k.name for k in layers.knobs(name)))
        if "d_model" in knobs or "n_heads" in knobs:
            raise SuiteError(f"{check.path}: key '{key}.knobs': d_model and n_heads are grid axes; set them in [grid]")
        label = entry.get("label")
        sweep = entry.get("sweep", {})
        for swept in _sweep(check, key, sweep, [k.name for k in layers.knobs(name) if k.name not in knobs]):
            settings = {**knobs, **swept}
            if label is not None:
                variant_label = check.string(f"{key}.label", label)
                variant_label += "".join(f"-{k}={v}" for k, v in swept.items())
            else:
                variant_label = name + "".join(f"-{k}={v}" for k, v in sorted(settings.items()))
            entries.append(LayerEntry(variant_label, name, settings, key))
    _check_unique_labels(check, "layers", [entry.label for entry in entries], "'label' or knobs")
    return entries


def _sweep(check: _Checker, key: str, sweep: Any, allowed: list[str]) -> list[dict]:
    """An entry's 'sweep' table (name -> values), checked, as the list of its combinations."""
    check.keys(f"{key}.sweep.", sweep, tuple(allowed))
    for name, values in sweep.items():
        check.list(f"{key}.sweep.{name}", values, nonempty=True)
    return [dict(zip(sweep, combination, strict=False)) for combination in itertools.product(*sweep.values())]


def _check_unique_labels(check: _Checker, key: str, labels: list[str], remedy: str) -> None:
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise SuiteError(f"{check.path}: key {key!r}: {repeated} listed more than once; give each entry its own "
                         f"{remedy}")


def _parse_tasks(check: _Checker, raw: Any) -> list[TaskEntry]:
    entries = []
    for i, entry in enumerate(check.list("tasks", raw)):
        key = f"tasks[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        check.keys(key + ".", entry, TASK_ENTRY_KEYS)
        name = check.choice(f"{key}.name", entry.get("name"), tasks.task_names())
        options = entry.get("options", {})
        check.keys(f"{key}.options.", options, tuple(tasks.option_docs(name)))
        label = check.string(f"{key}.label", entry.get("label", name))
        sweep = entry.get("sweep", {})
        for swept in _sweep(check, key, sweep, [o for o in tasks.option_docs(name) if o not in options]):
            given = {**options, **swept}
            try:
                tasks.task_options(name, given)
            except ConfigError as error:
                raise SuiteError(f"{check.path}: key {key!r}: {error}") from None
            entries.append(TaskEntry(label + "".join(f"-{k}={v}" for k, v in swept.items()), name, given, key))
    _check_unique_labels(check, "tasks", [entry.label for entry in entries], "'label'")
    return entries


def _parse_model(check: _Checker, table: Any, entries: list[LayerEntry]) -> ModelSettings:
    check.keys("model.", table, ("n_layers", "mlp_ratio", "match_params"))
    values: dict[str, Any] = {}
    if "n_layers" in table:
        values["n_layers"] = check.integer("model.n_layers", table["n_layers"], 1)
    if "mlp_ratio" in table:
        values["mlp_ratio"] = check.number("model.mlp_ratio", table["mlp_ratio"])
    target = table.get("match_params")
    if isinstance(target, str):
        by_label = {entry.label: entry for entry in entries}
        if target in by_label:
            entry = by_label[target]
            values |= {"match_layer": entry.layer, "match_knobs": tuple(sorted(entry.knobs.items()))}
        elif target in layers.names():
            values["match_layer"] = target
        else:
            raise check.fail("model.match_params", target, f"name a layer of this suite ({', '.join(by_label)}), a "
                             f"registered layer, or give a parameter count")
        values["match_params"] = target
    elif target is not None:
        values["match_params"] = check.integer("model.match_params", target, 1)
    return ModelSettings(**values)


def _parse_train(check: _Checker, table: Any) -> TrainSettings:
    check.keys("train.", table, tuple(TrainSettings.__dataclass_fields__))
    try:
        return TrainSettings(**table)
    except ConfigError as error:
        raise SuiteError(f"{check.path}: key 'train': {error}") from None


def _causality_skip(entry: LayerEntry, task: TaskEntry) -> str | None:
    if tasks.task_kind(task.task).needs_causal and not layers.is_causal(entry.layer, **entry.knobs):
        return (f"{entry.label} is not causal: on {task.task}, which predicts tokens of its own input, it would see "
                f"the answers")
    return None


def _parse_measure(check: _Checker, table: Any) -> MeasureSettings:
    check.keys("measure.", table, tuple(MeasureSettings.__dataclass_fields__))
    values = {}
    for key, value in table.items():
        name = f"measure.{key}"
        if key in ("repeats", "slow_repeats", "threads"):
            values[key] = check.integer(name, value, 1)
        elif key == "count_flops_max_seq_len":
            values[key] = check.integer(name, value, 0)
        else:
            values[key] = check.number(name, value)
    return MeasureSettings(**values)


def _parse_rule(check: _Checker, key: str, rule: Any) -> dict:
    check.keys(key + ".", rule, ("layer", "task", *GRID_AXES, "reason"))
    if not any(k != "reason" for k in rule):
        raise check.fail(key, rule, "give at least one condition: 'layer', 'task' or a grid axis")
    if "reason" in rule:
        check.string(f"{key}.reason", rule["reason"])
    for axis, condition in rule.items():
        if axis == "reason":
            continue
        name = f"{key}.{axis}"
        if isinstance(condition, dict):
            if axis not in NUMERIC_AXES:
                raise check.fail(name, condition, f"bounds apply to the numeric axes {list(NUMERIC_AXES)} only")
            check.keys(name + ".", condition, RULE_OPERATORS)
            if not condition:
                raise check.fail(name, condition, f"give one of {list(RULE_OPERATORS)}")
            for op, bound in condition.items():
                check.number(f"{name}.{op}", bound, low=float("-inf"))
        elif not all(_is_scalar(v) for v in (condition if isinstance(condition, list) else [condition])) or (
            condition == []
        ):
            raise check.fail(name, condition, "use a value, a non-empty list of values or a table of gt/ge/lt/le")
    return rule


def _parse_oom(check: _Checker, table: Any) -> OomSettings:
    check.keys("oom.", table, tuple(OomSettings.__dataclass_fields__))
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = f"oom.{key}"
        if key in ("budget_gib", "cpu_budget_gib"):
            values[key] = check.number(name, value)
        elif key == "budget_fraction":
            values[key] = check.number(name, value, high=1.0)
        elif key == "measurement":
            values[key] = check.choice(name, value, PROFILE_MEASUREMENTS)
        elif key in ("fit_seq_lens", "predict_budget_gib"):
            items = check.list(name, value)
            convert = (lambda k, v: check.integer(k, v, 1)) if key == "fit_seq_lens" else check.number
            values[key] = tuple(convert(f"{name}[{i}]", v) for i, v in enumerate(items))
        else:
            values[key] = check.integer(name, value, 1)
    settings = OomSettings(**values)
    if settings.min_seq_len > settings.start_seq_len or settings.start_seq_len > settings.max_seq_len:
        raise SuiteError(f"{check.path}: key 'oom': min_seq_len <= start_seq_len <= max_seq_len must hold; got "
                         f"{settings.min_seq_len}, {settings.start_seq_len}, {settings.max_seq_len}")
    if len(set(settings.fit_seq_lens)) == 1:
        raise check.fail("oom.fit_seq_lens", list(settings.fit_seq_lens), "give at least two different lengths")
    return settings


def _rule_verdict(rules, entry: LayerEntry, task: TaskEntry | None, point: dict) -> tuple[bool, str | None]:
    """(kept, skip reason): a rule without a reason drops the cell, one with a reason keeps it as skipped."""
    for kind, rule in rules:
        # 'layer' and 'task' select the cells a rule is about; the grid axes are its conditions.
        task_names = () if task is None else (task.label, task.task)
        selected = _names_match(rule.get("layer", "*"), (entry.label, entry.layer)) and (
            "task" not in rule or _names_match(rule["task"], task_names)
        )
        axes_match = all(_matches(point[k], v) for k, v in rule.items() if k not in ("layer", "task", "reason"))
        dropped = selected and (axes_match if kind == "exclude" else not axes_match)
        if dropped:
            return "reason" in rule, rule.get("reason")
    return True, None


def _names_match(patterns: Any, names: tuple[str, ...]) -> bool:
    patterns = patterns if isinstance(patterns, list) else [patterns]
    return any(fnmatch.fnmatchcase(n, str(p)) for p in patterns for n in names)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _matches(value: Any, condition: Any) -> bool:
    if isinstance(condition, dict):
        checks = {"gt": value.__gt__, "ge": value.__ge__, "lt": value.__lt__, "le": value.__le__}
        return all(checks[op](bound) for op, bound in condition.items())
    if isinstance(condition, list):
        return any(_matches(value, c) for c in condition)
    if isinstance(condition, str) and isinstance(value, str):
        return fnmatch.fnmatchcase(value, condition)
    return value == condition


def shipped_suites() -> list[Path]:
    """The suite files shipped with ttt-bench (its checkout's suites/ folder), and those under ./suites."""
    folders = [Path(__file__).resolve().parents[2] / "suites", Path(os.getcwd()) / "suites"]
    found = {path.resolve(): path for folder in folders if folder.is_dir() for path in sorted(folder.glob("*.toml"))}
    return sorted(found.values(), key=lambda p: p.name)


def resolve_suite_path(given: str) -> Path:
    """A path as given, or the name of a shipped suite ('quick' -> suites/quick.toml)."""
    path = Path(given)
    if path.exists() or path.suffix == ".toml":
        return path
    for shipped in shipped_suites():
        if shipped.stem == given:
            return shipped
    names = ", ".join(p.stem for p in shipped_suites())
    raise SuiteError(f"{given}: no such suite file, nor a shipped suite of that name; shipped suites: {names}")
