"""Byte-level language modelling on the Python standard library's own source: a real corpus on every
machine that runs ttt-bench, read offline.

The .py files under the interpreter's stdlib folder (site-packages excluded), in sorted order, are
assigned to the held-out split by a hash of their path (one in ten), so the split is the same on every
run; each split is cut into non-overlapping windows of N + 1 bytes (inputs, next-byte targets). The
corpus varies a little between Python versions: the row's description names the version and size.
The evaluation also reports the loss at each position of the window, so a layer that keeps improving
with more context shows it (the TTT follow-up paper's loss-vs-position figure).
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from ttt_bench.config import knob
from ttt_bench.errors import ConfigError
from ttt_bench.training.models import InputSpec
from ttt_bench.training.tasks.base import (
    TaskData,
    check_integer_option,
    majority_share,
    register_task,
    split_generator,
)

VOCAB = 256  # bytes
HELD_OUT_ONE_IN = 10


@dataclass(frozen=True)
class BytesLmOptions:
    train_bytes: int = knob(2_000_000, "bytes of source to train on (read in file order)")
    test_windows: int = knob(256, "held-out windows of N + 1 bytes to evaluate on")

    def check(self, seq_len: int) -> None:
        check_integer_option("bytes-lm", "seq_len", seq_len, 2)
        check_integer_option("bytes-lm", "train_bytes", self.train_bytes, 2 * (seq_len + 1))
        check_integer_option("bytes-lm", "test_windows", self.test_windows, 1)


@register_task("bytes-lm", BytesLmOptions, needs_causal=True,
               description="byte-level language modelling on the Python standard library's source", default_lr=3e-3)
def load_bytes_lm(options: BytesLmOptions, seq_len: int) -> TaskData:
    window = seq_len + 1
    train_text, test_text, files = read_stdlib(options.train_bytes, options.test_windows * window)
    train = _windows(train_text, window)
    test = _windows(test_text, window)
    if not len(train) or not len(test):
        raise ConfigError(f"task 'bytes-lm': the standard library under {sysconfig.get_paths()['stdlib']} gave "
                          f"{len(train)} training and {len(test)} held-out windows of {window} bytes; a shorter "
                          f"seq_len or a smaller train_bytes is needed")
    # Training windows are shuffled by the run's seed; the held-out ones are a fixed sample.
    test = test[torch.randperm(len(test), generator=split_generator())[: options.test_windows]]
    return TaskData(
        InputSpec("tokens", VOCAB, seq_len, VOCAB, per_token=True),
        train[:, :-1], train[:, 1:], test[:, :-1], test[:, 1:],
        f"Python {platform.python_version()} stdlib source, {files} files: {len(train_text):,} train bytes "
        f"({len(train)} windows), {len(test)} held-out windows of {seq_len} bytes",
        chance_accuracy=1 / VOCAB, floor_accuracy=majority_share(train[:, 1:], test[:, 1:]),
        floor_name="the most frequent byte, without context",
    )


def read_stdlib(train_bytes: int, test_bytes: int) -> tuple[bytes, bytes, int]:
    """(train bytes, held-out bytes, files read), read until both are at least as long as asked."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, test, files = bytearray(), bytearray(), 0
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if "site-packages" in relative:
            continue
        held_out = int(hashlib.sha1(relative.encode()).hexdigest(), 16) % HELD_OUT_ONE_IN == 0
        split = test if held_out else train
        if len(split) >= (test_bytes if held_out else train_bytes):
            if len(train) >= train_bytes and len(test) >= test_bytes:
                break
            continue
        try:
            split += path.read_bytes()
        except OSError:
            continue  # an unreadable file is left out; the description counts the files read
        files += 1
    return bytes(train[:train_bytes]), bytes(test), files


def _windows(text: bytes, window: int) -> torch.Tensor:
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    count = len(data) // window
    return data[: count * window].view(count, window)
