"""Training smoke test: a few steps from scratch lower the loss, and the export is a checkpoint
that the served class loads (through vLLM) and that agrees with the training implementation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from server.model.checkpoint import check_model_dir
from server.model.demo import checkpoint
from server.model.demo.evaluate import heldout_samples, mean_loss
from server.model.demo.model import KimiVL
from server.model.demo.train import load_builder, parse_args, sha256, train

REPO = Path(__file__).resolve().parents[2]
STEPS = ["--steps", "14", "--batch-size", "8", "--warmup", "2", "--lr", "3e-3",
         "--vision-pretrain", "20", "--pretrain-batch", "8",
         "--vision-pictures", "6", "--picture-batch", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo-smoke") / "ckpt"
    args = parse_args(
        ["--out", str(out), *STEPS, "--threads", "1", "--eval-every", "0", "--final-n", "1"]
    )
    threads = torch.get_num_threads()
    try:
        info = train(args)
    finally:
        torch.set_num_threads(threads)
    return out, info


def test_a_few_steps_lower_the_heldout_loss(smoke: tuple[Path, dict]) -> None:
    out, info = smoke
    builder = load_builder(out)
    encoded = [builder.encode(s) for s in heldout_samples(2, offset=5)]
    torch.manual_seed(info["seed"])  # the training run's initial weights
    initial = KimiVL(json.loads((out / "config.json").read_text())).eval()
    before = mean_loss(initial, encoded)
    after = mean_loss(checkpoint.load(out), encoded)
    assert after < 0.8 * before, (before, after)


def test_export_is_a_complete_checkpoint_with_a_manifest(smoke: tuple[Path, dict]) -> None:
    out, info = smoke
    check_model_dir(str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    names = {p.name for p in out.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == names
    assert all(sha256(out / n) == h for n, h in manifest["files"].items())
    for name in ("config.json", "tiktoken.model", "tokenizer_config.json", "chat_template.jinja",
                 "preprocessor_config.json", "generation_config.json",
                 "model.safetensors.index.json"):  # fmt: skip
        assert name in names
    assert manifest["steps"] == 14 and manifest["seed"] == 0
    assert manifest["command"].startswith("python -m server.model.demo.train ")
    # the recipe's commit (this checkout's, marked when server/model/demo has local changes)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    assert manifest["commit"].split("+")[0] == head.stdout.strip()
    assert set(manifest["heldout"]["tasks"]) == set(info["heldout"]["tasks"])


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def run(name: str) -> Path:
        out = tmp_path / name
        train(parse_args(["--out", str(out), "--steps", "2", "--batch-size", "4", "--threads", "1",
                          "--vision-pretrain", "2", "--pretrain-batch", "4",
                          "--vision-pictures", "2", "--picture-batch", "2",
                          "--eval-every", "0", "--final-n", "1"]))  # fmt: skip
        return out

    threads = torch.get_num_threads()
    try:
        first, again = run("first"), run("again")
    finally:
        torch.set_num_threads(threads)
    shards = sorted(p.name for p in first.glob("*.safetensors"))
    assert shards and all(sha256(first / s) == sha256(again / s) for s in shards)


@pytest.mark.slow
def test_export_loads_in_our_class_through_vllm(smoke: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = smoke
    result = tmp_path / "parity.json"
    cmd = [sys.executable, "-m", "server.model.demo.parity", "--model", str(out), "--n", "7",
           "--json", str(result)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    parity = json.loads(result.read_text())
    assert parity["prompt_ids_identical"] == 1.0
    assert parity["max_first_token_logprob_diff"] < 1e-3
    assert parity["answers_agree"] >= 6 / 7
