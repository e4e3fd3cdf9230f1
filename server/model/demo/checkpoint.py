"""The demo model's dimensions, and conversion between the training model and the checkpoint.

The checkpoint is the real Kimi-VL format (tensor names, config layout, tokenizer files, chat
template), written by the same helpers as the tiny test checkpoints (server/model/tiny.py and
tiny_tokenizer.py), so the served class loads it unchanged. Weights are stored in bf16 except
the routers' correction biases (fp32, as the served class keeps them).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from server.model.demo.model import KimiVL
from server.model.demo.prompt import DEFAULT_SYSTEM_PROMPT, THINKING_SYSTEM_PROMPT
from server.model.demo.tasks import COLORS, DIRECTIONS, ORDINALS, QUESTIONS, SHAPES
from server.model.tiny import PREPROCESSOR_CONFIG, model_config, write_model_files
from server.model.tiny_tokenizer import write_tokenizer_files

SERVED_MODEL_NAME = "kimi-vl-demo"
TOKENIZER_SEED = 0
# Images above this many 14-px patches are downscaled (PIL bicubic) by the processor: at most
# 49 merged tokens per image or video frame (196x196 px for a square picture) keeps training
# and serving cheap on CPU. At 100 patches most shapes of a picture with four or more were
# under one merged token: held-out shapes named right 0.78 below half a token, and two
# shapes' centres shared a token in 22 % of six-shape pictures (13 % at 196). Videos barely
# change (their frames are small): 13 % more tokens per training sample on average.
# At 324 patches shapes are larger after the downscale (a linear read of the shape from the
# vision features names 0.99 of shapes of 28 px or more but 0.84 at 14-20 px), but a model
# trained so from scratch counted worse (0.74 against 0.83) and chose among images worse
# (0.78 against 0.92): more tokens per picture, same steps.
IN_TOKEN_LIMIT = 196
NUM_SHARDS = 2

VISION_DIMS = {
    "hidden_size": 96,
    "num_attention_heads": 3,
    "intermediate_size": 192,
    "num_hidden_layers": 5,
}
TEXT_DIMS = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "qk_nope_head_dim": 32,
    "v_head_dim": 32,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 4096,
}

_STACKED = re.compile(r"(language_model\.model\.layers\.\d+\.mlp)\.experts_(w13|w2)")


def demo_config(tok: dict) -> dict:
    cfg = copy.deepcopy(model_config(tok))
    cfg["text_config"].update(TEXT_DIMS)
    cfg["vision_config"] = {**cfg["vision_config"], **VISION_DIMS}
    return cfg


def preprocessor_config() -> dict:
    return {**PREPROCESSOR_CONFIG, "in_token_limit": IN_TOKEN_LIMIT}


def task_corpus() -> str:
    """Text of the demo tasks for the tokenizer's BPE: every answer on a line of its own (many
    times, so each becomes one token: the model decides an answer in one step), the question
    templates filled in, the thinking sentences and the system prompts."""
    answers = [*COLORS, *SHAPES, *DIRECTIONS, *ORDINALS, *(str(n) for n in range(1, 7))]
    lines = [a for a in answers for _ in range(40)]
    for color in COLORS:
        for shape in SHAPES:
            lines += [q.format(color=color, shape=shape) for q in QUESTIONS.values()] * 2
            lines += [f"I see a {color} {shape}. The {color} {shape} is on the left."]
    lines += [f"{d} {o}" for d in DIRECTIONS for o in ORDINALS]
    lines += [DEFAULT_SYSTEM_PROMPT, THINKING_SYSTEM_PROMPT, "image", "video"] * 10
    return "\n".join(lines) + "\n"


def write_tokenizer(out: Path) -> dict:
    """Tokenizer files + chat template into `out`; returns the ids config.json needs."""
    return write_tokenizer_files(
        out, real_vocab=False, seed=TOKENIZER_SEED, extra_corpus=task_corpus()
    )


def checkpoint_tensors(model: KimiVL) -> dict[str, torch.Tensor]:
    """The model's weights under the checkpoint's names (experts unstacked), bf16."""
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        if name.endswith("e_score_correction_bias"):
            out[name] = t.float().clone()
            continue
        m = _STACKED.fullmatch(name)
        if m is None:
            out[name] = t.to(torch.bfloat16).clone()
            continue
        prefix = m[1]
        for e in range(t.shape[0]):
            if m[2] == "w13":
                gate, up = t[e].chunk(2, dim=0)
                out[f"{prefix}.experts.{e}.gate_proj.weight"] = gate.to(torch.bfloat16).clone()
                out[f"{prefix}.experts.{e}.up_proj.weight"] = up.to(torch.bfloat16).clone()
            else:
                out[f"{prefix}.experts.{e}.down_proj.weight"] = t[e].to(torch.bfloat16).clone()
    return out


def export(model: KimiVL, out: Path, tok: dict) -> Path:
    """Write a complete, servable checkpoint directory."""
    write_tokenizer(out)
    cfg = demo_config(tok)
    return write_model_files(
        out, cfg, checkpoint_tensors(model), tok, preprocessor_config(), NUM_SHARDS
    )


def load(path: Path, dtype: torch.dtype = torch.float32) -> KimiVL:
    """A checkpoint directory (as written by `export`) -> the training model, in `dtype`."""
    cfg = json.loads((path / "config.json").read_text())
    index = json.loads((path / "model.safetensors.index.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(str(path / shard)))
    model = KimiVL(cfg)
    state = model.state_dict()
    for name in state:
        m = _STACKED.fullmatch(name)
        if m is None:
            state[name] = tensors.pop(name)
            continue
        prefix, num = m[1], state[name].shape[0]
        if m[2] == "w13":
            rows = [
                torch.cat(
                    [
                        tensors.pop(f"{prefix}.experts.{e}.gate_proj.weight"),
                        tensors.pop(f"{prefix}.experts.{e}.up_proj.weight"),
                    ]
                )
                for e in range(num)
            ]
        else:
            rows = [tensors.pop(f"{prefix}.experts.{e}.down_proj.weight") for e in range(num)]
        state[name] = torch.stack(rows)
    if tensors:
        raise ValueError(f"unexpected tensors in {path}: {sorted(tensors)[:5]}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.to(dtype)
    for moe in model.moe_layers():  # routing stays fp32
        moe.gate.e_score_correction_bias.data = moe.gate.e_score_correction_bias.data.float()
    return model.eval()
