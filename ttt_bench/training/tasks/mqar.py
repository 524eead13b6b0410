"""Multi-query associative recall (MQAR; Arora et al., "Zoology", 2023): the standard probe of how much
a recurrent state remembers.

    k1 v1 k2 v2 ... kP vP | 0 0 k3 v3 0 0 k1 v1 ...
    key-value pairs       | each key asked once, at a random place, followed by its value

Keys come from the lower half of the vocabulary (distinct within a sequence), values from the upper
half (drawn independently); token 0 fills. The model is scored at each query key on predicting the
next token, its value: a per-token target there, IGNORE_INDEX elsewhere. Difficulty grows with the
pairs P (the state must hold P associations) and with N (the distance between a pair and its query).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ttt_bench.config import knob
from ttt_bench.errors import ConfigError
from ttt_bench.training.models import InputSpec
from ttt_bench.training.tasks.base import IGNORE_INDEX, TaskData, check_integer_option, register_task, split_generator

MQAR_LR = 3e-3  # docs/accuracy.md#the-recipe


@dataclass(frozen=True)
class MqarOptions:
    n_pairs: int = knob(8, "key-value pairs per sequence P (each is queried once); N must be >= 4P")
    vocab_size: int = knob(64, "tokens: 0 fills, keys from 1 .. V/2 - 1, values from V/2 .. V - 1")
    train_examples: int = knob(20000, "generated training sequences")
    test_examples: int = knob(1000, "generated held-out sequences")

    def check(self, seq_len: int) -> None:
        for field, minimum in (("n_pairs", 1), ("train_examples", 1), ("test_examples", 1)):
            check_integer_option("mqar", field, getattr(self, field), minimum)
        check_integer_option("mqar", "vocab_size", self.vocab_size, 2 * self.n_pairs + 2)
        if seq_len < 4 * self.n_pairs:
            raise ConfigError(f"task 'mqar': seq_len={seq_len} is not allowed with n_pairs={self.n_pairs}; the pairs "
                              f"and their queries take 4 x n_pairs = {4 * self.n_pairs} tokens")


@register_task("mqar", MqarOptions, needs_causal=True,
               description="multi-query associative recall: key-value pairs, then each key queried once",
               default_lr=MQAR_LR)
def load_mqar(options: MqarOptions, seq_len: int) -> TaskData:
    generator = split_generator()
    train = generate_mqar(options.train_examples, seq_len, options.n_pairs, options.vocab_size, generator)
    test = generate_mqar(options.test_examples, seq_len, options.n_pairs, options.vocab_size, generator)
    return TaskData(
        InputSpec("tokens", options.vocab_size, seq_len, options.vocab_size, per_token=True), *train, *test,
        f"MQAR, {options.n_pairs} pairs in {seq_len} tokens, vocabulary {options.vocab_size} "
        f"({options.train_examples} train, {options.test_examples} test)",
        chance_accuracy=1 / (options.vocab_size - options.vocab_size // 2),
        floor_accuracy=no_recall_accuracy(*test, options.n_pairs),
        floor_name="guessing among the values in the context not yet asked for",
    )


def generate_mqar(count: int, seq_len: int, n_pairs: int, vocab_size: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs [count, N] and targets [count, N] (the value at each query key, IGNORE_INDEX elsewhere)."""
    half = vocab_size // 2
    keys = torch.rand(count, half - 1, generator=generator).argsort(dim=1)[:, :n_pairs] + 1
    values = torch.randint(half, vocab_size, (count, n_pairs), generator=generator)
    inputs = torch.zeros(count, seq_len, dtype=torch.long)
    inputs[:, 0 : 2 * n_pairs : 2] = keys
    inputs[:, 1 : 2 * n_pairs : 2] = values
    # Queries sit in two-token slots after the pairs: each key in a random slot, in a random order.
    slots = (seq_len - 2 * n_pairs) // 2
    slot = torch.rand(count, slots, generator=generator).argsort(dim=1)[:, :n_pairs]
    asked = torch.rand(count, n_pairs, generator=generator).argsort(dim=1)
    key_positions = 2 * n_pairs + 2 * slot
    rows = torch.arange(count).unsqueeze(1)
    inputs[rows, key_positions] = keys.gather(1, asked)
    inputs[rows, key_positions + 1] = values.gather(1, asked)
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[rows, key_positions] = values.gather(1, asked)
    return inputs, targets


def no_recall_accuracy(inputs: torch.Tensor, targets: torch.Tensor, n_pairs: int) -> float:
    """The best expected accuracy without binding keys to values: at each query, answer the most frequent value
    among the pairs whose value has not yet been asked for (a model may see the earlier answers in the context,
    and each key is asked once). H_P / P for P distinct values: 0.34 at 8 pairs."""
    right = asked = 0.0
    for sequence, answers in zip(inputs.tolist(), targets.tolist(), strict=True):
        remaining = sequence[1 : 2 * n_pairs : 2]
        for answer in (a for a in answers if a != IGNORE_INDEX):
            right += max(map(remaining.count, set(remaining))) / len(remaining)
            asked += 1
            remaining.remove(answer)
    return right / asked
