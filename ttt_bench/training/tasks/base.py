"""What every task hands the training loop, and the registry of tasks by name.

A task turns (options, N) into fixed train and test tensors, generated or read offline and
deterministically: the split never depends on the training seed, so seeds differ only in the model's
initial weights and the order of the training examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from ttt_bench.config import check_integer
from ttt_bench.errors import ConfigError
from ttt_bench.training.models import InputSpec

IGNORE_INDEX = -100  # per-token targets at positions that are not scored


@dataclass(frozen=True)
class TaskData:
    spec: InputSpec
    train_inputs: torch.Tensor  # [n, N] token ids or [n, N, C] pixel values
    train_targets: torch.Tensor  # [n] classes, or [n, N] with IGNORE_INDEX where nothing is scored
    test_inputs: torch.Tensor
    test_targets: torch.Tensor
    description: str  # what was loaded, e.g. '5000 MNIST digits at 28x28 (4000 train, 1000 test)'
    # The bands every accuracy figure draws, computed from the data: uniform guessing among the answers the task
    # can have, and the best score reachable without the capability the task probes (floor_name says which).
    chance_accuracy: float
    floor_accuracy: float
    floor_name: str


@dataclass(frozen=True)
class TaskKind:
    name: str
    options: type  # a frozen dataclass: defaults, one comment per field; `check(seq_len)` validates
    load: Callable[[Any, int], TaskData]
    needs_causal: bool  # predicts tokens of the sequence itself: a non-causal mixer would see the answers
    description: str
    default_lr: float  # the peak learning rate when a suite's [train] sets none (docs/accuracy.md#the-recipe)


_TASKS: dict[str, TaskKind] = {}


def register_task(name: str, options: type, needs_causal: bool, description: str, default_lr: float):
    def decorate(load: Callable[[Any, int], TaskData]) -> Callable[[Any, int], TaskData]:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is already registered")
        _TASKS[name] = TaskKind(name, options, load, needs_causal, description, default_lr)
        return load

    return decorate


def task_names() -> list[str]:
    return sorted(_TASKS)


def task_kind(name: str) -> TaskKind:
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r}; tasks: {', '.join(task_names())}")
    return _TASKS[name]


def task_options(name: str, given: Mapping[str, Any], seq_len: int | None = None):
    """The task's options with `given` applied, checked (against N too, when given)."""
    kind = task_kind(name)
    allowed = [f.name for f in dataclasses.fields(kind.options)]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"task {name!r} has no option {', '.join(map(repr, unknown))}; its options are: "
                          f"{', '.join(allowed)}")
    try:
        options = kind.options(**given)
    except TypeError as error:
        raise ConfigError(f"task {name!r}: {error}") from None
    if seq_len is not None:
        options.check(seq_len)
    return options


def load_task(name: str, given: Mapping[str, Any], seq_len: int) -> TaskData:
    return task_kind(name).load(task_options(name, given, seq_len), seq_len)


def option_docs(name: str) -> Mapping[str, tuple[Any, str]]:
    """option -> (default, one-line doc), for `ttt-bench ls`."""
    return MappingProxyType({
        f.name: (f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(task_kind(name).options)
    })


def check_integer_option(task: str, field: str, value: Any, minimum: int) -> None:
    check_integer(f"task {task!r}", field, value, minimum)


def majority_share(train_targets: torch.Tensor, test_targets: torch.Tensor) -> float:
    """Held-out accuracy of always answering the training split's most frequent target (scored targets only)."""
    train, test = train_targets[train_targets != IGNORE_INDEX], test_targets[test_targets != IGNORE_INDEX]
    return float((test == train.mode().values).double().mean())


def split_generator() -> torch.Generator:
    """The fixed generator behind every train/test split and generated data set (not the run's seed)."""
    return torch.Generator().manual_seed(0)
