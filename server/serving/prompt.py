"""Chat messages -> Kimi-VL prompt token ids, following the chat template (docs/model.md#chat-template).

Built structurally rather than by rendering a string and tokenizing it: role and media tokens
are appended by id, and message text goes through `encode_text`, which never turns
special-token strings into special ids — so a user who types `<|im_end|>` cannot forge a turn.
Adjacent text (e.g. two text parts of one message) is joined before encoding, because the
template concatenates parts with nothing in between and BPE merges across the join. For text
without special-token strings the ids equal tokenizing the template's rendering
(tests/serving/test_prompt.py proves it against the checkpoint's jinja template).

Earlier assistant turns lose their ◁think▷ reasoning (Moonshot's demo does the same); each image
part becomes `<|media_start|>image<|media_content|><|media_pad|><|media_end|>`, whose single
pad vLLM's processor expands to the image's token count; each video part becomes the same block
with `video`, which the processor replaces by its frames (server/serving/videos.py counts them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from server.engine.contract import Tokenizer
from server.protocol.chat import ChatMessage
from server.serving.reasoning import strip_reasoning

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant"
IMAGE_MARKER_TEXT = "image"  # the plain text between <|media_start|> and <|media_content|>
VIDEO_MARKER_TEXT = "video"


@dataclass(frozen=True, slots=True)
class SpecialIds:
    """Ids of the Kimi-VL template's special tokens, looked up in the served tokenizer."""

    im_system: int
    im_user: int
    im_assistant: int
    im_middle: int
    im_end: int
    media_start: int
    media_content: int
    media_end: int
    media_pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> SpecialIds:
        names = {
            "im_system": "<|im_system|>",
            "im_user": "<|im_user|>",
            "im_assistant": "<|im_assistant|>",
            "im_middle": "<|im_middle|>",
            "im_end": "<|im_end|>",
            "media_start": "<|media_start|>",
            "media_content": "<|media_content|>",
            "media_end": "<|media_end|>",
            "media_pad": "<|media_pad|>",
        }
        ids = {field: tokenizer.convert_tokens_to_ids(token) for field, token in names.items()}
        found = {field: i for field, i in ids.items() if isinstance(i, int)}
        if len(found) != len(ids) or len(set(found.values())) != len(found):
            raise ValueError("the tokenizer lacks some Kimi-VL special tokens")
        return cls(**found)

    def role(self, role: str) -> int:
        return {"system": self.im_system, "user": self.im_user, "assistant": self.im_assistant}[
            role
        ]


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image part of the request, in prompt order, with its position for error messages."""

    message_index: int
    part_index: int
    url: str
    detail: Literal["auto", "low", "high"]

    @property
    def param(self) -> str:
        return f"messages[{self.message_index}].content[{self.part_index}].image_url"


@dataclass(frozen=True, slots=True)
class VideoRef:
    """A video part of the request, in prompt order."""

    message_index: int
    part_index: int
    url: str

    @property
    def param(self) -> str:
        return f"messages[{self.message_index}].content[{self.part_index}].video_url"


@dataclass(slots=True)
class RenderedPrompt:
    token_ids: list[int]
    images: list[ImageRef] = field(default_factory=list)
    videos: list[VideoRef] = field(default_factory=list)


class _IdBuilder:
    """Appends special ids directly and buffers text until the next special id."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._text: list[str] = []
        self.ids: list[int] = []

    def text(self, text: str) -> None:
        self._text.append(text)

    def special(self, token_id: int) -> None:
        self.flush()
        self.ids.append(token_id)

    def flush(self) -> None:
        joined = "".join(self._text)
        self._text.clear()
        if joined:
            self.ids.extend(self._tokenizer.encode_text(joined))


def template_role(message: ChatMessage) -> str:
    """OpenAI's `developer` role is the newer name of `system`."""
    return "system" if message.role == "developer" else message.role


def render_prompt(
    messages: Sequence[ChatMessage],
    tokenizer: Tokenizer,
    specials: SpecialIds,
    *,
    add_generation_prompt: bool = True,
) -> RenderedPrompt:
    """Token ids of the conversation plus the image and video parts behind its media blocks."""
    out = _IdBuilder(tokenizer)
    images: list[ImageRef] = []
    videos: list[VideoRef] = []
    if not messages or template_role(messages[0]) != "system":
        _turn(out, specials, "system", DEFAULT_SYSTEM_PROMPT)
    for m, message in enumerate(messages):
        role = template_role(message)
        out.special(specials.role(role))
        out.text(role)
        out.special(specials.im_middle)
        if role == "assistant":
            out.text(strip_reasoning(message.text))
        for p, part in enumerate(message.content if role != "assistant" else ()):
            if part.type == "text":
                out.text(part.text or "")
            elif part.type == "image_url" and part.image_url is not None:
                images.append(ImageRef(m, p, part.image_url.url, part.image_url.detail))
                _media_block(out, specials, IMAGE_MARKER_TEXT)
            elif part.type == "video_url" and part.video_url is not None:
                videos.append(VideoRef(m, p, part.video_url.url))
                _media_block(out, specials, VIDEO_MARKER_TEXT)
        out.special(specials.im_end)
    if add_generation_prompt:
        out.special(specials.im_assistant)
        out.text("assistant")
        out.special(specials.im_middle)
    out.flush()
    return RenderedPrompt(token_ids=out.ids, images=images, videos=videos)


def _media_block(out: _IdBuilder, specials: SpecialIds, marker: str) -> None:
    out.special(specials.media_start)
    out.text(marker)
    out.special(specials.media_content)
    out.special(specials.media_pad)
    out.special(specials.media_end)


def _turn(out: _IdBuilder, specials: SpecialIds, role: str, text: str) -> None:
    out.special(specials.role(role))
    out.text(role)
    out.special(specials.im_middle)
    out.text(text)
    out.special(specials.im_end)
