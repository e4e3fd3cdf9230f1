"""Our `KimiVLForConditionalGeneration`: MoonViT -> projector -> DeepSeek-V3 MoE decoder.

Image features replace the `<|media_pad|>` embeddings in order. Weight loading maps every
tensor name of the published checkpoints (docs/model.md#checkpoint-tensors) and fails naming the tensor when
one is unexpected or missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import ReplicatedLinear
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import is_pp_missing_parameter
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import NestedTensors
from vllm.sequence import IntermediateTensors
from vllm.utils.tensor_schema import TensorSchema, TensorShape

from server.model.checkpoint import validate_checkpoint_dir
from server.model.decoder import LanguageModel
from server.model.heap import HeapTrimmer
from server.model.media_format import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from server.model.moe import KimiMoE
from server.model.moonvit import MoonViT
from server.model.processing import (
    KimiVLDummyInputsBuilder,
    KimiVLMultiModalProcessor,
    KimiVLProcessingInfo,
)

_EXPERT = re.compile(
    r"language_model\.model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight"
)
_SHARED = re.compile(
    r"language_model\.model\.layers\.(\d+)\.mlp\.shared_experts\.(gate_proj|up_proj|down_proj)\.weight"
)
_DENSE_MERGED = re.compile(r"(.*\.mlp)\.(gate_proj|up_proj)\.weight")


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model built from its config."""


