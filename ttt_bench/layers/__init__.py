"""The layer zoo. Importing this package registers every family."""

from ttt_bench.layers.registry import build, config, is_causal, knobs, names, register, variant
from ttt_bench.layers import attention, linear, fast_weights, ttt  # noqa: F401  (registers the families)

__all__ = ["build", "config", "is_causal", "knobs", "names", "register", "variant"]
