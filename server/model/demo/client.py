"""A demo question as a client sends it: chat messages with the media first (images as PNG data
URLs, a video as an H.264 MP4 data URL at the clip's frame rate, which the demo preset samples
frame for frame), then the question text. Used by the accuracy benchmark and the tests."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from server.model.demo.tasks import Sample
from server.model.demo.video import encode_mp4


def png_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def mp4_url(frames: list[Image.Image], fps: int = 1) -> str:
    return "data:video/mp4;base64," + base64.b64encode(encode_mp4(frames, fps)).decode("ascii")


def sample_messages(sample: Sample) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = (
        [{"type": "video_url", "video_url": {"url": mp4_url(sample.frames, sample.fps)}}]
        if sample.frames
        else [{"type": "image_url", "image_url": {"url": png_url(im)}} for im in sample.images]
    )
    parts.append({"type": "text", "text": sample.question})
    return [{"role": "user", "content": parts}]
