"""The keys a suite file may hold, each declared once: its default, what it allows and a one-line doc. The parser
(ttt_bench.sweep.parse) checks a file against these declarations, its errors quote them, and docs/suite-keys.md
is generated from them (`python -m ttt_bench.sweep.schema > docs/suite-keys.md`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ttt_bench.config import (
    Allowed,
    Integer,
    ListOf,
    Number,
    OneOf,
    Optional,
    check_fields,
    declared_fields,
    knob,
)
from ttt_bench.errors import ConfigError
from ttt_bench.profile.measure import DEFAULT_METRICS, DTYPES, METRICS, TimingBudget
from ttt_bench.profile.memory_fit import CARD_BUDGETS_GIB
from ttt_bench.results import BACKENDS, DEFAULT_MEASUREMENTS, PROFILE_MEASUREMENTS
from ttt_bench.training.models import ModelSettings
from ttt_bench.training.train import TrainSettings


class SuiteError(ConfigError):
    """A suite file that cannot run as written; the message names the file, the key and what is allowed."""


ACCURACY = "accuracy"  # the metric of a training suite
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class GridAxis:
    default: list | None  # None: no default (seq_len: `run` needs it, `oom` searches it instead)
    doc: str
    allowed: Allowed | None = None  # what each value of a numeric axis takes; dtype and device are checked by name


# Bounds above any real run, low enough that no size derived from them leaves an int64 (B x N x D <= 2**58; a
# cell's analytic FLOPs are checked against int64 as well, by the parser, since attention's grow as N**2).
MAX_SEQ_LEN = 2**24  # 16 Mi tokens
MAX_BATCH = 2**20
MAX_D_MODEL = 2**14  # the widest models' (16384); the parser builds each layer, and one D x D weight is 1 GiB here
MAX_SEED = 2**32 - 1  # the widest seed numpy's generators and most tools take
GRID_AXES = {
    "seq_len": GridAxis(None, "sequence lengths N (tokens); required by `run`, searched by `oom`",
                        Integer(1, MAX_SEQ_LEN)),
    "batch": GridAxis([1], "batch sizes B (sequences); a training suite's default is [32]", Integer(1, MAX_BATCH)),
    "d_model": GridAxis([256], "model widths D (features)", Integer(1, MAX_D_MODEL)),
    "n_heads": GridAxis([4], "heads H; D must be divisible by H", Integer(1, MAX_D_MODEL)),
    "dtype": GridAxis(["float32"], f"parameter and activation dtypes: {', '.join(sorted(DTYPES))}"),
    "device": GridAxis(["cpu"], "'cpu', 'cuda' or 'cuda:<index>'"),
    "seed": GridAxis([0], "seeds of the initial weights and inputs (and of a training run's data)",
                     Integer(0, MAX_SEED)),
    "backend": GridAxis(["eager"], "profiling suites: 'eager' (the layer as written) or 'compile' (torch.compile; its "
                        "compile time is recorded apart and its outputs checked against eager)", OneOf(BACKENDS)),
    "amp": GridAxis([False], "profiling suites: true runs the cell under torch.autocast to the grid's low-precision "
                    "dtype (bfloat16, float16) with float32 weights, false casts the whole layer to dtype",
                    OneOf((False, True))),
}
TRAINING_BATCH = [32]  # grid.batch of a training suite that does not set it
NUMERIC_AXES = tuple(axis for axis, spec in GRID_AXES.items() if isinstance(spec.allowed, Integer))
PROFILING_AXES = ("backend", "amp")  # axes a training suite leaves at their default: its outer loop runs eager
LOW_PRECISION_DTYPES = ("bfloat16", "float16")  # what amp = true autocasts to
RULE_OPERATORS = ("gt", "ge", "lt", "le")

TASK_ENTRY_KEYS = ("name", "label", "options", "sweep", "train", "model")
# What a task entry's own `model` table may set: the recipe, not parameter matching (the suite's, one target).
TASK_MODEL_KEYS = ("n_layers", "mlp_ratio", "pooling", "position_init_std")

TOP_LEVEL_KEYS = {
    "name": "the suite's name: results go to results/NAME by default (default: the file's name)",
    "description": "one line shown by `ttt-bench ls`",
    "measurements": f"what a profiling suite measures, any of {list(PROFILE_MEASUREMENTS)} (default "
                    f"{list(DEFAULT_MEASUREMENTS)}; prefill and decode: docs/measurement.md#inference)",
    "metrics": f"what a profiling suite collects, any of {list(METRICS)} (default {list(DEFAULT_METRICS)}; the "
               f"analytic FLOPs are always there; op_time: where each call's time goes, docs/measurement.md); a "
               f"training suite's is ['{ACCURACY}']",
    "imports": "modules that register layers of your own, imported first by the runner and every worker: a .py path "
               "relative to the suite file, or a module name (found on the Python path, else as that name + .py beside "
               "the suite)",
    "layers": "layer entries: a registered name, a glob over the names ('ttt-*'), or a table "
              "{ name, label, knobs, sweep }",
    "tasks": "a training suite's task entries: a task name or a table { name, label, options, sweep, train, model }; "
             "its `train` and `model` set [train] and [model] keys for that task only (`model`: "
             + ", ".join(TASK_MODEL_KEYS) + ")",
    "grid": "the axes whose product makes the cells (below)",
    "measure": "how each cell is measured ([measure], below)",
    "model": "a training suite's backbone ([model], below)",
    "train": "a training suite's outer loop ([train], below)",
    "exclude": "rules [[exclude]]: drop the cells that match every condition (with 'reason': keep them as skipped)",
    "only": "rules [[only]]: the cells whose layer (and task) match keep only the grid values that match",
    "oom": "the out-of-memory search of `ttt-bench oom` ([oom], below)",
}
LAYER_ENTRY_KEYS = ("name", "label", "knobs", "sweep")
# A timeout, or a total timing time, beyond a week is no setting but a typo; longer ones also overflow the waits
# (threading and select refuse a timeout past about 2**63 ns, and inf crashes them).
MAX_SECONDS = 7 * 24 * 3600.0
# One CPU thread per core of the largest machines (2 sockets x 256 cores x 2 hardware threads is 1024); more only
# oversubscribes, and 100000 makes torch start 100000 OpenMP threads. A fixed bound keeps a suite portable.
MAX_THREADS = 1024
MAX_GIB = float(2**20)  # 1 PiB: a memory budget beyond any machine, whose bytes (2**50) stay well within int64


@dataclass(frozen=True)
class MeasureSettings:
    """How each cell is measured ([measure]); all but `timeout_s` are part of a cell's identity."""

    repeats: int = knob(5, "timed repeats of a call, at least", Integer(1))
    slow_repeats: int = knob(3, "timed repeats, at least, of a call slower than 2 x min_time_s", Integer(1))
    min_time_s: float = knob(0.5, "timed repeats go on until they add up to this many seconds",
                             Number(0.0, MAX_SECONDS))
    threads: int | None = knob(None, "CPU threads (torch.set_num_threads); unset leaves torch's default",
                               Optional(Integer(1, MAX_THREADS)))
    memory_budget_gib: float | None = knob(
        None, "tracked-bytes budget per cell in GiB; unset: half the free memory on CPU, the card's own on CUDA",
        Optional(Number(0.0, MAX_GIB)))
    decode_samples: int = knob(32, "decode: timed samples of generated tokens, each a run of consecutive steps lasting "
                               "1 ms or more; the median and p20/p80 per token are over them", Integer(32, 2**20))
    prefill_chunk: int = knob(1024, "decode: the prompt is prefilled in chunks of this many tokens, each made and "
                              "dropped in turn, so the peak holds the state and one chunk", Integer(1, MAX_SEQ_LEN))
    count_flops_max_seq_len: int = knob(1024, "count FLOPs with fvcore and FlopCounterMode up to this N (tokens)",
                                        Integer(0, MAX_SEQ_LEN))
    timeout_s: float = knob(900.0, "a cell with no result after this many seconds is recorded as 'timeout'",
                            Number(0.0, MAX_SECONDS))

    def __post_init__(self) -> None:
        check_fields(self, "measure.")

    def timing_budget(self) -> TimingBudget:
        return TimingBudget(
            min_total_s=self.min_time_s, min_repeats=self.repeats, slow_call_s=2 * self.min_time_s,
            slow_min_repeats=self.slow_repeats,
        )


