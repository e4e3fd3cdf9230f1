"""Runnable benchmarks for the kernels package (python -m kernels.bench.<name>)."""
