"""A demo sample -> the exact token ids and patches the served engine sees for the same request.

The server renders a chat structurally (role and media tokens by id, text through the
tokenizer without special-token parsing, adjacent text joined before encoding); vLLM's processor
then expands each image block's single pad to gh*gw/4 pads and each video block to, per frame,
the `MM:SS` timestamp text and an image block. This module produces that final sequence
directly, with the request layout the demo uses:

    [system turn: default, or "You are a thinking assistant."]
    user: media parts (images in order, or one video), then the question
          (or the question first when `text_first`)
    assistant generation prompt

The training target is the answer followed by `<|im_end|>`; in the thinking variant it is
`◁think▷{sentence}◁/think▷{answer}<|im_end|>`. The demo preset samples a clip of up to 30
frames per second frame for frame, so frame i of a clip at `fps` is stamped with the whole
seconds of i / fps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from server.model.demo.tasks import Sample
from server.model.image_processing import ImageProcessorConfig, preprocess_image
from server.model.media_format import format_timestamp

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant"
THINKING_SYSTEM_PROMPT = "You are a thinking assistant."
THINK_START, THINK_END = "◁think▷", "◁/think▷"
_SPECIALS = (
    "<|im_system|>",
    "<|im_user|>",
    "<|im_assistant|>",
    "<|im_middle|>",
    "<|im_end|>",
    "<|media_start|>",
    "<|media_content|>",
    "<|media_end|>",
    "<|media_pad|>",
)


class DemoTokenizer(Protocol):
    def encode_text(self, text: str) -> list[int]: ...

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def convert_tokens_to_ids(self, tokens: str) -> Any: ...

    def decode(self, token_ids: Any, skip_special_tokens: bool = ..., **kwargs: Any) -> Any: ...


@dataclass
class Encoded:
    """Prompt ids (placeholders expanded), target ids, and the media's patches in prompt order."""

    prompt_ids: list[int]
    target_ids: list[int]
    pixel_values: np.ndarray  # [sum gh*gw, 3, 14, 14] float32
    grids: list[tuple[int, int]]
    labels: np.ndarray | None = None  # training only: per image token (data.token_labels)
    target_mask: list[bool] | None = None  # training only: which target ids carry the loss
    # training only: index in target_ids of each answer's first token (none when thinking),
    # and per answer the image tokens that hold what it is about (data.focus_mask)
    answer_starts: list[int] = field(default_factory=list)
    focus: list[np.ndarray] = field(default_factory=list)
    focus_sink: list[bool] = field(default_factory=list)  # data.counts_with_sink, per answer


def target_text(sample: Sample, *, thinking: bool) -> str:
    return f"{THINK_START}{sample.thought}{THINK_END}{sample.answer}" if thinking else sample.answer


class PromptBuilder:
    """Token-level renderer for demo samples, bound to one tokenizer and processor config."""

    def __init__(self, tokenizer: DemoTokenizer, cfg: ImageProcessorConfig) -> None:
        self.tok, self.cfg = tokenizer, cfg
        self.ids = {name: int(tokenizer.convert_tokens_to_ids(name)) for name in _SPECIALS}
        self._text_cache: dict[str, list[int]] = {}

    def text(self, text: str) -> list[int]:
        hit = self._text_cache.get(text)
        if hit is None:
            hit = self._text_cache[text] = self.tok.encode_text(text)
        return hit

    def _turn_head(self, role: str) -> list[int]:
        return [self.ids[f"<|im_{role}|>"], *self.text(role), self.ids["<|im_middle|>"]]

    def image_block(self, num_tokens: int) -> list[int]:
        return [
            self.ids["<|media_start|>"],
            *self.text("image"),
            self.ids["<|media_content|>"],
            *[self.ids["<|media_pad|>"]] * num_tokens,
            self.ids["<|media_end|>"],
        ]

    def encode(
        self,
        sample: Sample,
        *,
        thinking: bool = False,
        text_first: bool = False,
        expand: bool = True,
        follow_ups: Sequence[tuple[str, str]] = (),
    ) -> Encoded:
        """`expand=False` gives the ids before the processor's expansion (one pad per image
        block, one video block): what the server hands the engine along with the media.
        `follow_ups` (training) continue the conversation with more questions and answers about
        the same media; only answer tokens and their `<|im_end|>` are targets."""
        end = self.ids["<|im_end|>"]
        system = THINKING_SYSTEM_PROMPT if thinking else DEFAULT_SYSTEM_PROMPT
        ids = self._turn_head("system") + self.text(system) + [end]
        ids += self._turn_head("user")
        media: list[int] = []
        patches: list[np.ndarray] = []
        grids: list[tuple[int, int]] = []
        if not expand:
            kind = "video" if sample.frames else "image"
            blocks = 1 if sample.frames else len(sample.images)
            block = [
                self.ids["<|media_start|>"],
                *self.text(kind),
                self.ids["<|media_content|>"],
                self.ids["<|media_pad|>"],
                self.ids["<|media_end|>"],
            ]
            media = block * blocks
        for i, image in enumerate(sample.frames or sample.images):
            arr, grid = preprocess_image(image, self.cfg)
            patches.append(arr)
            grids.append(grid)
            n = (grid[0] // self.cfg.merge_kernel_size[0]) * (
                grid[1] // self.cfg.merge_kernel_size[1]
            )
            if not expand:
                continue
            if sample.frames:
                stamp = format_timestamp(i / sample.fps)
                media += self.tok.encode(stamp, add_special_tokens=False)
            media += self.image_block(n)
        question = self.text(sample.question)
        ids += question + media if text_first else media + question
        ids += [end] + self._turn_head("assistant")
        target = self.text(target_text(sample, thinking=thinking)) + [end]
        mask = [True] * len(target)
        starts = [] if thinking else [0]
        for asked, answer in follow_ups:  # later turns of the same conversation
            turn = self._turn_head("user") + self.text(asked) + [end]
            turn += self._turn_head("assistant")
            reply = self.text(answer) + [end]
            starts.append(len(target) + len(turn))
            target += turn + reply
            mask += [False] * len(turn) + [True] * len(reply)
        pixel_values = (
            np.concatenate(patches) if patches else np.zeros((0, 3, 14, 14), dtype=np.float32)
        )
        return Encoded(
            ids,
            target,
            pixel_values,
            grids,
            target_mask=None if not follow_ups else mask,
            answer_starts=starts,
        )

    def answer_from(self, generated: list[int]) -> str:
        """Decoded output up to `<|im_end|>`, reasoning removed: what the API returns as content."""
        end = self.ids["<|im_end|>"]
        if end in generated:
            generated = generated[: generated.index(end)]
        text = str(self.tok.decode(generated, skip_special_tokens=True))
        if THINK_END in text:
            text = text[text.index(THINK_END) + len(THINK_END) :]
        return text.strip()
