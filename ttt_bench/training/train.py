"""The outer loop: trains a backbone hosting one mixer on one task, and says how it went.

AdamW (decay on matrices only), linear warm-up then cosine decay, gradient clipping by global norm,
evaluation on the task's held-out split, early stopping once a target accuracy is reached. A NaN or
infinite loss or gradient ends the run with status 'diverged' and the step it happened at.

Deterministic on the CPU: the seed fixes the initial weights and the order of the examples, and the
task's data never depends on it, so the same seed (and thread count) gives the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ttt_bench.config import Integer, Number, OneOf, Optional, check_fields, knob
from ttt_bench.errors import ConfigError
from ttt_bench.training.models import ModelConfig, ModelCost, SequenceModel, parameter_count
from ttt_bench.training.tasks.base import IGNORE_INDEX, TaskData

LOW_PRECISION = (torch.bfloat16, torch.float16)  # trained under autocast with float32 weights


@dataclass(frozen=True)
class TrainSettings:
    """How the outer loop trains ([train] in a suite)."""

    steps: int = knob(300, "optimiser steps, at most (fewer when the target is reached)", Integer(1))
    lr: float | None = knob(None, "peak AdamW learning rate (empty: the task's default, `ttt-bench ls`)",
                            Optional(Number()))
    weight_decay: float = knob(0.05, "AdamW decay of weight matrices (not of biases, norms or gains)",
                               Number(closed=True))
    warmup_steps: int = knob(30, "the learning rate rises linearly from 0 over these steps, then decays by a "
                                 "cosine", Integer(0))
    min_lr_ratio: float = knob(0.1, "the cosine ends at lr x this", Number(0.0, 1.0, closed=True))
    clip_norm: float = knob(1.0, "clip the global gradient norm to this (0: no clipping)", Number(closed=True))
    eval_every: int = knob(0, "evaluate every this many steps (0: only at the end); early stopping looks here",
                           Integer(0))
    eval_examples: int = knob(1000, "held-out examples per evaluation, at most", Integer(1))
    target_accuracy: float = knob(0.0, "stop once the held-out accuracy reaches this (0: never)",
                                  Number(0.0, 1.0, closed=True))
    compile: bool = knob(False, "train through torch.compile of the whole model; the first step compiles (compile_s, "
                                "kept out of step_time_ms), so it pays off on long runs only (docs/accuracy.md)",
                         OneOf((False, True)))

    def __post_init__(self) -> None:
        check_fields(self, "train.")

    def for_task(self, default_lr: float) -> TrainSettings:
        """These settings with the task's default learning rate where none is set."""
        return self if self.lr is not None else dataclasses.replace(self, lr=default_lr)

    def learning_rate(self, step: int) -> float:
        """The rate for optimiser step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Evaluation:
    accuracy: float  # share of scored predictions that are right (classes, or tokens at scored positions)
    loss: float  # mean cross-entropy per scored prediction, nats
    loss_by_position: list[float] | None = None  # per-token tasks: mean loss at each position, nats (NaN: unscored)


@dataclass
class CurvePoint:
    """One evaluation during training: where the run stood and how it scored."""

    step: int  # optimiser steps taken before it
    train_time_s: float  # of those steps, evaluations excluded
    evaluation: Evaluation


@dataclass
class TrainResult:
    status: str  # 'ok' or 'diverged'
    message: str
    params: int
    state_bytes: int | None  # the model's recurrent state per sequence (SequenceModel.state_bytes)
    cost: ModelCost  # analytic work of one training batch
    steps: int  # optimiser steps taken
    train_loss: float  # mean training loss over the last tenth of the steps taken, nats
    train_time_s: float  # the optimiser steps only, evaluations excluded
    tokens_per_s: float  # training tokens (B x N per step) per second of train_time_s
    evaluation: Evaluation | None  # the last one; None when the run diverged before any
    steps_to_target: int | None = None  # the step whose evaluation first reached the target
    losses: list[float] = field(default_factory=list)  # every step's training loss, nats
    curve: list[CurvePoint] = field(default_factory=list)  # every evaluation, in step order (the learning curve)
    compile_s: float | None = None  # compiled training: the first step's wall-clock, which compiles (in train_time_s)

    @property
    def step_time_s(self) -> float:
        """Wall-clock per optimiser step; with compiling, over the steps after the first."""
        compiled = self.compile_s is not None and self.steps > 1
        steps = self.steps - compiled
        return (self.train_time_s - (self.compile_s if compiled else 0.0)) / steps if steps else math.nan


def train_model(config: ModelConfig, data: TaskData, settings: TrainSettings, *, batch_size: int, seed: int,
                device: str = "cpu", dtype: torch.dtype = torch.float32) -> TrainResult:
    if settings.lr is None:
        raise ConfigError("train: lr is not set; TrainSettings.for_task gives the task's default")
    torch.manual_seed(seed)
    model = SequenceModel(config, data.spec).to(device=device, dtype=_weight_dtype(dtype))
    # Evaluations run the eager model: under no_grad a compiled one would compile a second graph for them.
    forward = torch.compile(model) if settings.compile else model
    compile_s = None
    cost = model.cost(batch_size)
    optimiser = torch.optim.AdamW(_parameter_groups(model, settings.weight_decay), lr=settings.lr)
    batches = _batches(len(data.train_inputs), batch_size, torch.Generator().manual_seed(seed))
    losses: list[float] = []
    curve: list[CurvePoint] = []
    evaluation, steps_to_target, train_time = None, None, 0.0
    for step in range(settings.steps):
        start = time.perf_counter()
        for group in optimiser.param_groups:
            group["lr"] = settings.learning_rate(step)
        index = next(batches)
        inputs = data.train_inputs[index].to(device)
        targets = data.train_targets[index].to(device)
        model.train()
        with _autocast(device, dtype):
            loss = _cross_entropy(forward(_cast(inputs, dtype)), targets, reduction="mean")
        optimiser.zero_grad(set_to_none=True)
        norm = 0.0
        if torch.isfinite(loss):
            loss.backward()
            # With no clipping (0), an infinite bound still returns the norm the divergence check needs.
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm or math.inf))
        train_time += time.perf_counter() - start
        if settings.compile and step == 0:
            compile_s = train_time
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]) or not math.isfinite(norm):
            what = "loss" if not math.isfinite(losses[-1]) else "gradient norm"
            return _result(
                "diverged", f"the training {what} became {losses[-1] if what == 'loss' else norm} at step {step + 1} "
                f"(lr {settings.learning_rate(step):.3g})", model, cost, losses, train_time, curve, None, compile_s,
            )
        optimiser.step()
        last = step + 1 == settings.steps
        if last or (settings.eval_every and (step + 1) % settings.eval_every == 0):
            evaluation = evaluate(model, data, settings.eval_examples, batch_size, device, dtype)
            curve.append(CurvePoint(step + 1, train_time, evaluation))
            if settings.target_accuracy and evaluation.accuracy >= settings.target_accuracy:
                steps_to_target = step + 1
                break
    if not math.isfinite(evaluation.loss):
        return _result("diverged", f"the held-out loss is {evaluation.loss}", model, cost, losses, train_time,
                       curve, None, compile_s)
    return _result("ok", "", model, cost, losses, train_time, curve, steps_to_target, compile_s)


@torch.no_grad()
def evaluate(model: SequenceModel, data: TaskData, examples: int, batch_size: int, device: str,
             dtype: torch.dtype = torch.float32) -> Evaluation:
    """Accuracy and loss on the first `examples` held-out examples (the same ones on every run)."""
    model.eval()
    inputs, targets = data.test_inputs[:examples], data.test_targets[:examples]
    correct = scored = 0
    total_loss = 0.0
    position_loss = position_count = None
    for start in range(0, len(inputs), batch_size):
        batch_targets = targets[start : start + batch_size].to(device)
        with _autocast(device, dtype):
            logits = model(_cast(inputs[start : start + batch_size].to(device), dtype)).float()
        losses = _cross_entropy(logits, batch_targets, reduction="none")
        mask = batch_targets != IGNORE_INDEX
        correct += int(((logits.argmax(dim=-1) == batch_targets) & mask).sum())
        scored += int(mask.sum())
        total_loss += float(losses[mask].sum())
        if data.spec.per_token:
            sums, counts = (losses * mask).sum(dim=0).double(), mask.sum(dim=0).double()
            position_loss = sums if position_loss is None else position_loss + sums
            position_count = counts if position_count is None else position_count + counts
    by_position = None
    if position_loss is not None:
        by_position = (position_loss / position_count).tolist()  # NaN where no example is scored
    return Evaluation(correct / scored, total_loss / scored, by_position)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    """In nats, unscored positions left out: 'mean' over the scored predictions, or 'none': [B] for classes,
    [B, N] per token ([B, N, V] logits), 0 where unscored."""
    logits = logits.float()
    logits = logits.transpose(1, 2) if logits.dim() == 3 else logits
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction=reduction)


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weight matrices (2-D and up), not the biases, norm gains, the position table or the class token."""
    decayed, kept = [], []
    for name, param in model.named_parameters():
        (decayed if param.dim() >= 2 and name not in ("positions", "class_token") else kept).append(param)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]


