"""The narrow engine contract the API layer uses (after TGI's one typed generate interface).

The API builds a `GenerateRequest` (token ids + decoded media + `SamplingOptions`, all plain
Python) and consumes `GenerateOutput` steps. The vLLM AsyncLLM adapter implements `Engine`;
unit tests can stand in a fake. Nothing here imports vLLM.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "abort", "error"]


class EngineDeadError(RuntimeError):
    """The engine stopped (crashed or shut down); no request can be served until a restart."""


class RequestRejectedError(ValueError):
    """The engine refused the request as invalid (e.g. a logit_bias id outside the vocabulary).

    The message is meant for the client; `param` names the offending request field if known.
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


ConstraintKind = Literal["json", "regex", "choice", "grammar", "json_object", "structural_tag"]


@dataclass(frozen=True, slots=True)
class OutputConstraint:
    """A structured-output constraint (vLLM's StructuredOutputsParams, one field of it):
    `json` a schema (mapping or JSON text), `regex` / `grammar` / `structural_tag` text,
    `choice` a tuple of strings, `json_object` True."""

    kind: ConstraintKind
    value: Any


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """OpenAI sampling fields as plain values, after request defaults are applied.

    Conventions follow vLLM's SamplingParams so the adapter maps them one to one: `top_k` 0
    disables top-k; `max_tokens` None means "up to max_model_len"; `top_logprobs` is the number
    of alternatives per token and only matters when `logprobs` is true.
    """

    n: int = 1
    max_tokens: int | None = None
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: Mapping[int, float] | None = None
    constraint: OutputConstraint | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    request_id: str
    prompt_token_ids: Sequence[int]
    sampling: SamplingOptions
    # {"image": [PIL.Image, ...]} in prompt order, one `<|media_pad|>` per image in the prompt.
    multi_modal_data: Mapping[str, Any] | None = None
    priority: int = 0  # lower runs first, with the engine's priority scheduling
    cache_salt: str | None = None  # prefix-cache entries are shared only within one salt
    # Nobody reads the tokens as they come (a non-streamed request): the engine may deliver each
    # choice as one output when it finishes, with `first_token_time` set.
    final_only: bool = False


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The sampled token's logprob and the `top_logprobs` most likely alternatives."""

    token_id: int
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerateOutput:
    """One engine step for one choice: only what is new since the previous step of that choice.

    `num_completion_tokens` is cumulative for the choice, so the last output gives the usage.
    `finish_reason` is set on the choice's final output and None before it.
    """

    index: int
    text_delta: str
    token_ids: tuple[int, ...]
    num_prompt_tokens: int
    num_completion_tokens: int
    num_cached_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: FinishReason | None = None
    # Wall-clock time (time.time()) of the choice's first token, when this output is not the
    # one that carried it (a `final_only` request's single output); None otherwise.
    first_token_time: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What /v1/models and the prompt builder need to know about the served checkpoint."""

    root: str  # HF id or local path the weights came from
    max_model_len: int
    reasoning: bool  # outputs ◁think▷…◁/think▷ to be split into reasoning_content
    created: int = field(default_factory=lambda: int(time.time()))
    # Sequences the engine runs at once (admission control queues beyond this).
    max_num_seqs: int = 1
    # The checkpoint's preprocessor_config.json (image token arithmetic, docs/model.md#image-preprocessing).
    preprocessor_config: Mapping[str, Any] = field(default_factory=dict)
    # Sampling defaults from the checkpoint's generation_config.json, in SamplingOptions names
    # (temperature, top_p, top_k, min_p, repetition_penalty, max_tokens, …).
    generation_defaults: Mapping[str, Any] = field(default_factory=dict)


class Tokenizer(Protocol):
    """The slice of the checkpoint tokenizer the front end uses (signatures as transformers')."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def encode_text(self, text: str) -> list[int]:
        """Ordinary text only: special-token strings in `text` never become special ids."""
        ...

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]: ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str | list[str]: ...

    def __len__(self) -> int:
        """Vocabulary size, special tokens included."""
        ...


@runtime_checkable
class Engine(Protocol):
    """The one interface between the HTTP layer and the inference engine."""

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def model_info(self) -> ModelInfo: ...

    async def start(self) -> None:
        """Load the model and start serving; returns when ready (or raises)."""
        ...

    async def stop(self) -> None:
        """Abort in-flight requests and release the engine."""
        ...

    def is_alive(self) -> bool:
        """False once the engine has died; /health turns red."""
        ...

    def is_ready(self) -> bool:
        """True once start() finished and the engine accepts requests; /ready."""
        ...

    def check(self, request: GenerateRequest) -> None:
        """Raise RequestRejectedError if the engine would refuse `request` (e.g. an output
        constraint that does not compile); called before a response starts, so a bad request
        is a 400 rather than an error event in a stream."""
        ...

    def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateOutput, None]:
        """Stream outputs of all `n` choices, interleaved, until every choice finished.

        An async generator (hence no `async def` here): closing it early must abort the request.
        Raises RequestRejectedError before the first output,
        EngineDeadError if the engine dies.
        """
        ...
