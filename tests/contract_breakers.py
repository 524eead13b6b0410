"""Layers that each break one clause of the layer contract, for the contract checks' own tests
(tests/test_layer_contract.py). None is registered here (importing this registers nothing): a test registers one
for its duration."""

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ttt_bench.config import knob
from ttt_bench.layers.base import LayerCost, MixerConfig, SequenceMixer, autograd_backward_macs
from ttt_bench.layers.state import DecodeState


class Sound(SequenceMixer):
    """o = the value view, per token: keeps the whole contract (every other layer below breaks one clause)."""

    def mix(self, x):
        return self.merge_heads_and_project(self.qkv(x)[2])

    def cost(self, batch: int, seq_len: int) -> LayerCost:
        forward = self.projections_macs(batch, seq_len)
        return LayerCost(batch * seq_len, forward, forward, autograd_backward_macs(forward), None)

    def decode(self, x, state):
        """Each token on its own: the state only counts the tokens read."""
        return self.mix(x), DecodeState(tokens=x.shape[1] + (state.tokens if state else 0))

    def decode_state_numel(self, batch: int, context: int) -> int:
        return 0


class DropsAFeature(Sound):
    def mix(self, x):
        return super().mix(x)[..., :-1]


class AlwaysFloat32(Sound):
    def mix(self, x):
        return super().mix(x).float()


class CountsItsCalls(Sound):
    """Its output depends on how often it was called: state outside the state_dict."""

    calls = 0

    def mix(self, x):
        self.calls += 1
        return super().mix(x) * self.calls


class HasAnUnusedParameter(Sound):
    def __init__(self, config):
        super().__init__(config)
        self.unused = nn.Parameter(torch.ones(3))


class SeesTheFuture(Sound):
    def mix(self, x):
        out = super().mix(x)
        return out + out.mean(dim=1, keepdim=True)


@dataclass
class CausalKnobConfig(MixerConfig):
    causal: bool = knob(False, "registered as non-causal")


class ClaimsNonCausal(Sound):
    """Registered with causal=False, but its outputs never see later inputs."""

    Config = CausalKnobConfig


class OverstatesUsefulWork(Sound):
    def cost(self, batch: int, seq_len: int) -> LayerCost:
        return dataclasses.replace(super().cost(batch, seq_len), useful_forward_macs=10**12)


class ForgetsTheOutputProjection(Sound):
    def cost(self, batch: int, seq_len: int) -> LayerCost:
        forward = 3 * self.projections_macs(batch, seq_len) // 4
        return LayerCost(batch * seq_len, forward, forward, autograd_backward_macs(forward), None)


class ClaimsFinalStateWork(Sound):
    """Its totals are right, but it calls a quarter of the forward final-state work, which a trace would drop."""

    def cost(self, batch: int, seq_len: int) -> LayerCost:
        final_state = self.projections_macs(batch, seq_len) // 4
        return dataclasses.replace(super().cost(batch, seq_len), final_state_macs=final_state)


@dataclass
class FormConfig(MixerConfig):
    form: str = knob("fast", "'fast' or 'loop' (the reference)")


class ReferenceDisagrees(Sound):
    """Its reference form scales the output by 1.001: the fast form does not compute what the reference does."""

    Config = FormConfig
    reference_knobs = {"form": "loop"}

    def mix(self, x):
        return super().mix(x) * (1.001 if self.config.form == "loop" else 1.0)


class StepsOffByOne(Sound):
    """Its decoding step reads the output projection of the token it was given times 1.001."""

    def decode(self, x, state):
        y, state = super().decode(x, state)
        return (y * 1.001 if x.shape[1] == 1 else y), state


@dataclass
class UndocumentedConfig(MixerConfig):
    scale: float = dataclasses.field(default=1.0)


class HasAnUndocumentedKnob(Sound):
    Config = UndocumentedConfig


# check -> (the layer that breaks it, words its failure names)
CONTRACT_BREAKERS = {
    "build": (HasAnUndocumentedKnob, "knobs without a doc: scale"),
    "shapes": (DropsAFeature, "[B, N, D] -> [B, N, D]"),
    "dtypes": (AlwaysFloat32, "torch.float64 input gave a torch.float32 output"),
    "determinism": (CountsItsCalls, "same seed differ"),
    "gradients": (HasAnUnusedParameter, "parameter unused gets no gradient"),
    "causality": (SeesTheFuture, "needs a knob causal=False"),
    "cost": (OverstatesUsefulWork, "useful_forward_macs"),
    "flop-counter": (ForgetsTheOutputProjection, "FlopCounterMode counted"),
    "fvcore": (ClaimsFinalStateWork, "fvcore counted"),
    "reference": (ReferenceDisagrees, "returned tensor 0: relative error"),
    "decode": (StepsOffByOne, "prefill of 1 tokens then 149 steps, against the forward: relative error"),
}
