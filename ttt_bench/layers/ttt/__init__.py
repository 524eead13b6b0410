"""The test-time-training family: inner learners, inner loops (fast and reference) and the layer."""

from ttt_bench.layers.ttt import layer  # noqa: F401  (registers the TTT variants)
