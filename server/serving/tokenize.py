"""`/tokenize` and `/detokenize`: the token ids a request's prompt becomes, counted exactly as the
completion endpoints count `prompt_tokens` (images and video frames expanded as vLLM's processor
expands them: server/model/processing.py)."""

from __future__ import annotations

from pydantic import ValidationError

from server.errors import InvalidRequest
from server.model.media_format import format_timestamp
from server.protocol.chat import ChatCompletionRequest
from server.protocol.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from server.serving.chat import ChatPrompt, build_chat_prompt
from server.serving.context import ServingContext
from server.serving.prompt import IMAGE_MARKER_TEXT, VIDEO_MARKER_TEXT
from server.serving.tools import check_tools


class Tokenization:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        ctx = self.ctx
        ctx.check_model(request.model)
        ctx.check_engine()
        if request.prompt is not None:
            ids = ctx.tokenizer.encode(
                request.prompt, add_special_tokens=request.add_special_tokens
            )
        else:
            chat = _as_chat(request)
            check_tools(chat)
            ids = self._expand(await build_chat_prompt(ctx, chat))
        strs = None
        if request.return_token_strs:
            strs = [self._decode([i]) for i in ids]
        return TokenizeResponse(
            count=len(ids), max_model_len=ctx.model_info.max_model_len, tokens=ids, token_strs=strs
        )

    def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        ctx = self.ctx
        ctx.check_model(request.model)
        ctx.check_engine()
        bad = next((t for t in request.tokens if not 0 <= t < ctx.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(
                f"Token id {bad} is outside the vocabulary (size {ctx.vocab_size}).",
                param="tokens",
                code="invalid_value",
            )
        return DetokenizeResponse(prompt=self._decode(request.tokens))

    def _decode(self, ids: list[int]) -> str:
        text = self.ctx.tokenizer.decode(ids, skip_special_tokens=False)
        return text if isinstance(text, str) else "".join(text)

    def _expand(self, prompt: ChatPrompt) -> list[int]:
        """The prompt as the engine sees it: each image pad repeated to the image's tokens, each
        video block replaced by its frames (optional `MM:SS` text + an image block each)."""
        specials, tokenizer = self.ctx.specials, self.ctx.tokenizer
        image_marker = tokenizer.encode_text(IMAGE_MARKER_TEXT)
        video_marker = tokenizer.encode_text(VIDEO_MARKER_TEXT)
        images, videos = iter(prompt.images), iter(prompt.videos)
        ids, out, i = prompt.token_ids, [], 0
        while i < len(ids):
            token = ids[i]
            start = i + 1
            if (
                token == specials.media_start
                and ids[start : start + len(video_marker)] == video_marker
            ):
                video = next(videos)
                per_frame = video.video.tokens_per_frame
                for stamp in video.video.timestamps:
                    if video.timestamps:
                        out += tokenizer.encode(format_timestamp(stamp), add_special_tokens=False)
                    out += [specials.media_start, *image_marker, specials.media_content]
                    out += [specials.media_pad] * per_frame + [specials.media_end]
                i = start + len(video_marker) + 3  # marker, content, pad, end
                continue
            if token == specials.media_pad:
                out += [token] * next(images).num_tokens
            else:
                out.append(token)
            i += 1
        return out


def _as_chat(request: TokenizeRequest) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(request.chat_fields())
    except ValidationError as exc:  # cross-field rules of the chat request (e.g. continue)
        raise InvalidRequest(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from exc
