"""Offline tasks for the outer loop: pixel classification, associative recall, byte-level language modelling."""

from ttt_bench.training.tasks import bytes_lm, mqar, pixels  # noqa: F401  (they register the tasks)
from ttt_bench.training.tasks.base import (  # noqa: F401
    IGNORE_INDEX,
    TaskData,
    load_task,
    option_docs,
    task_kind,
    task_names,
    task_options,
)
