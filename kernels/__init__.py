"""Kernels for Kimi-VL (pure torch + Triton; no vLLM or FastAPI imports)."""
