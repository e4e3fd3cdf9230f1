"""Triton block-size configs: defaults, file lookup, and the tuner's search space."""

from __future__ import annotations

import json

import pytest
import torch

from kernels.fused_moe import block_configs as configs


def test_default_configs_grow_with_the_batch():
    previous = 0
    for m in [1, 8, 32, 64, 256, 1024, 8192]:
        cfg = configs.default_config(m, 64, 6)
        assert set(cfg) == set(configs.KEYS)
        block_m = cfg["BLOCK_SIZE_M"]
        assert block_m >= 16 and block_m & (block_m - 1) == 0  # tl.dot needs >= 16, pow2
        assert block_m >= previous
        previous = block_m


def test_tuned_file_nearest_token_count_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(configs, "CONFIG_DIR", tmp_path)
    configs.load_configs.cache_clear()
    small = configs.default_config(1, 64, 6)
    big = {**small, "BLOCK_SIZE_M": 128}
    configs.config_path(64, 704, "NVIDIA_H200").write_text(json.dumps({"1": small, "512": big}))
    try:
        assert configs.load_configs(64, 704, "NVIDIA_H200") == {1: small, 512: big}
        assert configs.load_configs(64, 1408, "NVIDIA_H200") is None
    finally:
        configs.load_configs.cache_clear()
    assert configs.device_name(torch.device("cpu")) == "cpu_interpreter"


def test_tuner_search_space_and_gpu_requirement():
    pytest.importorskip("triton")
    from kernels.fused_moe import tune

    quick, full = tune.candidates(False), tune.candidates(True)
    assert quick and all(set(c) == set(configs.KEYS) for c in full)
    assert all(c in full for c in quick)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA"):
            tune.main(["--m", "1"])
