"""Time per training step, eager against torch.compile of the whole model, in one process with interleaved rounds
(docs/accuracy.md#the-outer-loop): the figures behind `[train] compile`.

    python docs/examples/compiled_training.py ttt-linear,ttt-mlp

The model and batch are accuracy-quick's MQAR cell: B = 32, N = 64, D = 64, 4 heads, 2 blocks, 2 threads.
"""

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ttt_bench.training.models import ModelSettings, SequenceModel
from ttt_bench.training.tasks import IGNORE_INDEX, load_task

ROUNDS, STEPS_PER_ROUND, COMPILING_STEPS = 7, 10, 3


def time_layer(layer: str, data, inputs: torch.Tensor, targets: torch.Tensor) -> str:
    torch.manual_seed(0)
    model = SequenceModel(ModelSettings().model_config(layer, {}, 64, 4, data.spec), data.spec)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(forward) -> None:
        loss = F.cross_entropy(forward(inputs).transpose(1, 2), targets, ignore_index=IGNORE_INDEX)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    start = time.perf_counter()
    compiled = torch.compile(model)
    for _ in range(COMPILING_STEPS):
        step(compiled)
    compile_s = time.perf_counter() - start
    speedups, eager_ms = [], []
    for _ in range(ROUNDS):  # eager and compiled alternate, so drift of the machine hits both alike
        seconds = {}
        for name, forward in (("eager", model), ("compiled", compiled)):
            start = time.perf_counter()
            for _ in range(STEPS_PER_ROUND):
                step(forward)
            seconds[name] = (time.perf_counter() - start) / STEPS_PER_ROUND
        speedups.append(seconds["eager"] / seconds["compiled"])
        eager_ms.append(1e3 * seconds["eager"])
    speedups.sort()
    return (f"{layer}: eager {statistics.median(eager_ms):.1f} ms per step; compiled "
            f"{statistics.median(speedups):.2f}x faster (p20-p80 {speedups[1]:.2f}-{speedups[-2]:.2f}); the first "
            f"{COMPILING_STEPS} compiled steps took {compile_s:.1f} s")


def main(layer_names: list[str]) -> None:
    torch.set_num_threads(2)
    data = load_task("mqar", {"n_pairs": 4}, 64)
    for layer in layer_names:
        print(time_layer(layer, data, data.train_inputs[:32], data.train_targets[:32]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else ["ttt-linear", "ttt-mlp"])
