"""Layers that fail on purpose, for the runner's crash-isolation tests; a suite enrols them with
`imports = ["faulty_layers"]` (tests/ is on the worker's path). Each fails in forward, so building one
and stating its cost work as for any layer."""

import os
import signal
import subprocess
import time

import torch

from ttt_bench.layers.base import LayerCost, SequenceMixer
from ttt_bench.layers.registry import register


class _Faulty(SequenceMixer):
    def cost(self, batch: int, seq_len: int) -> LayerCost:
        return LayerCost(batch * seq_len, forward_macs=0, useful_forward_macs=0, backward_macs=0, state_numel=None)


@register("faulty-raises")
class Raises(_Faulty):
    def mix(self, x):
        raise RuntimeError("injected failure in forward")


@register("faulty-segfaults")
class Segfaults(_Faulty):
    def mix(self, x):
        os.kill(os.getpid(), signal.SIGSEGV)


@register("faulty-hangs")
class Hangs(_Faulty):
    def mix(self, x):
        time.sleep(3600)


@register("faulty-spawns-and-hangs")
class SpawnsAndHangs(_Faulty):
    """Starts a child process (`sleep 1000`) and hangs: a timeout or a stop must kill the child too."""

    def mix(self, x):
        subprocess.Popen(["sleep", "1000"])
        time.sleep(3600)


@register("faulty-allocates")
class Allocates(_Faulty):
    """Asks for 256 MiB: past the tests' tracked-bytes budgets."""

    def mix(self, x):
        return x + torch.zeros(2**26, dtype=torch.float32).sum()


@register("faulty-nan")
class ReturnsNan(_Faulty):
    """Trains to a NaN loss at once: the training loop must record 'diverged', not crash."""

    def mix(self, x):
        return x * float("nan")
