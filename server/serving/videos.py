"""The videos of one chat request: sampling options within the server's caps, load, token count.

A video part renders as one block `<|media_start|>video<|media_content|><|media_pad|><|media_end|>`
(prompt.py). vLLM's processor (server/model/processing.py) replaces the whole block by, per
frame, the frame's timestamp text (`MM:SS`, unless timestamps are off) and an ordinary image
block holding the frame's gh*gw/4 pads. `expanded_tokens` repeats that expansion with the same
tokenizer calls, so the context-length check and `usage.prompt_tokens` agree with the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.aio import gather_or_cancel
from server.engine.contract import Tokenizer
from server.errors import APIError, InvalidImageURL, InvalidRequest, InvalidVideoURL, TooManyVideos
from server.media import MediaLimits
from server.media.video import DecodedVideo, VideoOptions, load_video
from server.model.image_processing import ImageProcessorConfig
from server.model.media_format import format_timestamp
from server.protocol.chat import VideoOptions as RequestedVideoOptions
from server.serving.prompt import IMAGE_MARKER_TEXT, VIDEO_MARKER_TEXT, VideoRef
from server.settings import Settings

# Decoding is CPU-bound (one worker thread per video): a few at a time per request.
_CONCURRENT_LOADS = 2


@dataclass(frozen=True, slots=True)
class VideoPolicy:
    """The server's video defaults and caps (Settings); turns request options into VideoOptions."""

    default_fps: float
    max_fps: float
    max_frames: int
    max_tokens: int
    max_seconds: float
    max_videos: int

    @classmethod
    def from_settings(cls, settings: Settings) -> VideoPolicy:
        return cls(
            default_fps=settings.video_fps,
            max_fps=settings.max_video_fps,
            max_frames=settings.max_video_frames,
            max_tokens=settings.max_video_tokens,
            max_seconds=settings.max_video_seconds,
            max_videos=settings.limit_videos_per_request,
        )

    def options(self, requested: RequestedVideoOptions | None) -> VideoOptions:
        """Request's `video` field -> options; a value above the server's cap is a 400."""
        asked = requested or RequestedVideoOptions()
        for name, value, cap, flag in (
            ("fps", asked.fps, self.max_fps, "--max-video-fps"),
            ("max_frames", asked.max_frames, self.max_frames, "--max-video-frames"),
            ("max_tokens", asked.max_tokens, self.max_tokens, "--max-video-tokens"),
        ):
            if value is not None and value > cap:
                raise InvalidRequest(
                    f"video.{name} is {value:g}; this server allows at most {cap:g} ({flag}).",
                    param=f"video.{name}",
                    code="invalid_value",
                )
        return VideoOptions(
            fps=asked.fps if asked.fps is not None else self.default_fps,
            max_frames=asked.max_frames or self.max_frames,
            max_tokens=asked.max_tokens or self.max_tokens,
            timestamps=asked.timestamps is not False,
        )

    def check_count(self, refs: Sequence[VideoRef]) -> None:
        if len(refs) > self.max_videos:
            raise TooManyVideos(
                f"The request has {len(refs)} videos; this server accepts at most "
                f"{self.max_videos} per request.",
                param="messages",
            )


@dataclass(frozen=True, slots=True)
class PreparedVideo:
    video: DecodedVideo
    timestamps: bool
    num_prompt_tokens: int  # what its block expands to in the engine's prompt

    @property
    def num_frames(self) -> int:
        return len(self.video.timestamps)

    def engine_item(self) -> tuple[Any, dict[str, Any]]:
        """(frames [T,H,W,3] uint8, metadata): the processor needs metadata for every video."""
        stamps = list(self.video.timestamps) if self.timestamps else None
        return self.video.frames, {"timestamps": stamps}


def image_block_overhead(tokenizer: Tokenizer) -> int:
    """Tokens of an image block besides its pads: start, `image`, content, end."""
    return len(tokenizer.encode_text(IMAGE_MARKER_TEXT)) + 3


def video_block_tokens(tokenizer: Tokenizer) -> int:
    """Tokens of the rendered video block (start, `video`, content, pad, end); all replaced."""
    return len(tokenizer.encode_text(VIDEO_MARKER_TEXT)) + 4


def expanded_tokens(video: DecodedVideo, *, timestamps: bool, tokenizer: Tokenizer) -> int:
    """Prompt tokens the processor puts in place of the video block (see the module doc)."""
    per_frame = image_block_overhead(tokenizer) + video.tokens_per_frame
    text = 0
    if timestamps:
        text = sum(
            len(tokenizer.encode(format_timestamp(t), add_special_tokens=False))
            for t in video.timestamps
        )
    return len(video.timestamps) * per_frame + text


async def prepare_videos(
    refs: Sequence[VideoRef],
    *,
    options: VideoOptions,
    limits: MediaLimits,
    cfg: ImageProcessorConfig,
    max_seconds: float,
    tokenizer: Tokenizer,
) -> list[PreparedVideo]:
    """Load and sample every video (off the event loop), in prompt order.

    `cfg` must be the model's own processor config: frame token counts must equal the engine's.
    The first failure cancels the rest and is raised with `param` naming its content part.
    """
    gate = asyncio.Semaphore(_CONCURRENT_LOADS)

    async def one(ref: VideoRef) -> PreparedVideo:
        async with gate:
            try:
                video = await load_video(
                    ref.url, limits=limits, options=options, cfg=cfg, max_duration_s=max_seconds
                )
            except InvalidImageURL as exc:  # fetch's URL errors speak of media in general
                raise InvalidVideoURL(exc.message, param=ref.param) from None
            except APIError as exc:
                raise exc.with_param(ref.param) from None
        tokens = expanded_tokens(video, timestamps=options.timestamps, tokenizer=tokenizer)
        return PreparedVideo(video=video, timestamps=options.timestamps, num_prompt_tokens=tokens)

    return await gather_or_cancel(one(ref) for ref in refs)
