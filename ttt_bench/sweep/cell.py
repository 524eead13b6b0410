"""A training cell of a suite: load its task, build the backbone around its layer, train, and return tidy
rows. Like a profiling cell it never raises: a failure is a row with its status and message.

Rows (beside the cell's config columns):
    measurement 'train'             accuracy, losses (nats), parameters, FLOPs per token, time, tokens/s
    measurement 'loss_by_position'  per-token tasks: the held-out loss over positions [position, position_end),
                                    in bins that double in width (1, 1, 2, 4, ...) as on a log axis
"""

from __future__ import annotations

import math

from ttt_bench.errors import ConfigError
from ttt_bench.profile.measure import DTYPES, first_line, is_out_of_memory, release_memory
from ttt_bench.results import POSITION_MEASUREMENT, TRAIN_MEASUREMENT
from ttt_bench.sweep.suite import PlannedCell
from ttt_bench.training.tasks import load_task
from ttt_bench.training.train import TrainResult, train_model


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
    train_row = {
        "measurement": TRAIN_MEASUREMENT, "status": result.status, "message": result.message,
        "task_description": data.description, **_train_metrics(result, config.mlp_hidden),
    }
    return [train_row, *_position_rows(result)]


def _train_metrics(result: TrainResult, mlp_hidden: int) -> dict[str, object]:
    evaluation, cost = result.evaluation, result.cost
    tokens = result.steps * cost.tokens
    train_flops = cost.forward_backward_flops_per_token * tokens
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