@dataclass(frozen=True)
class OomSettings:
    """The out-of-memory frontier search ([oom]); see ttt_bench.sweep.oom."""

    budget_gib: float | None = knob(None, "the memory budget in GiB on any device; unset: the two below",
                                    Optional(Number(0.0, MAX_GIB)))
    budget_fraction: float = knob(1.0, "on CUDA: this fraction of the card's memory", Number(0.0, 1.0))
    cpu_budget_gib: float = knob(1.0, "on CPU: this many GiB of tracked live tensor bytes",
                                  Number(0.0, MAX_GIB))
    measurement: str = knob("forward_backward", "the pass whose peak must fit; 'decode' is the inference frontier: the "
                            "prompt prefilled in chunks, then decoding from its state", OneOf(PROFILE_MEASUREMENTS))
    start_seq_len: int = knob(1024, "the doubling starts here (and halves from here if this does not fit)",
                              Integer(1, MAX_SEQ_LEN))
    min_seq_len: int = knob(16, "give up below this N; the memory fit's lengths are at least this too",
                            Integer(1, MAX_SEQ_LEN))
    max_seq_len: int = knob(2**20, "stop doubling here: the frontier is at least this", Integer(1, MAX_SEQ_LEN))
    resolution: int = knob(256, "bisect until the fitting and the failing N are this close; N stays a multiple "
                                "of it", Integer(1, MAX_SEQ_LEN))
    predict_budget_gib: tuple[float, ...] = knob(CARD_BUDGETS_GIB, "budgets (GiB) to predict the frontier for from "
                                                 "the memory fit (docs/oom.md#the-memory-fit)",
                                                 ListOf(Number(0.0, MAX_GIB)))

    def __post_init__(self) -> None:
        check_fields(self, "oom.")
        if not self.min_seq_len <= self.start_seq_len <= self.max_seq_len:
            raise ConfigError(f"key 'oom': min_seq_len <= start_seq_len <= max_seq_len must hold; got "
                              f"{self.min_seq_len}, {self.start_seq_len}, {self.max_seq_len}")


