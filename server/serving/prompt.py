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
with `video`, which the processor replaces by its frames (server/serving/videos.py counts them);
each page of a document part becomes `Page N:` and an image block (server/serving/documents.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from server.engine.contract import Tokenizer
from server.errors import InvalidRequest
from server.protocol.chat import ChatMessage
from server.serving.reasoning import strip_reasoning
from server.serving.tools import tool_call_text

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


@dataclass(frozen=True, slots=True)
class PageRef:
    """The image block of one page of a document part (its `index`-th page used)."""

    message_index: int
    part_index: int
    index: int

    @property
    def param(self) -> str:
        return f"messages[{self.message_index}].content[{self.part_index}].file"


@dataclass(slots=True)
class RenderedPrompt:
    token_ids: list[int]
    images: list[ImageRef | PageRef] = field(default_factory=list)  # image blocks, in order
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

    def text_alone(self, text: str) -> None:
        """`text` encoded on its own (no BPE merge with its neighbours): a known token count."""
        self.flush()
        self.ids.extend(self._tokenizer.encode_text(text))

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
    continue_final_message: bool = False,
    tools_text: str | None = None,
    documents: Mapping[tuple[int, int], Sequence[int]] | None = None,
) -> RenderedPrompt:
    """Token ids of the conversation plus the image and video parts behind its media blocks.

    `continue_final_message`: the last (assistant) turn is left open, verbatim, for the model to
    continue. `tools_text`: an extra system turn after the first one, describing a forced call.
    `documents`: per (message, part) index of a `file` part, the numbers of the pages to show.
    A `tool` turn gets no role token, only its role name, as the template renders any role it
    does not know; an assistant turn's `tool_calls` follow its text as JSON, one per line.
    """
    out = _IdBuilder(tokenizer)
    images: list[ImageRef | PageRef] = []
    videos: list[VideoRef] = []
    first_is_system = bool(messages) and template_role(messages[0]) == "system"
    if not first_is_system:
        _turn(out, specials, "system", DEFAULT_SYSTEM_PROMPT)
    for m, message in enumerate(messages):
        if tools_text is not None and m == int(first_is_system):
            _turn(out, specials, "system", tools_text)
        role = template_role(message)
        open_turn = continue_final_message and m == len(messages) - 1
        if role in ("system", "user", "assistant"):
            out.special(specials.role(role))
        out.text(role)
        out.special(specials.im_middle)
        if role == "assistant":
            out.text(message.text if open_turn else strip_reasoning(message.text))
            calls = [tool_call_text(call) for call in message.tool_calls or ()]
            out.text(("\n" if message.text and calls else "") + "\n".join(calls))
        for p, part in enumerate(message.content if role != "assistant" else ()):
            if part.type == "text":
                out.text(part.text or "")
            elif part.type == "image_url" and part.image_url is not None:
                images.append(ImageRef(m, p, part.image_url.url, part.image_url.detail))
                _media_block(out, specials, IMAGE_MARKER_TEXT)
            elif part.type == "video_url" and part.video_url is not None:
                videos.append(VideoRef(m, p, part.video_url.url))
                _media_block(out, specials, VIDEO_MARKER_TEXT)
            elif part.type == "file":
                for i, number in enumerate((documents or {}).get((m, p), ())):
                    out.text_alone(page_marker(number))
                    images.append(PageRef(m, p, i))
                    _media_block(out, specials, IMAGE_MARKER_TEXT)
        if not open_turn:
            out.special(specials.im_end)
    if tools_text is not None and len(messages) == int(first_is_system):
        _turn(out, specials, "system", tools_text)
    if add_generation_prompt:
        out.special(specials.im_assistant)
        out.text("assistant")
        out.special(specials.im_middle)
    out.flush()
    return RenderedPrompt(token_ids=out.ids, images=images, videos=videos)


def page_marker(number: int) -> str:
    """The text before a document page's image block."""
    return f"Page {number}:"


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


def truncate_prompt(
    token_ids: list[int],
    num_prompt_tokens: int,
    keep: int | None,
    *,
    max_model_len: int,
    media_start: int,
) -> tuple[list[int], int]:
    """vLLM's `truncate_prompt_tokens`: keep the last `keep` prompt tokens (-1: the context
    length). `num_prompt_tokens` counts media expanded; only text before the first media block
    may be dropped, so a cut that would reach into an image or video is a 400."""
    if keep is None:
        return token_ids, num_prompt_tokens
    if keep == -1:
        keep = max_model_len
    if keep > max_model_len:
        raise InvalidRequest(
            f"'truncate_prompt_tokens' ({keep}) exceeds the context length ({max_model_len}).",
            param="truncate_prompt_tokens",
        )
    drop = num_prompt_tokens - keep
    if drop <= 0:
        return token_ids, num_prompt_tokens
    first_media = token_ids.index(media_start) if media_start in token_ids else len(token_ids)
    if drop > first_media:
        raise InvalidRequest(
            f"Keeping the last {keep} prompt tokens would cut into an image or video; raise "
            "'truncate_prompt_tokens' or shorten the text before the first media part.",
            param="truncate_prompt_tokens",
        )
    return token_ids[drop:], keep
