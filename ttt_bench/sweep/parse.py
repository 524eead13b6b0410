"""Reading a suite file: TOML in, a checked Suite out, or one SuiteError naming the file, the key, the bad value
and what is allowed. Nothing runs before the whole file is checked.

    name = "quick"
    metrics = ["flops", "memory", "time"]
    layers = ["attention-sdpa-causal", "ttt-*", { name = "ttt-linear", label = "b64", knobs = { mini_batch = 64 } }]

    [grid]                       # every axis is a list (or one value); the cells are their product
    seq_len = [256, 1024, 4096]
    dtype = "float32"

    [measure]                    # how each cell is measured
    repeats = 3

A training suite lists tasks and trains a backbone around each layer instead of profiling the layer:

    metrics = ["accuracy"]
    tasks = ["mnist", { name = "mqar", label = "mqar-16", options = { n_pairs = 16 } }]
    [model]                      # the backbone: blocks, MLP width, parameter matching
    match_params = "linear-attention"
    [train]                      # the outer loop
    steps = 300

The keys and what they allow are declared in ttt_bench/sweep/schema.py (docs/suite-keys.md); the rules in
ttt_bench/sweep/rules.py.
"""

from __future__ import annotations

import fnmatch
import itertools
import tomllib
from pathlib import Path
from typing import Any

from ttt_bench import layers
from ttt_bench.config import SLUG_RULE, Allowed, Integer, Number, OneOf, Slug, not_allowed
from ttt_bench.errors import ConfigError, UnknownLayerError
from ttt_bench.layers.base import SequenceMixer
from ttt_bench.layers.registry import unknown_layer
from ttt_bench.layers.user_modules import import_layer_module
from ttt_bench.profile.measure import DEFAULT_METRICS, DTYPES, METRICS, analytic_columns, first_line
from ttt_bench.results import ALL_PASSES, MEASUREMENT_OF_PASS, PASSES, PROFILE_MEASUREMENTS
from ttt_bench.sweep.plan import LayerEntry, Suite, TaskEntry
from ttt_bench.sweep.rules import check_rule
from ttt_bench.sweep.schema import (
    ACCURACY,
    DEVICE_PATTERN,
    GRID_AXES,
    LAYER_ENTRY_KEYS,
    PROFILING_AXES,
    SETTINGS_TABLES,
    TASK_ENTRY_KEYS,
    TASK_MODEL_KEYS,
    TOP_LEVEL_KEYS,
    TRAINING_BATCH,
    SuiteError,
    table_keys,
)
from ttt_bench.training import tasks
from ttt_bench.training.models import ModelSettings
from ttt_bench.training.train import TrainSettings


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
    except RecursionError:  # tomllib reads nested arrays and tables recursively
        raise SuiteError(f"{path}: not valid TOML: nested too deeply (arrays or inline tables inside one another "
                         f"more than Python's recursion limit allows)") from None
    return parse_suite(data, path, text)


def parse_suite(data: dict, path: Path, text: str = "") -> Suite:
    check = Checker(path)
    check.keys("", data, tuple(TOP_LEVEL_KEYS))
    if "name" not in data and not Slug().admits(path.stem):
        raise SuiteError(f"{path}: key 'name' is missing and the file's name {path.stem!r} (its default) is not "
                         f"allowed; set 'name' to {SLUG_RULE}")
    name = check.check("name", data.get("name", path.stem), Slug())  # results/NAME: one folder, never a path
    description = check.string("description", data.get("description", ""))
    imports = _parse_imports(check, data.get("imports", []))
    task_entries = _parse_tasks(check, data.get("tasks", []))
    default_metrics = [ACCURACY] if task_entries else list(DEFAULT_METRICS)
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
    passes = _parse_measurements(check, data, bool(task_entries))
    for axis in PROFILING_AXES:
        if task_entries and grid[axis] != GRID_AXES[axis].default:
            raise check.fail(f"grid.{axis}", grid[axis], f"a training suite leaves it at {GRID_AXES[axis].default} "
                             f"(its outer loop runs eager in the grid's dtype); measure {axis} in a profiling suite")
    entries = _parse_layers(check, data.get("layers"))
    for entry in entries:
        for d_model, n_heads in itertools.product(grid["d_model"], grid["n_heads"]):
            layer = _check_builds(check, entry, d_model, n_heads)
            if grid["seq_len"] is not None:
                _check_cost_fits(check, entry, layer, max(grid["batch"]), max(grid["seq_len"]))
    settings = _parse_settings(check, "measure", data.get("measure", {}))
    rules = tuple(
        (kind, check_rule(check, f"{kind}[{i}]", rule))
        for kind in ("exclude", "only")
        for i, rule in enumerate(check.list(kind, data.get(kind, [])))
    )
    suite = Suite(path, text, name, description, metrics, imports, tuple(entries), grid, settings, rules,
                  _parse_settings(check, "oom", data.get("oom", {})), tuple(task_entries),
                  _parse_model(check, data.get("model", {}), entries),
                  _parse_settings(check, "train", data.get("train", {})), passes)
    if grid["seq_len"] is not None and not suite.cells():
        raise SuiteError(f"{path}: the grid is empty after the 'exclude' and 'only' rules; nothing would run")
    return suite