class Projector(nn.Module):
    """LayerNorm on each of the 4 merged sub-vectors -> concat -> Linear -> GELU(erf) -> Linear.

    The linears are vLLM's (replicated on every TP rank): on CPU they run as prepacked oneDNN
    GEMMs, which an image prefill notices (4x faster than torch's addmm here)."""

    def __init__(self, vision_hidden: int, merge: int, text_hidden: int, prefix: str = "") -> None:
        super().__init__()
        width = vision_hidden * merge
        self.pre_norm = nn.LayerNorm(vision_hidden, eps=1e-5)
        self.linear_1 = ReplicatedLinear(
            width, width, bias=True, return_bias=False, prefix=f"{prefix}.linear_1"
        )
        self.linear_2 = ReplicatedLinear(
            width, text_hidden, bias=True, return_bias=False, prefix=f"{prefix}.linear_2"
        )

    def forward(self, merged: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(merged).flatten(1)
        return self.linear_2(F.gelu(self.linear_1(x)))


class KimiVLImagePixelInputs(TensorSchema):
    """Images of one encoder step, their patches concatenated in item order.

    Dimensions: np = patches of all images, ps = patch size (14), ni = images.
    """

    type: Literal["pixel_values"] = "pixel_values"
    pixel_values: Annotated[torch.Tensor, TensorShape("np", 3, "ps", "ps")]
    image_grid_hws: Annotated[torch.Tensor, TensorShape("ni", 2)]


class KimiVLVideoPixelInputs(TensorSchema):
    """Videos of one encoder step as their frames, patches concatenated in frame order.

    Dimensions: np = patches of all frames, ps = patch size, nf = frames, nv = videos.
    """

    type: Literal["pixel_values_videos"] = "pixel_values_videos"
    pixel_values_videos: Annotated[torch.Tensor, TensorShape("np", 3, "ps", "ps")]
    video_grid_hws: Annotated[torch.Tensor, TensorShape("nf", 2)]
    video_num_frames: Annotated[torch.Tensor, TensorShape("nv")]


def _concat(value: object, *trailing: int) -> torch.Tensor:
    """vLLM hands a field over as one tensor, or as a list of per-item tensors when their shapes
    differ: one tensor either way, items concatenated along the first dimension."""
    if isinstance(value, (list, tuple)):
        return torch.cat([torch.as_tensor(v).reshape(-1, *trailing) for v in value])
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected a tensor or a list of tensors, got {type(value).__name__}")
    return value.reshape(-1, *trailing)


def _grids(grid_hws: torch.Tensor) -> list[tuple[int, int]]:
    return [(int(h), int(w)) for h, w in grid_hws.tolist()]


@MULTIMODAL_REGISTRY.register_processor(
    KimiVLMultiModalProcessor, info=KimiVLProcessingInfo, dummy_inputs=KimiVLDummyInputsBuilder
)
class KimiVLForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP):
    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return IMAGE_PLACEHOLDER
        if modality.startswith("video"):
            return VIDEO_PLACEHOLDER
        raise ValueError(f"Kimi-VL does not take {modality!r} input")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.model_path = vllm_config.model_config.model
        vc, tc = config.vision_config, config.text_config
        kh, kw = vc.merge_kernel_size
        self.patch_size = int(vc.patch_size)
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = MoonViT(vc, prefix=f"{prefix}vision_tower")
            self.multi_modal_projector = Projector(
                vc.hidden_size, kh * kw, tc.hidden_size, prefix=f"{prefix}multi_modal_projector"
            )
        with self._mark_language_model(vllm_config):
            self.language_model = LanguageModel(vllm_config, tc, prefix=f"{prefix}language_model")
        self.make_empty_intermediate_tensors = (
            self.language_model.model.make_empty_intermediate_tensors
        )
        self._heap = HeapTrimmer()  # freed activations back to the OS (server/model/heap.py)

    # -- multimodal --------------------------------------------------------------------------

    def encode_images(self, pixel_values: torch.Tensor, grid_hws: torch.Tensor) -> torch.Tensor:
        """All images (or frames) of a step in one packed encoder pass -> [sum tokens, hidden]."""
        grids = _grids(grid_hws)
        pixel_values = pixel_values.to(self.vision_tower.patch_embed.proj.weight.dtype)
        return self.multi_modal_projector(self.vision_tower(pixel_values, grids))

    def _tokens(self, grid_hws: torch.Tensor) -> list[int]:
        kh, kw = self.config.vision_config.merge_kernel_size
        return [h * w // (kh * kw) for h, w in _grids(grid_hws)]

    def _parse_image_input(self, **kwargs: object) -> KimiVLImagePixelInputs | None:
        if kwargs.get("pixel_values") is None:
            return None
        return KimiVLImagePixelInputs(
            pixel_values=_concat(kwargs["pixel_values"], 3, self.patch_size, self.patch_size),
            image_grid_hws=_concat(kwargs.get("image_grid_hws"), 2),
            resolve_bindings={"ps": self.patch_size},
        )

    def _parse_video_input(self, **kwargs: object) -> KimiVLVideoPixelInputs | None:
        if kwargs.get("pixel_values_videos") is None:
            return None
        return KimiVLVideoPixelInputs(
            pixel_values_videos=_concat(
                kwargs["pixel_values_videos"], 3, self.patch_size, self.patch_size
            ),
            video_grid_hws=_concat(kwargs.get("video_grid_hws"), 2),
            video_num_frames=_concat(kwargs.get("video_num_frames")),
            resolve_bindings={"ps": self.patch_size},
        )

    def embed_multimodal(self, **kwargs: object) -> NestedTensors | None:  # type: ignore[override]
        """Per item (image, or whole video) embeddings, in the order vLLM passed the items."""
        self._heap.maybe_trim()
        images = self._parse_image_input(**kwargs)
        if images is not None:
            features = self.encode_images(images.pixel_values, images.image_grid_hws)
            return features.split(self._tokens(images.image_grid_hws))
        videos = self._parse_video_input(**kwargs)
        if videos is not None:
            features = self.encode_images(videos.pixel_values_videos, videos.video_grid_hws)
            per_frame = self._tokens(videos.video_grid_hws)
            per_video, i = [], 0
            for n in videos.video_num_frames.tolist():
                per_video.append(sum(per_frame[i : i + n]))
                i += n
            return features.split(per_video)
        return None

    # -- decoder -----------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        self._heap.maybe_trim()
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    # -- weights -----------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        validate_checkpoint_dir(self.model_path)
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        experts_seen: dict[str, set[tuple[int, str]]] = {}
        for name, w in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            if is_pp_missing_parameter(name, self):
                continue
            if m := _EXPERT.fullmatch(name):
                moe = self._moe(name, int(m[1]))
                expert = int(m[2])
                if expert >= moe.w13.shape[0]:
                    raise CheckpointMismatchError(
                        f"unexpected checkpoint tensor {name!r}: expert {expert} out of range"
                    )
                moe.load_expert(expert, m[3], w)
                experts_seen.setdefault(f"language_model.model.layers.{m[1]}.mlp", set()).add(
                    (expert, m[3])
                )
                continue
            if m := _SHARED.fullmatch(name):
                moe = self._moe(name, int(m[1]))
                if moe.shared_w13 is None:
                    raise CheckpointMismatchError(
                        f"unexpected checkpoint tensor {name!r}: config has no shared experts"
                    )
                moe.load_shared(m[2], w)
                experts_seen.setdefault(f"language_model.model.layers.{m[1]}.mlp", set()).add(
                    (-1, m[2])
                )
                continue
            if (m := _DENSE_MERGED.fullmatch(name)) and f"{m[1]}.gate_up_proj.weight" in params:
                target = f"{m[1]}.gate_up_proj.weight"
                params[target].weight_loader(params[target], w, 0 if m[2] == "gate_proj" else 1)  # type: ignore[attr-defined]
                loaded.add(f"{name}")
                continue
            param = params.get(name)
            if param is None:
                raise CheckpointMismatchError(
                    f"unexpected checkpoint tensor {name!r}: no such parameter in Kimi-VL"
                )
            if (
                tuple(param.shape) != tuple(w.shape)
                and getattr(param, "weight_loader", None) is None
            ):
                raise CheckpointMismatchError(
                    f"checkpoint tensor {name!r} has shape {tuple(w.shape)}, expected {tuple(param.shape)}"
                )
            getattr(param, "weight_loader", default_weight_loader)(param, w)
            loaded.add(name)
        return self._check_complete(params, loaded, experts_seen)

    def _moe(self, name: str, layer: int) -> KimiMoE:
        layers = self.language_model.model.layers
        mlp = layers[layer].mlp if layer < len(layers) else None
        if not isinstance(mlp, KimiMoE):
            raise CheckpointMismatchError(
                f"unexpected checkpoint tensor {name!r}: layer {layer} is not an MoE layer"
            )
        return mlp

    def _check_complete(
        self,
        params: dict[str, nn.Parameter],
        loaded: set[str],
        experts_seen: dict[str, set[tuple[int, str]]],
    ) -> set[str]:
        """Every parameter must have come from the checkpoint; name the first missing tensor."""
        done = set(loaded)
        for name in list(loaded):
            if m := _DENSE_MERGED.fullmatch(name):
                done.discard(name)
                gate, up = f"{m[1]}.gate_proj.weight", f"{m[1]}.up_proj.weight"
                if gate in loaded and up in loaded:
                    done.add(f"{m[1]}.gate_up_proj.weight")
        projs = ("gate_proj", "up_proj", "down_proj")
        for i, layer in enumerate(self.language_model.model.layers):
            mlp = getattr(layer, "mlp", None)
            if not isinstance(mlp, KimiMoE):
                continue
            prefix = f"language_model.model.layers.{i}.mlp"
            seen = experts_seen.get(prefix, set())
            for e in range(mlp.w13.shape[0]):
                for p in projs:
                    if (e, p) not in seen:
                        raise CheckpointMismatchError(
                            f"checkpoint is missing tensor '{prefix}.experts.{e}.{p}.weight'"
                        )
            done.update({f"{prefix}.w13", f"{prefix}.w2"})
            if mlp.shared_w13 is not None:
                for p in projs:
                    if (-1, p) not in seen:
                        raise CheckpointMismatchError(
                            f"checkpoint is missing tensor '{prefix}.shared_experts.{p}.weight'"
                        )
                done.update({f"{prefix}.shared_w13", f"{prefix}.shared_w2"})
        for name in params:
            if name not in done and not is_pp_missing_parameter(name, self):
                if name.endswith("gate_up_proj.weight"):
                    name = name.replace("gate_up_proj", "gate_proj or up_proj")
                raise CheckpointMismatchError(f"checkpoint is missing tensor {name!r}")
        self.vision_tower._cache.clear()
        for layer in self.language_model.model.layers:
            mlp = getattr(layer, "mlp", None)
            if isinstance(mlp, KimiMoE):
                mlp.finalize()
        return done
