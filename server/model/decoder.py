"""Kimi-VL's language model: a DeepSeek-V3-style decoder (Moonlight-16B-A3B).

embed -> L x [RMSNorm -> MLA (vLLM's MLA attention layer, latent KV cache) -> RMSNorm ->
dense MLP (layer 0) or KimiMoE (layers >= first_k_dense_replace)] -> RMSNorm -> lm_head.
Checkpoint prefix: `language_model.model.*`, `language_model.lm_head.weight`.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)
from vllm.model_executor.models.deepseek_v2 import DeepseekV2MLAAttention, DeepseekV2MLP
from vllm.model_executor.models.utils import (
    PPMissingLayer,
    make_empty_intermediate_tensors_factory,
    make_layers,
)
from vllm.platforms import current_platform
from vllm.sequence import IntermediateTensors

from server.model.moe import KimiMoE


def use_native_rope_for_mla(rope: nn.Module) -> None:
    """Work around vLLM 0.32's CPU rotary kernel, which assumes q/k laid out as [T, H*D].

    MLA hands it [T, H, D] views, and the kernel then rotates only the first T rows (mixing
    heads and tokens) and leaves the rest unrotated: results depend on heads per TP rank and
    on the batch's token count. vLLM's own DeepSeek/Kimi-VL classes share the bug; the
    native PyTorch path is exact (checked against Hugging Face's DeepseekV3).
    """
    rope._forward_method = rope.forward_native  # type: ignore[attr-defined]


def is_moe_layer(config, layer_idx: int) -> bool:  # type: ignore[no-untyped-def]
    freq = getattr(config, "moe_layer_freq", 1) or 1
    return (
        config.n_routed_experts is not None
        and layer_idx >= config.first_k_dense_replace
        and layer_idx % freq == 0
    )


class DecoderLayer(nn.Module):
    def __init__(self, vllm_config: VllmConfig, config, prefix: str) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        layer_idx = int(prefix.rsplit(".", 1)[-1])
        self.self_attn = DeepseekV2MLAAttention(
            vllm_config=vllm_config,
            config=config,
            hidden_size=config.hidden_size,
            num_heads=config.num_attention_heads,
            qk_nope_head_dim=config.qk_nope_head_dim,
            qk_rope_head_dim=config.qk_rope_head_dim,
            v_head_dim=config.v_head_dim,
            q_lora_rank=getattr(config, "q_lora_rank", None),
            kv_lora_rank=config.kv_lora_rank,
            max_position_embeddings=getattr(config, "max_position_embeddings", 8192),
            cache_config=vllm_config.cache_config,
            quant_config=vllm_config.quant_config,
            prefix=f"{prefix}.self_attn",
        )
        if current_platform.is_cpu():
            use_native_rope_for_mla(self.self_attn.rotary_emb)
        self.mlp: nn.Module
        if is_moe_layer(config, layer_idx):
            self.mlp = KimiMoE(config, prefix=f"{prefix}.mlp")
        else:
            self.mlp = DeepseekV2MLP(
                hidden_size=config.hidden_size,
                intermediate_size=config.intermediate_size,
                hidden_act=config.hidden_act,
                quant_config=vllm_config.quant_config,
                prefix=f"{prefix}.mlp",
            )
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = x
            x = self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, None)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


@support_torch_compile(
    dynamic_arg_dims={
        "input_ids": 0,
        "positions": -1,
        "intermediate_tensors": 0,
        "inputs_embeds": 0,
    }
)
class TextModel(nn.Module):
    """Compiled by vLLM unless --enforce-eager (dynamo + inductor; on GPUs, piecewise CUDA
    graphs), as its own DeepSeek decoder is; the MoE is an opaque custom op (moe.py)."""

    def __init__(self, *, vllm_config: VllmConfig, config, prefix: str = "") -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.config = config
        pp = get_pp_group()
        self.embed_tokens: nn.Module = (
            VocabParallelEmbedding(
                config.vocab_size, config.hidden_size, prefix=f"{prefix}.embed_tokens"
            )
            if pp.is_first_rank
            else PPMissingLayer()
        )
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers,
            lambda prefix: DecoderLayer(vllm_config, config, prefix),
            prefix=f"{prefix}.layers",
        )
        self.norm: nn.Module = (
            RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            if pp.is_last_rank
            else PPMissingLayer()
        )
        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors_factory(
            ["hidden_states", "residual"], config.hidden_size
        )

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None,
        inputs_embeds: torch.Tensor | None,
    ) -> torch.Tensor | IntermediateTensors:
        if get_pp_group().is_first_rank:
            x = inputs_embeds if inputs_embeds is not None else self.embed_tokens(input_ids)
            residual = None
        else:
            assert intermediate_tensors is not None
            x, residual = intermediate_tensors["hidden_states"], intermediate_tensors["residual"]
        for layer in self.layers[self.start_layer : self.end_layer]:
            x, residual = layer(positions, x, residual)
        assert residual is not None  # at least one layer per pipeline stage
        if not get_pp_group().is_last_rank:
            return IntermediateTensors({"hidden_states": x, "residual": residual})
        x, _ = self.norm(x, residual)
        return x


class LanguageModel(nn.Module):
    """`language_model.*`: the decoder (`.model`) and the untied head (`.lm_head`)."""

    def __init__(self, vllm_config: VllmConfig, config, prefix: str) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.model = TextModel(vllm_config=vllm_config, config=config, prefix=f"{prefix}.model")
        self.lm_head: nn.Module = (
            ParallelLMHead(config.vocab_size, config.hidden_size, prefix=f"{prefix}.lm_head")
            if get_pp_group().is_last_rank
            else PPMissingLayer()
        )
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)
