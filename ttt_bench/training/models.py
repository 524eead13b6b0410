"""A small backbone that hosts any registered mixer, so layers are compared inside the same network.

    inputs [B, N] tokens or [B, N, C] pixels
      -> embedding (a table for tokens, a linear map for pixel values) + learned positions  [B, N, D]
         (pooling 'class': a learned class token appended after the last input, [B, N + 1, D])
      -> L pre-norm blocks: h + mixer(LN(h)), then h + MLP(LN(h))
      -> LN -> head: pooled (classes; from the mean over tokens, the last token or the class token)
                     or per token (-> vocabulary)

Its analytic cost follows the layers' convention (ttt_bench/layers/base.py): products only, MACs and
FLOPs named apart, the mixer's own formula inside each block.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from ttt_bench import layers
from ttt_bench.config import AnyOf, Integer, Number, OneOf, Optional, Text, check_fields, check_integer, knob
from ttt_bench.errors import ConfigError

PARAM_MATCH_TOLERANCE = 0.10  # matched models lie within 10% of the target count (the rule LRA and MAD use)
# How a pooled head reads the sequence. 'mean' lets the backbone alone see every token (without a mixer a model
# learns pixel MNIST to 0.36), 'last' and 'class' leave reading the sequence to the mixer (docs/accuracy.md).
POOLINGS = ("mean", "last", "class")


@dataclass(frozen=True)
class InputSpec:
    """What a task feeds the model and asks of it."""

    kind: str  # 'tokens' (integer ids) or 'pixels' (real values per channel)
    features: int  # the vocabulary size for tokens, the channels for pixels
    seq_len: int  # N
    n_outputs: int  # classes (pooled head) or vocabulary (per-token head)
    per_token: bool  # a prediction at every position (language modelling, recall) or one per sequence


@dataclass(frozen=True)
class ModelConfig:
    layer: str  # the registered mixer
    knobs: dict  # its knobs on top of the variant's settings
    d_model: int  # width D
    n_heads: int  # heads of the mixer
    n_layers: int = 2  # blocks L
    mlp_hidden: int = 4 * 64  # hidden width of each block's MLP
    pooling: str = "mean"  # POOLINGS: how a pooled head reads the sequence
    position_init_std: float = 1.0  # the learned positions start as N(0, std^2)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "n_layers", "mlp_hidden"):
            check_integer("model", name, getattr(self, name), 1)
        if self.pooling not in POOLINGS:
            raise ConfigError(f"model: pooling={self.pooling!r} is not allowed; choose one of {', '.join(POOLINGS)}")


@dataclass(frozen=True)
class ModelCost:
    """Analytic matmul work of one forward pass of the whole model, and of its backward."""

    tokens: int  # B x N
    forward_macs: int
    backward_macs: int

    @property
    def forward_flops_per_token(self) -> float:
        return 2 * self.forward_macs / self.tokens

    @property
    def forward_backward_flops_per_token(self) -> float:
        return 2 * (self.forward_macs + self.backward_macs) / self.tokens

    def training_flops(self, steps: int) -> float:
        """Forward and backward FLOPs of `steps` training batches."""
        return self.forward_backward_flops_per_token * steps * self.tokens


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.mix_norm = nn.LayerNorm(config.d_model)
        self.mixer = layers.build(config.layer, d_model=config.d_model, n_heads=config.n_heads, **config.knobs)
        self.mlp_norm = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, config.mlp_hidden), nn.GELU(), nn.Linear(config.mlp_hidden, config.d_model)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.mixer(self.mix_norm(h))
        return h + self.mlp(self.mlp_norm(h))


class SequenceModel(nn.Module):
    def __init__(self, config: ModelConfig, spec: InputSpec) -> None:
        super().__init__()
        if spec.kind not in ("tokens", "pixels"):
            raise ConfigError(f"model: input kind {spec.kind!r} is not allowed; choose 'tokens' or 'pixels'")
        self.config = config
        self.spec = spec
        width = config.d_model
        self.embed = nn.Embedding(spec.features, width) if spec.kind == "tokens" else nn.Linear(spec.features, width)
        # Appended after the inputs, so that a causal mixer's class token has read the whole sequence.
        self.class_token = nn.Parameter(torch.zeros(1, 1, width)) if self.pooling == "class" else None
        self.positions = nn.Parameter(config.position_init_std * torch.randn(1, self.mixed_len, width))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, spec.n_outputs)

    @property
    def pooling(self) -> str:
        """The pooled head's reading; per-token heads read every position whatever the setting."""
        return "per token" if self.spec.per_token else self.config.pooling

    @property
    def mixed_len(self) -> int:
        """The tokens the mixers see: the inputs, and the class token when there is one."""
        return self.spec.seq_len + (self.class_token is not None)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs: [B, N] or [B, N, C] -> logits [B, N, n_outputs] (per token) or [B, n_outputs]."""
        h = self.embed(inputs)
        if self.class_token is not None:
            h = torch.cat([h, self.class_token.expand(len(h), 1, -1)], dim=1)
        h = h + self.positions[:, : h.shape[1]]
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        if self.pooling == "mean":
            h = h.mean(dim=1)
        elif self.pooling in ("last", "class"):
            h = h[:, -1]
        return self.head(h)

    def state_bytes(self) -> int | None:
        """Bytes of the recurrent state of all blocks for one sequence after its N tokens (the layers' analytic
        decode state, in the weights' dtype); None for a mixer that cannot decode."""
        mixer = self.blocks[0].mixer
        if not mixer.decodes:
            return None
        element_bytes = self.positions.element_size()
        return self.config.n_layers * mixer.decode_state_numel(1, self.mixed_len) * element_bytes

    def cost(self, batch: int) -> ModelCost:
        """Forward: the blocks' mixers (their formulas) and MLPs, the pixel embedding and the head.
        Backward: the mixers' own figure; 2 x forward for the MLPs and the head; 1 x for the pixel
        embedding (its input needs no gradient) and nothing for a token table."""
        config, spec = self.config, self.spec
        tokens = batch * spec.seq_len
        mixed_tokens = batch * self.mixed_len  # a class token is mixed like the inputs; the per-token rates
        mixer = self.blocks[0].mixer.cost(batch, self.mixed_len)  # stay per input token
        mlp_macs = 2 * mixed_tokens * config.d_model * config.mlp_hidden
        embed_macs = tokens * spec.features * config.d_model if spec.kind == "pixels" else 0
        head_macs = (tokens if spec.per_token else batch) * config.d_model * spec.n_outputs
        forward = config.n_layers * (mixer.forward_macs + mlp_macs) + embed_macs + head_macs
        backward = config.n_layers * (mixer.backward_macs + 2 * mlp_macs) + embed_macs + 2 * head_macs
        return ModelCost(tokens, forward, backward)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(config: ModelConfig, spec: InputSpec) -> int:
    """Parameters of the model, built without allocating its weights."""
    with torch.device("meta"):
        return parameter_count(SequenceModel(config, spec))


def mlp_hidden_matching(config: ModelConfig, spec: InputSpec, target: int) -> int:
    """The MLP width that brings the model's parameter count closest to `target` (parameters grow by
    L x (2D + 1) per hidden unit); ConfigError when no width lands within PARAM_MATCH_TOLERANCE."""
    with_one = count_parameters(_with_hidden(config, 1), spec)
    per_unit = config.n_layers * (2 * config.d_model + 1)
    hidden = max(1, round((target - with_one) / per_unit) + 1)
    matched = count_parameters(_with_hidden(config, hidden), spec)
    if abs(matched - target) > PARAM_MATCH_TOLERANCE * target:
        raise ConfigError(
            f"model: cannot match {target:,} parameters with layer {config.layer!r}: it has {with_one:,} with a "
            f"1-unit MLP; match to a larger model (more layers or a wider reference) or turn matching off"
        )
    return hidden


def _with_hidden(config: ModelConfig, hidden: int) -> ModelConfig:
    return dataclasses.replace(config, mlp_hidden=hidden)


def default_mlp_hidden(d_model: int, mlp_ratio: float) -> int:
    return max(1, math.ceil(mlp_ratio * d_model))


@dataclass(frozen=True)
class ModelSettings:
    """The backbone around each mixer ([model] in a suite); width and heads are grid axes."""

    # Bounds above any model trained here that keep its build within memory sizes an int64 counts.
    n_layers: int = knob(2, "blocks L", Integer(1, 1024))
    mlp_ratio: float = knob(4.0, "MLP hidden width = ratio x D, unless matching parameters", Number(0.0, 1024.0))
    match_params: str | int | None = knob(
        None, "match every model's parameters to this: a layer of the suite (label or name), a registered layer, "
              "or a parameter count", Optional(AnyOf((Text(), Integer(1, 2**40)))))
    pooling: str = knob("mean", "how a pooled (classification) head reads the sequence: 'mean' over tokens, the "
                                "'last' token, or a learned 'class' token appended after the inputs",
                        OneOf(POOLINGS))
    position_init_std: float = knob(1.0, "the learned position table starts as N(0, std^2)", Number())
    match_layer: str | None = None  # resolved: the registry name of the layer matched to
    match_knobs: tuple = ()  # resolved: its knobs, as sorted (name, value) pairs

    def __post_init__(self) -> None:
        check_fields(self, "model.")

    def model_config(self, layer: str, knobs: dict, d_model: int, n_heads: int, spec: InputSpec) -> ModelConfig:
        """The backbone for `layer`; with matching, its MLP width chosen to meet the target parameter count."""
        config = ModelConfig(layer, knobs, d_model, n_heads, self.n_layers, default_mlp_hidden(d_model, self.mlp_ratio),
                             self.pooling, self.position_init_std)
        if self.match_params is None:
            return config
        target = self.match_params if self.match_layer is None else count_parameters(
            dataclasses.replace(config, layer=self.match_layer, knobs=dict(self.match_knobs)), spec,
        )
        return _with_hidden(config, mlp_hidden_matching(config, spec, target))