SETTINGS_TABLES = {"measure": MeasureSettings, "oom": OomSettings, "model": ModelSettings, "train": TrainSettings}


def table_keys(table: str) -> tuple[str, ...]:
    """The keys a [table] of a suite file may set."""
    return tuple(field.name for field in declared_fields(SETTINGS_TABLES[table]))


def reference_markdown() -> str:
    """docs/suite-keys.md: every key of a suite file with its default, what it allows and its doc."""
    lines = ["# Suite keys", "",
             "Generated from the declarations in `ttt_bench/sweep/schema.py`, `ttt_bench/training/models.py` and "
             "`ttt_bench/training/train.py` (`python -m ttt_bench.sweep.schema > docs/suite-keys.md`); a test keeps "
             "this file equal to them. How the keys work together: [suites.md](suites.md).", "",
             "## Top level", "", "| key | meaning |", "|---|---|"]
    lines += [f"| `{key}` | {doc} |" for key, doc in TOP_LEVEL_KEYS.items()]
    lines += ["", "## [grid]", "", "Each axis is a list, or one value. The cells are the product of the axes.", "",
              "| key | default | allowed | meaning |", "|---|---|---|---|"]
    lines += [f"| `{axis}` | {'—' if spec.default is None else _shown(spec.default)} | "
              f"{spec.allowed.describe() if spec.allowed else 'see the meaning'} | {spec.doc} |"
              for axis, spec in GRID_AXES.items()]
    for table, cls in SETTINGS_TABLES.items():
        lines += ["", f"## [{table}]", "", (cls.__doc__ or "").strip().splitlines()[0], "",
                  "| key | default | allowed | meaning |", "|---|---|---|---|"]
        for field in declared_fields(cls):
            allowed = field.metadata["allowed"]
            lines.append(f"| `{field.name}` | {_shown(field.default)} | "
                         f"{allowed.describe() if allowed else 'see the meaning'} | {field.metadata['doc']} |")
    lines += ["", "## [[exclude]] and [[only]]", "",
              "A rule's conditions: `layer` and `task` (names or globs, matched against the label and the registered "
              "name), and any grid axis: a value, a list of values, or bounds "
              f"{{ {', '.join(f'{op} = x' for op in RULE_OPERATORS)} }} on the numeric axes "
              f"({', '.join(NUMERIC_AXES)}). `reason` keeps the dropped cells as 'skipped' with that reason.", ""]
    return "\n".join(lines)


def _shown(value: object) -> str:
    if value is None:
        return "unset"
    return f"`{list(value) if isinstance(value, tuple) else value!r}`".replace("'", '"')


if __name__ == "__main__":
    print(reference_markdown(), end="")

