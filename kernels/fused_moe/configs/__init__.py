"""Tuned Triton MoE block sizes (JSON data, see README.md); a package so wheels ship them."""
