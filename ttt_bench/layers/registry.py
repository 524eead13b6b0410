"""Named layer variants: a layer class plus a dict of settings (timm-style), registered by decorator.

    @register("attention-naive", impl="naive")
    @register("attention-naive-causal", impl="naive", causal=True)
    class SoftmaxAttention(SequenceMixer): ...

`build(name, **overrides)` makes the variant's config from its settings and the overrides, so a
suite can sweep any knob of any variant; an unknown knob or name raises an error listing what exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from ttt_bench.errors import ConfigError, UnknownLayerError


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
        _check_keys(name, layer_cls.Config, settings)
        _VARIANTS[name] = Variant(name, layer_cls, MappingProxyType(dict(settings)))
        return layer_cls

    return decorate


def names() -> list[str]:
    return sorted(_VARIANTS)


def variant(name: str) -> Variant:
    try:
        return _VARIANTS[name]
    except KeyError:
        raise UnknownLayerError(f"unknown layer {name!r}; registered layers: {', '.join(names())}") from None


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


def _check_keys(name: str, config_cls: type, given: Mapping[str, Any]) -> None:
    allowed = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(
            f"layer {name!r} has no knob {', '.join(map(repr, unknown))}; its knobs are: {', '.join(allowed)}"
        )
