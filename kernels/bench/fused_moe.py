"""`python -m kernels.bench.fused_moe`: runs the MoE kernel benchmark, benchmarks/fused_moe.py
(from a checkout; benchmarks/ is not part of the installed package)."""

from benchmarks.fused_moe import main

if __name__ == "__main__":
    main()
