"""What both completion services share: settings, engine, admission, and per-model lookups."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator
from functools import cached_property
from typing import Any

from pydantic import BaseModel

from server.engine.contract import (
    Engine,
    GenerateOutput,
    GenerateRequest,
    ModelInfo,
    RequestRejectedError,
    Tokenizer,
)
from server.errors import EngineDead, EngineStarting, InvalidRequest, ModelNotFound
from server.media import MediaLimits
from server.protocol.policy import IGNORED_HEADER, ignored_fields
from server.serving.admission import AdmissionGate
from server.serving.documents import DocumentPolicy
from server.serving.drain import Drain
from server.serving.files import Files
from server.serving.images import ImageBudget
from server.serving.prompt import SpecialIds
from server.serving.sampling import generation_defaults
from server.serving.videos import VideoPolicy
from server.settings import Settings
from server.store.files import FileStore

logger = logging.getLogger(__name__)


class ServingContext:
    """Built once per app; model-dependent values are computed after the engine started."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.media_limits = MediaLimits.from_settings(settings)
        self.video_policy = VideoPolicy.from_settings(settings)
        self.document_policy = DocumentPolicy.from_settings(settings)
        self.drain = Drain()
        self.files = Files(FileStore(settings.state_dir), settings.max_file_bytes)
        self.gate = AdmissionGate(
            settings.max_queued_requests, lambda: self.engine.model_info.max_num_seqs
        )

    @property
    def model_name(self) -> str:
        """The name responses carry."""
        return self.settings.model_name

    @property
    def model_names(self) -> list[str]:
        """Every name a request may use."""
        return self.settings.model_names

    @property
    def model_info(self) -> ModelInfo:
        return self.engine.model_info

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def check_model(self, requested: str | None) -> None:
        """Clients may omit `model`; a different name is a 404 as with OpenAI."""
        if requested is not None and requested not in (*self.model_names, self.model_info.root):
            raise ModelNotFound(requested)

    def check_engine(self) -> None:
        """Fail fast (503) while draining, or while the engine is dead or still starting."""
        self.drain.check()
        if not self.engine.is_alive():
            raise EngineDead("The inference engine is not running; retry later.")
        if not self.engine.is_ready():
            raise EngineStarting()

    # Valid once the engine is ready (check_engine passed); the model does not change after.
    @cached_property
    def specials(self) -> SpecialIds:
        return SpecialIds.from_tokenizer(self.engine.tokenizer)

    @cached_property
    def vocab_size(self) -> int:
        return len(self.engine.tokenizer)

    @cached_property
    def image_budget(self) -> ImageBudget:
        return ImageBudget.from_preprocessor(
            self.model_info.preprocessor_config, self.settings.in_token_limit
        )

    @cached_property
    def defaults(self) -> dict[str, Any]:
        return generation_defaults(self.settings, self.model_info)

    def image_budget_for(self, in_token_limit: int | None) -> ImageBudget:
        """The budget with a request's `mm_processor_kwargs.in_token_limit` (never above the
        server's)."""
        budget = self.image_budget
        if in_token_limit is None or in_token_limit >= budget.in_token_limit:
            return budget
        return dataclasses.replace(budget, in_token_limit=in_token_limit)

    def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateOutput, None]:
        """The engine's outputs for `request`, cut when a drain's deadline passes."""
        return self.drain.interruptible(self.engine.generate(request))

    def check(self, request: GenerateRequest, param: str | None) -> None:
        """The engine's own pre-flight check; its refusal names `param` unless it names one."""
        try:
            self.engine.check(request)
        except RequestRejectedError as exc:
            raise InvalidRequest(str(exc), param=exc.param or param, code="invalid_value") from exc


def ignored_params(request: BaseModel, route: str) -> dict[str, str]:
    """The `X-Ignored-Params` header for the fields `request` sets that have no effect here."""
    names = ignored_fields(request)
    if not names:
        return {}
    logger.debug("%s: ignored request fields: %s", route, ", ".join(names))
    return {IGNORED_HEADER: ",".join(names)}
