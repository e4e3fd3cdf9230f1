"""vLLM multimodal processor for Kimi-VL (images and videos), without remote code.

vLLM tokenises the prompt itself; this processor turns media into patches and expands the
placeholders. An image block `<|media_start|>image<|media_content|><|media_pad|><|media_end|>`
gets gh*gw/4 pads. Kimi-VL has no video tokens (docs/model.md#video): a video block
`<|media_start|>video<|media_content|><|media_pad|><|media_end|>` becomes, per frame, an
optional timestamp text (`MM:SS`) followed by an ordinary image block. Frames share the image
path: same preprocessing, same encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import (
    ImageProcessorItems,
    MultiModalDataItems,
    MultiModalDataParser,
    VideoProcessorItems,
)
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)
from vllm.transformers_utils.config import get_hf_image_processor_config

from server.model.image_processing import (
    ImageProcessorConfig,
    num_image_tokens,
    preprocess_images,
)
from server.model.media_format import (
    IMAGE_PLACEHOLDER,
    MAX_VIDEO_TOKENS,
    VIDEO_PLACEHOLDER,
    format_timestamp,
)

_DUMMY_FRAME = 448  # 256 tokens per dummy frame


def split_video(item: Any) -> tuple[Any, dict]:
    """Video items travel as (frames, metadata); metadata may carry `timestamps` (seconds)."""
    if isinstance(item, tuple):
        frames, meta = item
        return frames, dict(meta or {})
    return item, {}


def video_frames(video: Any) -> list[Image.Image]:
    """Frames as PIL images, from [T, H, W, 3] uint8 or a list of frames."""
    if isinstance(video, (np.ndarray, torch.Tensor)):
        arr = np.asarray(video)
        return [Image.fromarray(f) for f in arr]
    return [f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f)) for f in video]


class KimiVLProcessingInfo(BaseProcessingInfo):
    @cached_property
    def image_processor_config(self) -> ImageProcessorConfig:
        mc = self.ctx.model_config
        raw = get_hf_image_processor_config(mc.model, revision=mc.revision) or {}
        return ImageProcessorConfig.from_dict(raw)

    def get_data_parser(self) -> MultiModalDataParser:
        # Keep (frames, metadata) together: vLLM re-parses items on processor-cache misses,
        # which would otherwise drop the timestamps.
        return MultiModalDataParser(
            video_needs_metadata=True,
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None, "video": None}

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        return num_image_tokens(image_width, image_height, self.image_processor_config)

    @property
    def image_token_id(self) -> int:
        return int(self.get_hf_config().media_placeholder_token_id)

    @cached_property
    def placeholder_ids(self) -> dict[str, list[int]]:
        tok = self.get_tokenizer()
        return {
            m: tok.encode(p, add_special_tokens=False)
            for m, p in (("image", IMAGE_PLACEHOLDER), ("video", VIDEO_PLACEHOLDER))
        }

    def image_block(self, num_tokens: int) -> list[int]:
        start, end = self.placeholder_ids["image"][:-2], self.placeholder_ids["image"][-1:]
        return start + [self.image_token_id] * num_tokens + end

    def get_image_size_with_most_features(self) -> tuple[int, int]:
        """A square image just under the token limit, padded up: the costliest single image."""
        cfg = self.image_processor_config
        side = int(cfg.in_token_limit**0.5) * cfg.patch_size
        best = (side, side)
        for w in range(side, side + 2 * cfg.pad_multiple[1] + 1):
            if num_image_tokens(w, w, cfg) > num_image_tokens(*best, cfg):
                best = (w, w)
        return best

    def max_video_tokens(self, seq_len: int) -> int:
        return min(seq_len, MAX_VIDEO_TOKENS)

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int]
    ) -> Mapping[str, int] | None:
        w, h = self.get_image_size_with_most_features()
        return {
            "image": self.get_num_image_tokens(image_width=w, image_height=h),
            "video": self.max_video_tokens(seq_len),
        }


class KimiVLDummyInputsBuilder(BaseDummyInputsBuilder[KimiVLProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return IMAGE_PLACEHOLDER * mm_counts.get("image", 0) + VIDEO_PLACEHOLDER * mm_counts.get(
            "video", 0
        )

    def get_dummy_mm_data(
        self,
        seq_len: int,
        mm_counts: Mapping[str, int],
        mm_options: MultiModalDummyOptions,
    ) -> MultiModalDataDict:
        w, h = self.info.get_image_size_with_most_features()
        per_frame = self.info.get_num_image_tokens(
            image_width=_DUMMY_FRAME, image_height=_DUMMY_FRAME
        )
        frames = max(1, self.info.max_video_tokens(seq_len) // per_frame)
        return {
            "image": self._get_dummy_images(
                width=w,
                height=h,
                num_images=mm_counts.get("image", 0),
                overrides=mm_options.get("image"),
            ),
            "video": [
                (v, {"timestamps": None})
                for v in self._get_dummy_videos(
                    width=_DUMMY_FRAME,
                    height=_DUMMY_FRAME,
                    num_frames=frames,
                    num_videos=mm_counts.get("video", 0),
                    overrides=mm_options.get("video"),
                )
            ],
        }


class KimiVLMultiModalProcessor(BaseMultiModalProcessor[KimiVLProcessingInfo]):
    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        cfg = self.info.image_processor_config
        out: dict[str, torch.Tensor] = {}
        images = hf_data.get("images")
        if images:
            out.update(preprocess_images(list(images), cfg))  # type: ignore[call-overload]
        videos = hf_data.get("videos")
        if videos:
            frames = [video_frames(split_video(v)[0]) for v in videos]  # type: ignore[attr-defined]
            if any(len(f) == 0 for f in frames):
                raise ValueError("a video has no frames")
            flat = preprocess_images([im for f in frames for im in f], cfg)
            out["pixel_values_videos"] = flat["pixel_values"]
            out["video_grid_hws"] = flat["image_grid_hws"]
            out["video_num_frames"] = torch.tensor([len(f) for f in frames], dtype=torch.long)
        return BatchFeature(out)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        empty = torch.empty((0, 2), dtype=torch.long)
        grids = hf_inputs.get("image_grid_hws", empty)
        frame_grids = hf_inputs.get("video_grid_hws", empty)
        num_frames = hf_inputs.get("video_num_frames", torch.empty(0, dtype=torch.long))
        patches_per_video = [int(g.prod(-1).sum()) for g in frame_grids.split(num_frames.tolist())]
        return dict(
            pixel_values=MultiModalFieldConfig.flat_from_sizes("image", grids.prod(-1)),
            image_grid_hws=MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            pixel_values_videos=MultiModalFieldConfig.flat_from_sizes(
                "video", torch.tensor(patches_per_video, dtype=torch.long)
            ),
            video_grid_hws=MultiModalFieldConfig.flat_from_sizes(
                "video", num_frames, keep_on_cpu=True
            ),
            video_num_frames=MultiModalFieldConfig.batched("video", keep_on_cpu=True),
        )

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, Any],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        info = self.info
        pad_id = info.image_token_id
        tokenizer = info.get_tokenizer()

        def image_replacement(item_idx: int) -> PromptUpdateDetails:
            size = mm_items.get_items("image", ImageProcessorItems).get_image_size(item_idx)
            n = info.get_num_image_tokens(image_width=size.width, image_height=size.height)
            return PromptUpdateDetails.select_token_id(info.image_block(n), pad_id)

        def video_replacement(item_idx: int) -> PromptUpdateDetails:
            frames_data, meta = split_video(
                mm_items.get_items("video", VideoProcessorItems).get(item_idx)
            )
            frames = video_frames(frames_data)
            n = info.get_num_image_tokens(
                image_width=frames[0].width, image_height=frames[0].height
            )
            stamps = meta.get("timestamps")
            if stamps is not None and len(stamps) != len(frames):
                raise ValueError(f"video has {len(frames)} frames but {len(stamps)} timestamps")
            seq: list[int] = []
            for i in range(len(frames)):
                if stamps is not None:
                    seq += tokenizer.encode(format_timestamp(stamps[i]), add_special_tokens=False)
                seq += info.image_block(n)
            return PromptUpdateDetails.select_token_id(seq, pad_id)

        updates: list[PromptUpdate] = [
            PromptReplacement(
                modality="image",
                target=info.placeholder_ids["image"],
                replacement=image_replacement,
            )
        ]
        if "video" in mm_items:
            updates.append(
                PromptReplacement(
                    modality="video",
                    target=info.placeholder_ids["video"],
                    replacement=video_replacement,
                )
            )
        return updates
