"""Tests of the kernels package (MoE spec, CPU paths, Triton kernels, configs)."""
