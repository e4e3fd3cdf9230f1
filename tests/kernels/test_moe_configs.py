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


def test_shipped_configs_are_complete_and_launchable():
    """Every tuned file in the package parses, names its (E, N) in its file name, and each
    entry is a launchable Triton config: power-of-two blocks, BLOCK_SIZE_M ≥ 16 for tl.dot."""
    configs.load_configs.cache_clear()
    shipped = sorted(configs.CONFIG_DIR.glob("E=*,N=*,device_name=*.json"))
    assert shipped, "the H200 configs tuned for N=1408 and N=704 are part of the package"
    for path in shipped:
        e, n, device = (part.split("=", 1)[1] for part in path.stem.split(","))
        assert path == configs.config_path(int(e), int(n), device)
        tuned = configs.load_configs(int(e), int(n), device)
        assert tuned and 1 in tuned, path.name  # decode (M=1) is always tuned first
        for cfg in tuned.values():
            assert set(cfg) == set(configs.KEYS)
            for key in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "num_warps"):
                assert cfg[key] & (cfg[key] - 1) == 0, (path.name, cfg)
            assert cfg["BLOCK_SIZE_M"] >= 16 and cfg["num_stages"] >= 1
    configs.load_configs.cache_clear()
