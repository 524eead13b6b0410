"""ttt-bench: benchmarks and analysis for sequence-mixing layers."""

__version__ = "0.1.0"
