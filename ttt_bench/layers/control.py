"""The control: a layer that mixes nothing across positions, so a model built around it is the backbone alone.

    y_t = W_o x_t        (one D x D map per token; token t sees no other token)

Trained beside the mixers, it measures what the backbone learns without reading the sequence (a mean-pooled
head over pixels plus their positions classifies MNIST well): a mixer earns credit on a task only above it
(docs/accuracy.md#controls-and-floors). It keeps one D x D map, not zero, so that the contract's checks
(gradients, cost, decoding) hold as for every layer and parameter matching works as for the others. Its decode
state is empty: nothing is carried from one token to the next.
"""

from __future__ import annotations

import torch

from ttt_bench.layers.base import LayerCost, MixerConfig, SequenceMixer, autograd_backward_macs, projection_macs
from ttt_bench.layers.registry import register
from ttt_bench.layers.state import DecodeState

CONTROL_LAYER = "no-mixer"  # reports draw it as the control and judge the other layers against it


@register(CONTROL_LAYER)
class NoMixer(SequenceMixer):
    """Causal by construction (token t reads x_t only), as a layer without a `causal` knob is taken to be."""

    def __init__(self, config: MixerConfig) -> None:
        super().__init__(config)
        del self.to_qkv  # no queries, keys or values: nothing is read from other positions

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_out(x)

    def decode(self, x: torch.Tensor, state: DecodeState | None) -> tuple[torch.Tensor, DecodeState]:
        read = 0 if state is None else state.tokens
        return self.to_out(x), DecodeState(tokens=read + x.shape[1])

    def decode_state_numel(self, batch: int, context: int) -> int:
        return 0

    def cost(self, batch: int, seq_len: int) -> LayerCost:
        forward = projection_macs(batch, seq_len, self.config.d_model, self.config.d_model)
        return LayerCost(batch * seq_len, forward, forward, autograd_backward_macs(forward), state_numel=None)
