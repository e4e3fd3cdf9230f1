"""Kept for the `python -m kernels.bench.fused_moe` command; the benchmarks live in benchmarks/."""
