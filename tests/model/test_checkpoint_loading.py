"""Loading real-format checkpoints: every tensor consumed, and bad checkpoints fail naming what and where."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.model.conftest import REPO, RunGenerate

pytestmark = pytest.mark.slow


@pytest.fixture
def ckpt_copy(tiny_ckpt: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, dst)
    return dst


def load(model: Path, tmp_path: Path, *runner_args: str) -> subprocess.CompletedProcess:
    """Start an engine on `model` (generate_runner's `runner_args`, e.g. --pp 2) and generate
    one token from a text prompt."""
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([{"name": "t", "prompt_token_ids": [1, 2, 3, 4], "images": []}]))
    cmd = [
        sys.executable, "-m", "tests.model.generate_runner", "--model", str(model), "--cases", str(cases),
        "--out", str(tmp_path / "out.json"), "--max-tokens", "1", *runner_args,
    ]  # fmt: skip
    return subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def shard_of(ckpt: Path, tensor: str) -> Path:
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    return ckpt / index["weight_map"][tensor]


def rewrite_shard(ckpt: Path, tensor: str, new_name: str | None) -> None:
    """Rename (or with None, drop) one tensor, keeping the index consistent."""
    path = shard_of(ckpt, tensor)
    tensors = load_file(path)
    t = tensors.pop(tensor)
    if new_name is not None:
        tensors[new_name] = t
    save_file(tensors, str(path), metadata={"format": "pt"})
    index_path = ckpt / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    fname = index["weight_map"].pop(tensor)
    if new_name is not None:
        index["weight_map"][new_name] = fname
    index_path.write_text(json.dumps(index))


def test_pristine_checkpoint_loads_every_tensor(run_generate: RunGenerate) -> None:
    """The engine run the parity tests make: loading fails on any missing tensor (below)."""
    assert run_generate("ours")["architecture"] == "KimiVLForConditionalGeneration"


@pytest.mark.parametrize(
    "tensor",
    [
        "language_model.model.layers.2.mlp.experts.5.down_proj.weight",
        "language_model.model.layers.1.mlp.shared_experts.up_proj.weight",
        "language_model.model.layers.0.self_attn.kv_a_layernorm.weight",
        "vision_tower.encoder.blocks.1.wqkv.bias",
        "language_model.model.layers.1.mlp.gate.e_score_correction_bias",
    ],
)
def test_missing_tensor_is_named(ckpt_copy: Path, tmp_path: Path, tensor: str) -> None:
    rewrite_shard(ckpt_copy, tensor, None)
    proc = load(ckpt_copy, tmp_path)
    assert proc.returncode != 0
    assert f"missing tensor '{tensor}'" in proc.stderr


def test_renamed_tensor_is_named(ckpt_copy: Path, tmp_path: Path) -> None:
    old = "language_model.model.layers.1.mlp.experts.3.gate_proj.weight"
    new = "language_model.model.layers.1.mlp.experts.3.gate.weight"
    rewrite_shard(ckpt_copy, old, new)
    proc = load(ckpt_copy, tmp_path)
    assert proc.returncode != 0
    assert f"unexpected checkpoint tensor '{new}'" in proc.stderr


def test_truncated_safetensors_names_the_file(ckpt_copy: Path, tmp_path: Path) -> None:
    shard = shard_of(ckpt_copy, "language_model.lm_head.weight")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    proc = load(ckpt_copy, tmp_path)
    assert proc.returncode != 0
    assert shard.name in proc.stderr and "truncated" in proc.stderr


def test_corrupt_safetensors_header_names_the_file(ckpt_copy: Path, tmp_path: Path) -> None:
    shard = shard_of(ckpt_copy, "language_model.lm_head.weight")
    data = bytearray(shard.read_bytes())
    data[8:24] = b"not json at all!"
    shard.write_bytes(bytes(data))
    proc = load(ckpt_copy, tmp_path)
    assert proc.returncode != 0
    assert shard.name in proc.stderr


def test_unsupported_model_type(ckpt_copy: Path, tmp_path: Path) -> None:
    cfg_path = ckpt_copy / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model_type"] = "kimi_vl_unknown"
    cfg_path.write_text(json.dumps(cfg))
    proc = load(ckpt_copy, tmp_path)
    assert proc.returncode != 0
    assert "kimi_vl_unknown" in proc.stderr


def test_missing_tokenizer_file(ckpt_copy: Path, tmp_path: Path) -> None:
    (ckpt_copy / "tiktoken.model").unlink()
    proc = load(ckpt_copy, tmp_path)
    assert proc.returncode != 0
    assert "tiktoken.model" in proc.stderr
