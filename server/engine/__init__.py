"""The engine contract the API uses, and (in its own module) the vLLM AsyncLLM adapter."""

from server.engine.contract import (
    Engine,
    EngineDeadError,
    FinishReason,
    GenerateOutput,
    GenerateRequest,
    ModelInfo,
    PromptTooLongError,
    RequestRejectedError,
    SamplingOptions,
    StepTimings,
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
    "PromptTooLongError",
    "RequestRejectedError",
    "SamplingOptions",
    "StepTimings",
    "TokenLogprob",
    "Tokenizer",
    "TopLogprob",
]
