"""Regression benchmarks: suites as asv grids, asv results as result rows, and the CI gate."""
