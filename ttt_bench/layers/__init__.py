"""The layer zoo. Importing this package registers every family, and settles MKL's vector-math
kernels before any layer runs on several threads (see ttt_bench/layers/vml_warmup.py)."""

from ttt_bench.layers import (  # noqa: F401  (registers the families)
    attention,
    control,
    delta_rule,
    fast_weights,
    linear,
    ttt,
)
from ttt_bench.layers.registry import build, config, is_causal, is_shipped, knobs, names, register, variant
from ttt_bench.layers.vml_warmup import resolve_vml_dispatch

resolve_vml_dispatch()

__all__ = ["build", "config", "is_causal", "is_shipped", "knobs", "names", "register", "variant"]
