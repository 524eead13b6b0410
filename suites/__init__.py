"""Suite files (TOML) and the asv benchmarks that run their grids (benchmarks.py)."""
