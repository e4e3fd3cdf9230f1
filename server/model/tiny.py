"""Write a tiny Kimi-VL checkpoint in the real Hugging Face format.

`python -m server.model.tiny --out DIR [--seed N] [--real-vocab] [--size tiny|mid]`

Same files, JSON key structure and tensor names as moonshotai/Kimi-VL-A3B-*, including the
`auto_map` entries that point at remote-code modules which are deliberately not shipped.
Dimensions are tiny except kv_lora_rank=512 and qk_rope_head_dim=64 (vLLM's CPU MLA kernel
needs them). Deterministic for a given seed. `--size mid` writes a mid-size one for speed
measurements (benchmarks/model.py): 6 layers of hidden 1024, 64 routed experts (top 6) and 2
shared ones per MoE layer, and a 4-layer vision tower of width 256 with the real patch (14) and
merge (2x2) sizes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from server.model.tiny_tokenizer import write_tokenizer_files

NUM_SHARDS = 3


def text_config(tok: dict) -> dict:
    return {
        "model_type": "deepseek_v3",
        "architectures": ["DeepseekV3ForCausalLM"],
        "vocab_size": tok["vocab_size"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": None,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 64,
        "v_head_dim": 32,
        "n_routed_experts": 8,
        "n_shared_experts": 2,
        "num_experts_per_tok": 3,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "n_group": 1,
        "topk_group": 1,
        "routed_scaling_factor": 2.446,
        "norm_topk_prob": True,
        "hidden_act": "silu",
        "rope_theta": 800000.0,
        "rope_scaling": None,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": tok["bos_token_id"],
        "eos_token_id": tok["eos_token_id"],
        "pad_token_id": tok["pad_token_id"],
        "use_cache": True,
        "torch_dtype": "bfloat16",
    }


# Dimensions that differ from the tiny checkpoint's, per size.
SIZES: dict[str, tuple[dict, dict]] = {
    "tiny": ({}, {}),
    "mid": (
        {
            "hidden_size": 1024,
            "intermediate_size": 2816,
            "moe_intermediate_size": 256,
            "num_hidden_layers": 6,
            "num_attention_heads": 8,
            "num_key_value_heads": 8,
            "n_routed_experts": 64,
            "num_experts_per_tok": 6,
            "n_shared_experts": 2,
        },
        {"hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4,
         "num_hidden_layers": 4},
    ),
}  # fmt: skip

VISION_CONFIG = {
    "model_type": "moonvit",
    "patch_size": 14,
    "init_pos_emb_height": 64,
    "init_pos_emb_width": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "merge_kernel_size": [2, 2],
    "torch_dtype": "bfloat16",
}


def model_config(tok: dict, size: str = "tiny") -> dict:
    text, vision = SIZES[size]
    return {
        "architectures": ["KimiVLForConditionalGeneration"],
        "auto_map": {
            "AutoConfig": "configuration_kimi_vl.KimiVLConfig",
            "AutoModel": "modeling_kimi_vl.KimiVLForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_kimi_vl.KimiVLForConditionalGeneration",
        },
        "model_type": "kimi_vl",
        "ignore_index": -100,
        "media_placeholder_token_id": tok["media_pad_id"],
        "pad_token_id": 0,
        "text_config": {**text_config(tok), **text},
        "vision_config": {**VISION_CONFIG, **vision},
        "torch_dtype": "bfloat16",
        "transformers_version": "4.48.2",
    }


PREPROCESSOR_CONFIG = {
    "auto_map": {
        "AutoImageProcessor": "image_processing_kimi_vl.KimiVLImageProcessor",
        "AutoProcessor": "processing_kimi_vl.KimiVLProcessor",
    },
    "image_processor_type": "KimiVLImageProcessor",
    "processor_class": "KimiVLProcessor",
    "in_token_limit": 4096,
    "patch_size": 14,
    "merge_kernel_size": [2, 2],
    "num_pooled_tokens": 1024,
    "pad_input": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Kimi-VL checkpoint with its shape (docs/model.md#checkpoint-tensors)."""
    t, v = cfg["text_config"], cfg["vision_config"]
    h, vh, ps = t["hidden_size"], v["hidden_size"], v["patch_size"]
    merged = vh * v["merge_kernel_size"][0] * v["merge_kernel_size"][1]
    s: dict[str, tuple[int, ...]] = {
        "vision_tower.patch_embed.proj.weight": (vh, 3, ps, ps),
        "vision_tower.patch_embed.proj.bias": (vh,),
        "vision_tower.patch_embed.pos_emb.weight": (
            v["init_pos_emb_height"],
            v["init_pos_emb_width"],
            vh,
        ),
        "vision_tower.encoder.final_layernorm.weight": (vh,),
        "vision_tower.encoder.final_layernorm.bias": (vh,),
        "multi_modal_projector.pre_norm.weight": (vh,),
        "multi_modal_projector.pre_norm.bias": (vh,),
        "multi_modal_projector.linear_1.weight": (merged, merged),
        "multi_modal_projector.linear_1.bias": (merged,),
        "multi_modal_projector.linear_2.weight": (h, merged),
        "multi_modal_projector.linear_2.bias": (h,),
        "language_model.model.embed_tokens.weight": (t["vocab_size"], h),
        "language_model.model.norm.weight": (h,),
        "language_model.lm_head.weight": (t["vocab_size"], h),
    }
    for b in range(v["num_hidden_layers"]):
        p = f"vision_tower.encoder.blocks.{b}"
        for n in ("norm0", "norm1"):
            s[f"{p}.{n}.weight"] = s[f"{p}.{n}.bias"] = (vh,)
        s[f"{p}.wqkv.weight"], s[f"{p}.wqkv.bias"] = (3 * vh, vh), (3 * vh,)
        s[f"{p}.wo.weight"], s[f"{p}.wo.bias"] = (vh, vh), (vh,)
        s[f"{p}.mlp.fc0.weight"], s[f"{p}.mlp.fc0.bias"] = (
            (v["intermediate_size"], vh),
            (v["intermediate_size"],),
        )
        s[f"{p}.mlp.fc1.weight"], s[f"{p}.mlp.fc1.bias"] = (vh, v["intermediate_size"]), (vh,)
    nh, qk = t["num_attention_heads"], t["qk_nope_head_dim"] + t["qk_rope_head_dim"]
    for i in range(t["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}"
        s[f"{p}.input_layernorm.weight"] = s[f"{p}.post_attention_layernorm.weight"] = (h,)
        s[f"{p}.self_attn.q_proj.weight"] = (nh * qk, h)
        s[f"{p}.self_attn.kv_a_proj_with_mqa.weight"] = (
            t["kv_lora_rank"] + t["qk_rope_head_dim"],
            h,
        )
        s[f"{p}.self_attn.kv_a_layernorm.weight"] = (t["kv_lora_rank"],)
        s[f"{p}.self_attn.kv_b_proj.weight"] = (
            nh * (t["qk_nope_head_dim"] + t["v_head_dim"]),
            t["kv_lora_rank"],
        )
        s[f"{p}.self_attn.o_proj.weight"] = (h, nh * t["v_head_dim"])
        if i < t["first_k_dense_replace"]:
            mlps = {f"{p}.mlp": t["intermediate_size"]}
        else:
            n = t["moe_intermediate_size"]
            s[f"{p}.mlp.gate.weight"] = (t["n_routed_experts"], h)
            s[f"{p}.mlp.gate.e_score_correction_bias"] = (t["n_routed_experts"],)
            mlps = {f"{p}.mlp.experts.{e}": n for e in range(t["n_routed_experts"])}
            mlps[f"{p}.mlp.shared_experts"] = n * t["n_shared_experts"]
        for mp, width in mlps.items():
            s[f"{mp}.gate_proj.weight"] = s[f"{mp}.up_proj.weight"] = (width, h)
            s[f"{mp}.down_proj.weight"] = (h, width)
    return s


def init_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random weights with a sane scale, so the tiny model has confident, non-degenerate logits."""
    if name.endswith("e_score_correction_bias"):
        return (torch.rand(shape, generator=gen) * 0.2 - 0.1).float()
    if len(shape) == 1:
        if "norm" in name and name.endswith("weight"):
            return (1.0 + 0.1 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
        return (0.02 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    std = 1.0 if "embed_tokens" in name or "pos_emb" in name else fan_in**-0.5
    if "lm_head" in name:
        std *= 4.0
    return (std * torch.randn(shape, generator=gen)).to(torch.bfloat16)


def write_checkpoint(
    out: Path, *, seed: int = 0, real_vocab: bool = False, size: str = "tiny"
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer_files(out, real_vocab=real_vocab, seed=seed)
    cfg = model_config(tok, size)
    gen = torch.Generator().manual_seed(seed)
    tensors = {n: init_tensor(n, shp, gen) for n, shp in tensor_shapes(cfg).items()}
    return write_model_files(out, cfg, tensors, tok, PREPROCESSOR_CONFIG)


def write_model_files(
    out: Path,
    cfg: dict,
    tensors: dict[str, torch.Tensor],
    tok: dict,
    preprocessor: dict,
    num_shards: int = NUM_SHARDS,
) -> Path:
    """Shards + index, config.json, preprocessor_config.json and generation_config.json (the
    tokenizer files come from `write_tokenizer_files`, whose return value is `tok`)."""
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    files = [f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors" for i in range(num_shards)]
    weight_map, total = {}, 0
    for i, fname in enumerate(files):
        shard = {n: tensors[n].contiguous() for n in names[i::num_shards]}
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        for n, t in shard.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    _write_json(
        out / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
    )
    _write_json(out / "config.json", cfg)
    _write_json(out / "preprocessor_config.json", preprocessor)
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": tok["bos_token_id"],
            "eos_token_id": [tok["eos_token_id"]],
            "transformers_version": "4.48.2",
        },
    )
    return out


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m server.model.tiny", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--out", required=True, type=Path, help="directory to write the checkpoint into"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--real-vocab", action="store_true", help="vocab 163840 with the real special-token ids"
    )
    ap.add_argument(
        "--size", choices=sorted(SIZES), default="tiny", help="tiny (tests) or mid (benchmarks)"
    )
    args = ap.parse_args(argv)
    write_checkpoint(args.out, seed=args.seed, real_vocab=args.real_vocab, size=args.size)
    print(f"wrote {args.size} Kimi-VL checkpoint to {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