def _batches(count: int, batch_size: int, generator: torch.Generator):
    """Index batches through shuffled epochs, forever."""
    if batch_size > count:
        raise ConfigError(f"train: batch={batch_size} is not allowed; the task has {count} training examples")
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def _weight_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in LOW_PRECISION else dtype


def _autocast(device: str, dtype: torch.dtype):
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype, enabled=dtype in LOW_PRECISION)


def _cast(inputs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return inputs.to(_weight_dtype(dtype)) if inputs.is_floating_point() else inputs


def _result(status: str, message: str, model: SequenceModel, cost: ModelCost, losses: list[float], train_time: float,
            curve: list[CurvePoint], steps_to_target: int | None, compile_s: float | None) -> TrainResult:
    """The run's result; its evaluation is the curve's last, kept only for a run that did not diverge."""
    tail = [loss for loss in losses[-max(1, len(losses) // 10):] if math.isfinite(loss)]
    tokens = len(losses) * cost.tokens
    return TrainResult(
        status=status, message=message, params=parameter_count(model), state_bytes=model.state_bytes(), cost=cost,
        steps=len(losses),
        train_loss=sum(tail) / len(tail) if tail else math.nan, train_time_s=train_time,
        tokens_per_s=tokens / train_time if train_time > 0 else math.nan,
        evaluation=curve[-1].evaluation if curve and status == "ok" else None,
        steps_to_target=steps_to_target, losses=losses, curve=curve, compile_s=compile_s,
    )
