"""`python -m server.model.tiny --size mid`: the mid-size checkpoint's shape (what the model
benchmark relies on: 64 routed experts, top 6, 2 shared, hidden >= 1024, >= 6 layers, a vision
tower with the real patch and merge sizes, the MLA dimensions vLLM's CPU kernel needs)."""

from __future__ import annotations

from server.model.tiny import model_config, tensor_shapes
from server.model.tiny_tokenizer import write_tokenizer_files


def test_mid_size_dimensions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tok = write_tokenizer_files(tmp_path, real_vocab=False, seed=0)
    cfg = model_config(tok, "mid")
    text, vision = cfg["text_config"], cfg["vision_config"]
    assert (text["n_routed_experts"], text["num_experts_per_tok"], text["n_shared_experts"]) == (
        64,
        6,
        2,
    )
    assert text["hidden_size"] >= 1024 and text["num_hidden_layers"] >= 6
    assert (text["kv_lora_rank"], text["qk_rope_head_dim"]) == (512, 64)
    assert vision["patch_size"] == 14 and vision["merge_kernel_size"] == [2, 2]
    shapes = tensor_shapes(cfg)
    moe_layers = text["num_hidden_layers"] - text["first_k_dense_replace"]
    experts = [n for n in shapes if ".mlp.experts." in n and n.endswith("gate_proj.weight")]
    assert len(experts) == 64 * moe_layers
    assert shapes["language_model.model.layers.1.mlp.gate.weight"] == (64, 1024)
    tiny = tensor_shapes(model_config(tok))
    assert tiny["language_model.model.layers.1.mlp.gate.weight"][0] == 8  # tiny is unchanged
