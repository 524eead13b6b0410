"""Reports from results: figures (seaborn, PNG and SVG), report.md, a self-contained report.html, and
comparisons of two result sets."""
