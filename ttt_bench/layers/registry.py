"""Named layer variants: a layer class plus a dict of settings (timm-style), registered by decorator.

    @register("attention-naive", impl="naive")
    @register("attention-naive-causal", impl="naive", causal=True)
    class SoftmaxAttention(SequenceMixer): ...

`build(name, **overrides)` makes the variant's config from its settings and the overrides, so a
suite can sweep any knob of any variant; an unknown knob or name raises an error listing what exists (and the
closest names). `register` refuses a class that `build` could not make: one that is not a SequenceMixer with
`mix` and `cost`, or whose Config is not a dataclass subclassing MixerConfig (which holds d_model and n_heads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from ttt_bench.config import did_you_mean
from ttt_bench.errors import ConfigError, UnknownLayerError
from ttt_bench.layers.base import MixerConfig, SequenceMixer


@dataclass(frozen=True)
class Variant:
    name: str
    layer_cls: type
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class Knob:
    name: str
    default: Any
    doc: str


_VARIANTS: dict[str, Variant] = {}


def register(name: str, **settings: Any):
    """Class decorator: enrol `layer_cls` under `name` with these config settings."""

    def decorate(layer_cls: type) -> type:
        if name in _VARIANTS:
            raise ValueError(
                f"layer variant {name!r} is already registered (by {_VARIANTS[name].layer_cls.__name__})"
            )
        _check_layer_class(name, layer_cls)
        _check_keys(name, layer_cls.Config, settings)
        _VARIANTS[name] = Variant(name, layer_cls, MappingProxyType(dict(settings)))
        return layer_cls

    return decorate


def names() -> list[str]:
    return sorted(_VARIANTS)


def is_shipped(name: str) -> bool:
    """A layer of ttt-bench's own zoo, not one a user registered."""
    return variant(name).layer_cls.__module__.startswith("ttt_bench.")


def variant(name: str) -> Variant:
    try:
        return _VARIANTS[name]
    except KeyError:
        raise unknown_layer(name) from None


def unknown_layer(name: str, what: str = "unknown layer") -> UnknownLayerError:
    """The one-line error for a name no variant has: the closest registered names first, then all of them."""
    return UnknownLayerError(f"{what} {name!r}{did_you_mean(name, names())}; registered layers: {', '.join(names())}")


def config(name: str, **overrides: Any):
    """The config dataclass `build` would use, validated."""
    v = variant(name)
    _check_keys(name, v.layer_cls.Config, overrides)
    return v.layer_cls.Config(**{**v.settings, **overrides})


def build(name: str, **overrides: Any) -> nn.Module:
    """A fresh layer `[B, N, D] -> [B, N, D]` of variant `name` with `overrides` applied to its settings."""
    return variant(name).layer_cls(config(name, **overrides))


def is_causal(name: str, **overrides: Any) -> bool:
    """Whether output t depends on inputs up to t only: the config's `causal` knob; a layer without one is a
    recurrence over time, causal by construction (a non-causal layer must have the knob)."""
    return bool(getattr(config(name, **overrides), "causal", True))


def knobs(name: str) -> list[Knob]:
    """The variant's settable fields with their effective default and their one-line doc."""
    v = variant(name)
    return [
        Knob(f.name, v.settings.get(f.name, f.default), f.metadata.get("doc", ""))
        for f in dataclasses.fields(v.layer_cls.Config)
    ]


def _check_layer_class(name: str, layer_cls: Any) -> None:
    """What `build` needs of a class: `layer_cls(Config(d_model=..., n_heads=..., **knobs))`, then mix and cost."""
    where = f"layer {name!r}: "
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, SequenceMixer)):
        raise ConfigError(f"{where}{getattr(layer_cls, '__name__', layer_cls)!r} is not a subclass of "
                          f"ttt_bench.layers.base.SequenceMixer; register a SequenceMixer subclass")
    missing = [method for method in ("mix", "cost") if getattr(layer_cls, method) is getattr(SequenceMixer, method)]
    if missing:
        raise ConfigError(f"{where}{layer_cls.__name__} does not define {' and '.join(missing)}; a layer defines "
                          f"mix(x) ([B, N, D] -> [B, N, D]) and cost(batch, seq_len) (a LayerCost)")
    config_cls = layer_cls.Config
    if not (isinstance(config_cls, type) and issubclass(config_cls, MixerConfig)):
        raise ConfigError(f"{where}{layer_cls.__name__}.Config is {config_cls!r}, not a subclass of "
                          f"ttt_bench.layers.base.MixerConfig; subclass MixerConfig (it holds d_model and n_heads, "
                          f"which every layer is built with)")
    # Without @dataclass of its own, a subclass's fields are plain class attributes: no knobs, no arguments.
    if config_cls.__dict__.get("__annotations__") and "__dataclass_fields__" not in config_cls.__dict__:
        raise ConfigError(f"{where}{config_cls.__name__} declares fields but is not decorated with @dataclass; "
                          f"decorate it so that its fields are knobs")


def _check_keys(name: str, config_cls: type, given: Mapping[str, Any]) -> None:
    allowed = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(
            f"layer {name!r} has no knob {', '.join(map(repr, unknown))}; its knobs are: {', '.join(allowed)}"
        )