def _parse_measurements(check: Checker, data: dict, trains: bool) -> tuple[str, ...]:
    """The suite's `measurements` as measure_cell's passes, in the order results.ALL_PASSES lists them."""
    if "measurements" not in data:
        return PASSES
    if trains:
        raise check.fail("measurements", data["measurements"], "a training suite's cells are measured by training; "
                         "list measurements in a profiling suite")
    chosen = check.list("measurements", data["measurements"], nonempty=True)
    for index, measurement in enumerate(chosen):
        check.choice(f"measurements[{index}]", measurement, PROFILE_MEASUREMENTS)
    if len(set(chosen)) != len(chosen):
        raise check.fail("measurements", chosen, "each measurement may appear once")
    return tuple(name for name in ALL_PASSES if MEASUREMENT_OF_PASS[name] in chosen)


def _parse_imports(check: Checker, raw: Any) -> tuple[str, ...]:
    """Import each listed module (a module name, or a .py path relative to the suite file); what the workers import
    to get the same modules: the names, and the files' absolute paths."""
    specs = []
    for index, module in enumerate(check.list("imports", raw)):
        key = f"imports[{index}]"
        module = check.string(key, module)
        try:
            specs.append(import_layer_module(module, check.path.parent).spec)
        except ConfigError as error:
            raise SuiteError(f"{check.path}: key {key!r}: {error}") from None
    return tuple(specs)


def _check_builds(check: Checker, entry: LayerEntry, d_model: int, n_heads: int) -> SequenceMixer:
    """Build the variant once at this width, as every cell will: a layer that cannot be built is refused now."""
    where = (f"{check.path}: key {entry.key!r} (layer {entry.layer!r} as {entry.label!r}, d_model={d_model}, "
             f"n_heads={n_heads})")
    try:
        return layers.build(entry.layer, d_model=d_model, n_heads=n_heads, **entry.knobs)
    except ConfigError as error:
        raise SuiteError(f"{where}: {error}") from None
    except Exception as error:  # a layer's own code failing to build it: the suite would fail in every cell
        raise SuiteError(f"{where}: it cannot be built ({first_line(error)}); run "
                         f"`ttt-bench check` on its module to see which part of the layer contract it breaks") from None


INT64_MAX = 2**63 - 1  # the largest value of an int64 result column


def _check_cost_fits(check: Checker, entry: LayerEntry, layer: SequenceMixer, batch: int, seq_len: int) -> None:
    """The analytic cost columns are int64: a grid whose largest cell's cost does not fit one is refused now, not
    when that cell's row cannot be written (attention's work grows as N**2, so axis bounds alone cannot keep it)."""
    where = (f"{check.path}: key {entry.key!r} (layer {entry.layer!r} as {entry.label!r}, batch={batch}, "
             f"seq_len={seq_len}, d_model={layer.config.d_model})")
    try:
        columns = analytic_columns(layer.cost(batch, seq_len))
    except Exception as error:  # a layer's own cost formula failing: every cell's row would lack its cost
        raise SuiteError(f"{where}: its cost cannot be computed ({first_line(error)})") from None
    column, value = max(((c, v) for c, v in columns.items() if isinstance(v, int)), key=lambda item: item[1])
    if value > INT64_MAX:
        raise SuiteError(f"{where}: its {column} would be about 2**{value.bit_length() - 1}, more than an int64 "
                         f"result column holds (2**63 - 1); lower grid.seq_len or grid.batch")


