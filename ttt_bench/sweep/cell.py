"""What runs inside a worker process: one cell of a suite, measured, as tidy rows with its config, the run's
timing and the environment. A profiling cell is measured by ttt_bench.profile.measure; a training cell loads its
task, builds the backbone around its layer and trains it. Like measure_cell, neither raises: a failure is a
row with its status and message.

Training rows (beside the cell's config columns):
    measurement 'train'             accuracy, losses (nats), parameters, FLOPs per token, time, tokens/s, the
                                    task's chance and floor, the model's recurrent state in bytes
    measurement 'eval'              each evaluation during training (the learning curve): step, tokens and
                                    FLOPs so far, accuracy, held-out loss
    measurement 'loss_by_position'  per-token tasks: the held-out loss over positions [position, position_end),
                                    in bins that double in width (1, 1, 2, 4, ...) as on a log axis
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import torch

from ttt_bench.errors import ConfigError
from ttt_bench.layers.user_modules import import_layer_module
from ttt_bench.profile.env import environment
from ttt_bench.profile.inference import DecodeSettings
from ttt_bench.profile.matmul_peak import matmul_tflops_per_s
from ttt_bench.profile.measure import DTYPES, first_line, is_out_of_memory, measure_cell, release_memory, tidy_rows
from ttt_bench.profile.memory import available_memory_bytes
from ttt_bench.results import EVAL_MEASUREMENT, POSITION_MEASUREMENT, TRAIN_MEASUREMENT, GiB
from ttt_bench.sweep.plan import PlannedCell
from ttt_bench.training.tasks import load_task
from ttt_bench.training.tasks.base import TaskData
from ttt_bench.training.train import TrainResult, train_model

_ENVIRONMENTS: dict[tuple[str, int], dict[str, object]] = {}
_MATMUL_PEAKS: dict[tuple[str, str, int], float] = {}


def measure_planned_cell(cell: PlannedCell) -> list[dict[str, object]]:
    """Measure in this process: the cell's tidy rows with its config, timing of the run and environment."""
    started = now_utc()
    start = time.perf_counter()
    for module in cell.imports:
        import_layer_module(module)
    if cell.settings.threads is not None:
        torch.set_num_threads(cell.settings.threads)
    env_key = (cell.cell.device, torch.get_num_threads())
    if env_key not in _ENVIRONMENTS:
        _ENVIRONMENTS[env_key] = environment(cell.cell.device)
    rows = train_cell(cell) if cell.training is not None else _profile_rows(cell)
    run_columns = {"started_at": started, "finished_at": now_utc(), "wall_s": time.perf_counter() - start}
    return [{**cell.config_columns(), **row, **run_columns, **_ENVIRONMENTS[env_key]} for row in rows]


def _profile_rows(cell: PlannedCell) -> list[dict[str, object]]:
    counts_flops = cell.cell.seq_len <= cell.settings.count_flops_max_seq_len
    budget = memory_budget_bytes(cell)
    row = measure_cell(
        cell.cell,
        cell.settings.timing_budget(),
        memory_budget_bytes=budget,
        metrics=tuple(m for m in cell.metrics if m != "flops" or counts_flops),
        passes=cell.passes,
        skip_reason=cell.skip_reason,
        decode=DecodeSettings(cell.settings.decode_samples, cell.settings.prefill_chunk),
    )
    row["memory_budget_bytes"] = budget
    if "time" in cell.metrics and row["status"] == "ok":
        row["matmul_tflops_per_s"] = _matmul_peak(cell.cell.device, cell.cell.dtype)
    return tidy_rows(row, cell.passes)


def _matmul_peak(device: str, dtype: str) -> float:
    """Measured once per worker, device, dtype and thread count: the ceiling the cells' TFLOP/s is read against."""
    key = (device, dtype, torch.get_num_threads())
    if key not in _MATMUL_PEAKS:
        _MATMUL_PEAKS[key] = matmul_tflops_per_s(device, DTYPES[dtype])
    return _MATMUL_PEAKS[key]


