"""vLLM multimodal processor for Kimi-VL, without remote code.

vLLM tokenises the prompt itself; this processor only turns images into `pixel_values` /
`image_grid_hws` (server.model.image_processing) and expands each `<|media_pad|>` into
gh*gw/4 copies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import torch
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageProcessorItems, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.transformers_utils.config import get_hf_image_processor_config

from server.model.image_processing import (
    ImageProcessorConfig,
    grid_size,
    num_image_tokens,
    preprocess_images,
)

MEDIA_PAD = "<|media_pad|>"
IMAGE_PLACEHOLDER = "<|media_start|>image<|media_content|><|media_pad|><|media_end|>"


class KimiVLProcessingInfo(BaseProcessingInfo):
    @cached_property
    def image_processor_config(self) -> ImageProcessorConfig:
        mc = self.ctx.model_config
        raw = get_hf_image_processor_config(mc.model, revision=mc.revision) or {}
        return ImageProcessorConfig.from_dict(raw)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        return num_image_tokens(image_width, image_height, self.image_processor_config)

    @property
    def image_token_id(self) -> int:
        return int(self.get_hf_config().media_placeholder_token_id)

    def get_image_size_with_most_features(self) -> tuple[int, int]:
        """A square image just under the token limit, padded up: the costliest single image."""
        cfg = self.image_processor_config
        side = int(cfg.in_token_limit**0.5) * cfg.patch_size
        best = (side, side)
        for w in range(side, side + 2 * cfg.pad_multiple[1] + 1):
            if num_image_tokens(w, w, cfg) > num_image_tokens(*best, cfg):
                best = (w, w)
        return best

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int]
    ) -> Mapping[str, int] | None:
        w, h = self.get_image_size_with_most_features()
        return {"image": self.get_num_image_tokens(image_width=w, image_height=h)}


class KimiVLDummyInputsBuilder(BaseDummyInputsBuilder[KimiVLProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return MEDIA_PAD * mm_counts.get("image", 0)

    def get_dummy_mm_data(
        self,
        seq_len: int,
        mm_counts: Mapping[str, int],
        mm_options: MultiModalDummyOptions,
    ) -> MultiModalDataDict:
        w, h = self.info.get_image_size_with_most_features()
        return {
            "image": self._get_dummy_images(
                width=w,
                height=h,
                num_images=mm_counts.get("image", 0),
                overrides=mm_options.get("image"),  # type: ignore[arg-type]
            )
        }


class KimiVLMultiModalProcessor(BaseMultiModalProcessor[KimiVLProcessingInfo]):
    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        images = hf_data.get("images") or []
        out = preprocess_images(list(images), self.info.image_processor_config)  # type: ignore[call-overload]
        return BatchFeature(dict(out))

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        grid_hws = hf_inputs.get("image_grid_hws", torch.empty((0, 2), dtype=torch.long))
        return dict(
            pixel_values=MultiModalFieldConfig.flat_from_sizes("image", grid_hws.prod(-1)),
            image_grid_hws=MultiModalFieldConfig.batched("image", keep_on_cpu=True),
        )

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, Any],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        pad_id = self.info.image_token_id
        cfg = self.info.image_processor_config
        merge = cfg.merge_kernel_size[0] * cfg.merge_kernel_size[1]

        def replacement(item_idx: int) -> list[int]:
            images = mm_items.get_items("image", ImageProcessorItems)
            size = images.get_image_size(item_idx)
            gh, gw = grid_size(size.width, size.height, cfg)
            return [pad_id] * (gh * gw // merge)

        return [PromptReplacement(modality="image", target=[pad_id], replacement=replacement)]