class Checker:
    """Value checks whose errors name the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, value: Any, allowed: str) -> SuiteError:
        return SuiteError(f"{self.path}: {not_allowed(key, value, allowed)}")

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
        return self.check(key, value, Integer(minimum))

    def number(self, key: str, value: Any, low: float = 0.0, high: float = float("inf")) -> float:
        """A number in (low, high]."""
        return self.check(key, value, Number(low, high))

    def choice(self, key: str, value: Any, allowed) -> Any:
        return self.check(key, value, OneOf(tuple(allowed)))

    def check(self, key: str, value: Any, allowed: Allowed) -> Any:
        try:
            return allowed.check(key, value)
        except ConfigError as error:
            raise SuiteError(f"{self.path}: {error}") from None


def _parse_grid(check: Checker, table: Any) -> dict[str, list]:
    check.keys("grid.", table, tuple(GRID_AXES))
    grid = {}
    for axis, spec in GRID_AXES.items():
        raw = table.get(axis, spec.default)
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
            elif axis == "amp":
                if not isinstance(value, bool):
                    raise check.fail(key, value, "use true or false")
            else:
                check.check(key, value, spec.allowed)
        if len(set(map(str, values))) != len(values):
            raise check.fail(f"grid.{axis}", values, "each value may appear once")
        grid[axis] = values
    return grid


def _parse_layers(check: Checker, raw: Any) -> list[LayerEntry]:
    if raw is None:
        raise SuiteError(f"{check.path}: key 'layers' is missing; list registered layer names (see `ttt-bench ls`)")
    entries = []
    for i, entry in enumerate(check.list("layers", raw, nonempty=True)):
        key = f"layers[{i}]"
        if isinstance(entry, str):
            matched = fnmatch.filter(layers.names(), entry)
            if not matched:
                raise SuiteError(f"{check.path}: key {key!r}: {unknown_layer(entry, 'no registered layer matches')}")
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


def _sweep(check: Checker, key: str, sweep: Any, allowed: list[str]) -> list[dict]:
    """An entry's 'sweep' table (name -> values), checked, as the list of its combinations."""
    check.keys(f"{key}.sweep.", sweep, tuple(allowed))
    for name, values in sweep.items():
        check.list(f"{key}.sweep.{name}", values, nonempty=True)
    return [dict(zip(sweep, combination)) for combination in itertools.product(*sweep.values())]


def _check_unique_labels(check: Checker, key: str, labels: list[str], remedy: str) -> None:
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise SuiteError(f"{check.path}: key {key!r}: {repeated} listed more than once; give each entry its own "
                         f"{remedy}")


def _parse_tasks(check: Checker, raw: Any) -> list[TaskEntry]:
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
        # A task's own [train] and [model] settings, each value checked here; the suite's tables fill the rest.
        train, model = entry.get("train", {}), entry.get("model", {})
        check.keys(f"{key}.train.", train, table_keys("train"))
        _settings(check, TrainSettings, train)
        check.keys(f"{key}.model.", model, TASK_MODEL_KEYS)
        _settings(check, ModelSettings, model)
        sweep = entry.get("sweep", {})
        for swept in _sweep(check, key, sweep, [o for o in tasks.option_docs(name) if o not in options]):
            given = {**options, **swept}
            try:
                tasks.task_options(name, given)
            except ConfigError as error:
                raise SuiteError(f"{check.path}: key {key!r}: {error}") from None
            entries.append(TaskEntry(label + "".join(f"-{k}={v}" for k, v in swept.items()), name, given, key, train,
                                     model))
    _check_unique_labels(check, "tasks", [entry.label for entry in entries], "'label'")
    return entries


def _parse_model(check: Checker, table: Any, entries: list[LayerEntry]) -> ModelSettings:
    check.keys("model.", table, table_keys("model"))
    values: dict[str, Any] = {key: value for key, value in table.items() if key != "match_params"}
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
    return _settings(check, ModelSettings, values)


def _parse_settings(check: Checker, table: str, values: Any):
    """A [measure], [oom] or [train] table, checked against its declaration (ttt_bench.sweep.schema)."""
    check.keys(f"{table}.", values, table_keys(table))
    return _settings(check, SETTINGS_TABLES[table], values)


def _settings(check: Checker, cls: type, values: dict):
    try:
        return cls(**values)
    except ConfigError as error:
        raise SuiteError(f"{check.path}: {error}") from None
