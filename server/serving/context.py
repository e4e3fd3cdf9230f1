"""What both completion services share: settings, engine, admission, and per-model lookups."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from server.engine.contract import Engine, ModelInfo, Tokenizer
from server.errors import EngineDead, EngineStarting, ModelNotFound
from server.media import MediaLimits
from server.serving.admission import AdmissionGate
from server.serving.images import ImageBudget
from server.serving.prompt import SpecialIds
from server.serving.sampling import generation_defaults
from server.serving.videos import VideoPolicy
from server.settings import Settings


class ServingContext:
    """Built once per app; model-dependent values are computed after the engine started."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.media_limits = MediaLimits.from_settings(settings)
        self.video_policy = VideoPolicy.from_settings(settings)
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
        """Fail fast (503) while the engine is dead or still starting."""
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
