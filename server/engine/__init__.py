"""The engine contract the API uses, and (in its own module) the vLLM AsyncLLM adapter."""

from server.engine.contract import (
    Engine,
    EngineDeadError,
    FinishReason,
    GenerateOutput,
    GenerateRequest,
    ModelInfo,
    RequestRejectedError,
    SamplingOptions,
    Tokenizer,
    TokenLogprob,
    TopLogprob,
)

__all__ = [
    "Engine",
    "EngineDeadError",
    "FinishReason",
    "GenerateOutput",
    "GenerateRequest",
    "ModelInfo",
    "RequestRejectedError",
    "SamplingOptions",
    "TokenLogprob",
    "Tokenizer",
    "TopLogprob",
]
