"""Bytes -> sampled video frames for Kimi-VL, with a frame count and a token budget.

Kimi-VL takes a video as its frames, each an ordinary image block (docs/model.md#video). Pipeline:
probe the container with PyAV -> choose timestamps uniformly in time at `fps`, at most
`max_frames` -> decode once, front to back, keeping the first frame at or after each
timestamp -> shrink every frame (PIL bicubic) until frames x tokens-per-frame fits
`max_tokens` -> RGB uint8 array [T, H, W, 3] plus the timestamps in seconds.
Decoding is blocking: call `decode_video` in a worker thread (`load_video` does).
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from server.errors import InvalidRequest
from server.media.fetch import MediaLimits, fetch_media
from server.metrics import MEDIA_DECODE_SECONDS
from server.model.image_processing import ImageProcessorConfig, num_image_tokens

# Decoding stops after this many frames whatever the container claims (a corrupt or hostile
# file can declare anything).
MAX_DECODED_FRAMES = 200_000


class InvalidVideo(InvalidRequest):
    code = "invalid_video"


class VideoTooLong(InvalidRequest):
    code = "video_too_long"


@dataclass(frozen=True)
class VideoOptions:
    """Per-request sampling, already clamped to the server's caps."""

    fps: float = 1.0
    max_frames: int = 64
    max_tokens: int = 16384
    timestamps: bool = True


@dataclass(frozen=True)
class DecodedVideo:
    frames: np.ndarray  # [T, H, W, 3] uint8, every frame the same size
    timestamps: list[float]  # seconds, one per frame
    duration: float
    tokens_per_frame: int

    @property
    def num_tokens(self) -> int:
        return len(self.timestamps) * self.tokens_per_frame


def sample_times(duration: float, fps: float, max_frames: int) -> list[float]:
    """Uniform in time: every 1/fps seconds from 0, or max_frames evenly spread if that is fewer."""
    if duration <= 0:
        return [0.0]
    n = max(1, math.ceil(duration * fps - 1e-9))
    if n <= max_frames:
        return [i / fps for i in range(n)]
    return [duration * (i + 0.5) / max_frames for i in range(max_frames)]


def fit_frame_size(
    width: int, height: int, frames: int, max_tokens: int, cfg: ImageProcessorConfig
) -> tuple[int, int]:
    """Largest size with the frame's aspect ratio (never upscaled) such that frames*tokens <= max_tokens."""
    budget = max(1, max_tokens // frames)
    if num_image_tokens(width, height, cfg) <= budget:
        return width, height
    lo, hi = 0.0, 1.0  # scale factor: binary search on the (monotone) token count
    for _ in range(30):
        mid = (lo + hi) / 2
        w, h = max(1, int(width * mid)), max(1, int(height * mid))
        if num_image_tokens(w, h, cfg) <= budget:
            lo = mid
        else:
            hi = mid
    return max(1, int(width * lo)), max(1, int(height * lo))


def _open(data: bytes):  # type: ignore[no-untyped-def]
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise InvalidVideo(
            "The media is not a video in a supported container (MP4, WebM, GIF, ...)."
        ) from exc
    if not container.streams.video:
        container.close()
        raise InvalidVideo("The media has no video stream.")
    return container


def _duration(container, stream) -> float:  # type: ignore[no-untyped-def]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # microseconds (av.time_base)
    return 0.0


def decode_video(
    data: bytes,
    *,
    options: VideoOptions,
    cfg: ImageProcessorConfig,
    max_pixels: int,
    max_duration_s: float,
) -> DecodedVideo:
    import av

    started = time.perf_counter()
    container = _open(data)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if stream.width * stream.height > max_pixels:
            raise InvalidVideo(
                f"Video frames of {stream.width}x{stream.height} exceed the pixel cap ({max_pixels})."
            )
        duration = _duration(container, stream)
        if duration > max_duration_s:
            raise VideoTooLong(
                f"The video lasts {duration:.0f} s; this server accepts at most {max_duration_s:.0f} s."
            )
        # A frame costs at least one token, so a budget below max_frames also caps the count.
        max_frames = max(1, min(options.max_frames, options.max_tokens))
        targets = sample_times(duration, options.fps, max_frames)
        picked: list[tuple[float, Image.Image]] = []
        last: tuple[float, av.VideoFrame] | None = None
        decoded = 0
        next_target = 0
        try:
            for frame in container.decode(stream):
                decoded += 1
                if decoded > MAX_DECODED_FRAMES:
                    raise VideoTooLong("The video has too many frames.")
                t = (
                    float(frame.time)
                    if frame.time is not None
                    else decoded / max(options.fps, 1e-6)
                )
                last = (t, frame)
                if t + 1e-6 >= targets[next_target]:
                    # Each decoded frame is taken once: asking for more frames per second than
                    # the video has yields its frames, not copies of them.
                    picked.append((t, frame.to_image()))
                    while next_target < len(targets) and t + 1e-6 >= targets[next_target]:
                        next_target += 1
                if next_target == len(targets):
                    break
        except av.error.FFmpegError as exc:
            if not picked and last is None:
                raise InvalidVideo("The video could not be decoded.") from exc
            # A truncated tail: keep what decoded cleanly.
        if not picked and last is not None:
            picked.append((last[0], last[1].to_image()))
        if not picked:
            raise InvalidVideo("The video has no decodable frames.")
    finally:
        container.close()

    width, height = picked[0][1].size
    w, h = fit_frame_size(width, height, len(picked), options.max_tokens, cfg)
    frames = np.stack(
        [
            np.asarray(
                (im if im.size == (w, h) else im.resize((w, h), Image.Resampling.BICUBIC)).convert(
                    "RGB"
                )
            )
            for _, im in picked
        ]
    )
    MEDIA_DECODE_SECONDS.labels(kind="video").observe(time.perf_counter() - started)
    return DecodedVideo(
        frames=frames,
        timestamps=[t for t, _ in picked],
        duration=duration,
        tokens_per_frame=num_image_tokens(w, h, cfg),
    )


async def load_video(
    url: str,
    *,
    limits: MediaLimits,
    options: VideoOptions,
    cfg: ImageProcessorConfig,
    max_duration_s: float,
) -> DecodedVideo:
    """Fetch (same safety rules as images) and decode off the event loop."""
    data = await fetch_media(url, limits=limits)
    return await asyncio.to_thread(
        decode_video,
        data,
        options=options,
        cfg=cfg,
        max_pixels=limits.max_image_pixels,
        max_duration_s=max_duration_s,
    )
