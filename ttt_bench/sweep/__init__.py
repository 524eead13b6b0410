"""A sweep: suite files, their cells, the worker processes that measure them, and the out-of-memory search."""
