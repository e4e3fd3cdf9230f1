"""The language-model path against an independent reference: Hugging Face's DeepseekV3.

Parity with vLLM's built-in class cannot catch bugs in the vLLM layers both classes share
(vLLM 0.32's CPU rotary kernel mangled MLA's q/k and both gave the same wrong tokens), so the
text path is also checked against transformers' own DeepseekV3 on the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.slow


def text_only_checkpoint(src: Path, dst: Path) -> Path:
    """`language_model.*` tensors and `text_config` of a Kimi-VL checkpoint as a DeepseekV3 one."""
    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())["text_config"]
    cfg["architectures"] = ["DeepseekV3ForCausalLM"]
    (dst / "config.json").write_text(json.dumps(cfg))
    tensors = {}
    for shard in src.glob("*.safetensors"):
        for name, t in load_file(shard).items():
            if name.startswith("language_model."):
                tensors[name.removeprefix("language_model.")] = t
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def hf_greedy(model_dir: Path, prompt: list[int], steps: int) -> tuple[list[int], list[float]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    x = torch.tensor([prompt])
    tokens, logprobs = [], []
    with torch.no_grad():
        for _ in range(steps):
            lp = torch.log_softmax(model(x).logits[0, -1].float(), -1)
            t = int(lp.argmax())
            tokens.append(t)
            logprobs.append(float(lp[t]))
            x = torch.cat([x, torch.tensor([[t]])], 1)
    return tokens, logprobs


def test_text_path_matches_hugging_face_deepseek_v3(
    run_generate, tiny_ckpt: Path, parity_cases: Path, tmp_path: Path
) -> None:
    case = next(c for c in json.loads(parity_cases.read_text()) if c["name"] == "text")
    steps = 16
    hf_tokens, hf_logprobs = hf_greedy(
        text_only_checkpoint(tiny_ckpt, tmp_path / "ds"), case["prompt_token_ids"], steps
    )
    ours = run_generate("ours")["cases"]["text"]
    assert ours["token_ids"][:steps] == hf_tokens
    diffs = [abs(ours["logprobs"][i][str(t)] - hf_logprobs[i]) for i, t in enumerate(hf_tokens)]
    # HF's DeepseekV3 builds kv_a_layernorm with eps 1e-6 where vLLM uses rms_norm_eps (1e-5).
    assert max(diffs) < 1e-3