def memory_budget_bytes(cell: PlannedCell) -> int | None:
    """The tracked-bytes budget: as set, else on CPU half the free memory (tracked bytes miss kernel
    workspace and allocator slack) and on CUDA none (the card's own limit)."""
    if cell.settings.memory_budget_gib is not None:
        return int(cell.settings.memory_budget_gib * GiB)
    if cell.cell.device != "cpu":
        return None
    available = available_memory_bytes()
    return None if available is None else available // 2


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def train_cell(planned: PlannedCell) -> list[dict[str, object]]:
    """The cell's rows, without its config columns."""
    if planned.skip_reason is not None:
        return [{"measurement": TRAIN_MEASUREMENT, "status": "skipped", "message": planned.skip_reason}]
    cell, training = planned.cell, planned.training
    try:
        data = load_task(training.task.task, training.task.options, cell.seq_len)
        config = training.model.model_config(cell.layer, cell.overrides, cell.d_model, cell.n_heads, data.spec)
        result = train_model(config, data, training.train, batch_size=cell.batch, seed=cell.seed,
                             device=cell.device, dtype=DTYPES[cell.dtype])
    except Exception as error:  # a cell's failure is its row; the sweep goes on
        status = "oom" if is_out_of_memory(error) else "error"
        hint = "" if isinstance(error, ConfigError) else f" ({type(error).__name__})"
        return [{"measurement": TRAIN_MEASUREMENT, "status": status, "message": first_line(error) + hint}]
    finally:
        release_memory(cell.device)
    bands = _bands(data, training.train.target_accuracy)
    train_row = {
        "measurement": TRAIN_MEASUREMENT, "status": result.status, "message": result.message,
        "task_description": data.description, "floor_name": data.floor_name, **bands,
        "state_bytes_stated": result.state_bytes, **_train_metrics(result, config.mlp_hidden),
    }
    return [train_row, *_eval_rows(result, bands), *_position_rows(result)]


def _bands(data: TaskData, target_accuracy: float) -> dict[str, float]:
    """What a figure draws each accuracy against: chance, the floor without the capability, the target."""
    return {"chance_accuracy": data.chance_accuracy, "floor_accuracy": data.floor_accuracy,
            "target_accuracy": target_accuracy}


def _eval_rows(result: TrainResult, bands: dict[str, float]) -> list[dict[str, object]]:
    """One row per evaluation: the learning curve, against steps, tokens and training FLOPs."""
    return [{"measurement": EVAL_MEASUREMENT, "status": "ok", "message": "", "step": point.step,
             "tokens_seen": point.step * result.cost.tokens, "train_flops": result.cost.training_flops(point.step),
             "train_time_s": point.train_time_s, "accuracy": point.evaluation.accuracy,
             "eval_loss_nats": point.evaluation.loss, **bands} for point in result.curve]


def _train_metrics(result: TrainResult, mlp_hidden: int) -> dict[str, object]:
    evaluation, cost = result.evaluation, result.cost
    train_flops = cost.training_flops(result.steps)
    return {
        "accuracy": evaluation.accuracy if evaluation else math.nan,
        "eval_loss_nats": evaluation.loss if evaluation else math.nan,
        "train_loss_nats": result.train_loss,
        "params": result.params,
        "mlp_hidden": mlp_hidden,
        "flops_per_token": cost.forward_flops_per_token,
        "train_flops_per_token": cost.forward_backward_flops_per_token,
        "train_flops": train_flops,
        "train_time_s": result.train_time_s,
        "step_time_ms": 1e3 * result.step_time_s,
        "compile_s": result.compile_s,
        "tokens_per_s": result.tokens_per_s,
        "tflops_per_s": train_flops / result.train_time_s / 1e12 if result.train_time_s > 0 else math.nan,
        "steps": result.steps,
        "steps_to_target": result.steps_to_target,
    }


def _position_rows(result: TrainResult) -> list[dict[str, object]]:
    losses = result.evaluation.loss_by_position if result.evaluation else None
    if not losses:
        return []
    rows = []
    for start, end in position_bins(len(losses)):
        scored = [loss for loss in losses[start:end] if math.isfinite(loss)]
        if scored:
            rows.append({"measurement": POSITION_MEASUREMENT, "status": result.status, "message": "",
                         "position": start, "position_end": end, "eval_loss_nats": sum(scored) / len(scored)})
    return rows


def position_bins(seq_len: int) -> list[tuple[int, int]]:
    """[0, 1), [1, 2), [2, 4), [4, 8), ... up to N: equal widths on a log axis of positions."""
    bins, start = [(0, 1)], 1
    while start < seq_len:
        bins.append((start, min(2 * start, seq_len)))
        start *= 2
    return bins
