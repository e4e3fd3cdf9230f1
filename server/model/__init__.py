"""vLLM plugin for Kimi-VL (entry point `vllm.general_plugins` -> `server.model:register`).

vLLM calls `register()` in every process it starts, so it must be idempotent and cheap: the
model class is registered lazily as a "module:Class" string; the tokenizer registration
touches only transformers' and vLLM's registries.
"""

from __future__ import annotations

ARCHITECTURE = "KimiVLForConditionalGeneration"
MODEL_CLASS = "server.model.kimi_vl:KimiVLForConditionalGeneration"

_registered = False


def register() -> None:
    """Make vLLM build our Kimi-VL class (overriding its built-in one) and use our tokenizer."""
    global _registered
    if _registered:
        return
    from vllm import ModelRegistry
    from vllm.logger import init_logger

    from server.model.tokenizer import register_tokenizer

    ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
    register_tokenizer()
    _registered = True
    init_logger("vllm.plugins.kimi_vl_server").info(
        "kimi-vl-server plugin: %s -> %s", ARCHITECTURE, MODEL_CLASS
    )
