"""Video parts through the real server: MP4/WebM/GIF by data:, http and file URLs; prompt_tokens
equal to the text-only prompt plus the exact expansion (frames' image blocks + timestamps);
frame counts following fps/max_frames/max_tokens; the timestamp switch; refusals."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.media.video import DecodedVideo, VideoOptions, decode_video
from server.model.image_processing import ImageProcessorConfig
from server.model.media_format import format_timestamp
from server.model.tokenizer import TikTokenTokenizer
from server.serving.videos import expanded_tokens
from server.settings import TINY_MODEL_NAME
from tests.e2e.conftest import (
    API_KEY,
    MAX_IMAGE_PIXELS,
    MAX_VIDEO_SECONDS,
    MediaServer,
    RunningServer,
    png,
    video,
)

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MIME = {"mp4": "video/mp4", "webm": "video/webm", "gif": "image/gif", "large.mp4": "video/mp4"}


def data_url(kind: str) -> str:
    return f"data:{MIME.get(kind, 'video/mp4')};base64," + base64.b64encode(video(kind)).decode()


def video_part(url: str) -> dict[str, Any]:
    return {"type": "video_url", "video_url": {"url": url}}


def chat(server: RunningServer, parts: list[dict[str, Any]], **fields: Any) -> httpx.Response:
    body = {
        "model": TINY_MODEL_NAME,
        "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "?"}]}],
        "max_tokens": 1,
        **fields,
    }
    return httpx.post(server.v1 + "/chat/completions", json=body, headers=AUTH, timeout=60)


def prompt_tokens(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return int(response.json()["usage"]["prompt_tokens"])


def local_decode(kind: str, cfg: ImageProcessorConfig, **options: Any) -> DecodedVideo:
    """The server's own sampling, run here on the same bytes: the frames it must have used."""
    return decode_video(
        video(kind),
        options=VideoOptions(**options),
        cfg=cfg,
        max_pixels=MAX_IMAGE_PIXELS,
        max_duration_s=MAX_VIDEO_SECONDS,
    )


@pytest.fixture(scope="module")
def text_only(server: RunningServer) -> int:
    return prompt_tokens(chat(server, []))


@pytest.mark.parametrize(
    ("kind", "where"),
    [("mp4", "data"), ("webm", "data"), ("gif", "data"), ("mp4", "http"), ("webm", "http"),
     ("gif", "file")],
)  # fmt: skip
def test_containers_and_sources(
    server: RunningServer,
    media_server: MediaServer,
    local_media_dir: Path,
    tokenizer: TikTokenTokenizer,
    image_cfg: ImageProcessorConfig,
    text_only: int,
    kind: str,
    where: str,
) -> None:
    url = {
        "data": lambda: data_url(kind),
        "http": lambda: media_server.url(f"/clip.{kind}"),
        "file": lambda: (local_media_dir / f"local.{kind}").as_uri(),
    }[where]()
    response = chat(server, [video_part(url)])
    expected = local_decode(kind, image_cfg)  # server defaults: 1 fps, timestamps on
    assert len(expected.timestamps) == (3 if kind != "gif" else 2)
    tokens = expanded_tokens(expected, timestamps=True, tokenizer=tokenizer)
    assert prompt_tokens(response) == text_only + tokens
    assert response.headers["X-Video-Frames"] == str(len(expected.timestamps))
    assert response.headers["X-Video-Tokens"] == str(tokens)


@pytest.mark.parametrize(
    ("options", "frames"),
    [({"fps": 2.0}, 6), ({"fps": 4.0, "max_frames": 2}, 2), ({"fps": 4.0, "max_tokens": 3}, 3)],
)
def test_frame_count_follows_the_options(
    server: RunningServer,
    tokenizer: TikTokenTokenizer,
    image_cfg: ImageProcessorConfig,
    text_only: int,
    options: dict[str, Any],
    frames: int,
) -> None:
    response = chat(server, [video_part(data_url("mp4"))], video=options)
    expected = local_decode("mp4", image_cfg, **options)
    assert len(expected.timestamps) == frames
    assert response.headers["X-Video-Frames"] == str(frames)
    tokens = expanded_tokens(expected, timestamps=True, tokenizer=tokenizer)
    assert prompt_tokens(response) == text_only + tokens
    if "max_tokens" in options:
        assert expected.num_tokens <= options["max_tokens"]


def test_timestamps_switch(
    server: RunningServer, tokenizer: TikTokenTokenizer, image_cfg: ImageProcessorConfig
) -> None:
    parts = [video_part(data_url("mp4"))]
    on = prompt_tokens(chat(server, parts, video={"fps": 2.0}))
    off = prompt_tokens(chat(server, parts, video={"fps": 2.0, "timestamps": False}))
    stamps = local_decode("mp4", image_cfg, fps=2.0).timestamps
    assert [format_timestamp(t) for t in stamps][:3] == ["00:00", "00:00", "00:01"]
    text = sum(len(tokenizer.encode(format_timestamp(t), add_special_tokens=False)) for t in stamps)
    assert on - off == text > 0


def test_video_with_images_streamed(
    server: RunningServer, tokenizer: TikTokenTokenizer, image_cfg: ImageProcessorConfig
) -> None:
    """Two videos and an image in one streamed request: headers and usage cover them all."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,"
             + base64.b64encode(png(64, 48)).decode()}}  # fmt: skip
    parts = [video_part(data_url("gif")), image, video_part(data_url("webm"))]
    body = {
        "model": TINY_MODEL_NAME,
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", server.v1 + "/chat/completions", json=body, headers=AUTH, timeout=60
    ) as response:
        assert response.status_code == 200
        frames = response.headers["X-Video-Frames"]
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    decoded = [local_decode(kind, image_cfg) for kind in ("gif", "webm")]
    assert frames == str(sum(len(v.timestamps) for v in decoded))
    assert usage["prompt_tokens"] > sum(
        expanded_tokens(v, timestamps=True, tokenizer=tokenizer) for v in decoded
    )


REFUSALS: dict[str, tuple[Any, dict[str, Any], str, str | None]] = {
    "truncated mp4": ("/truncated.mp4", {}, "invalid_video", "messages[0].content[0].video_url"),
    "zero-length file": ("/empty.mp4", {}, "invalid_video", None),
    "text served as .mp4": ("/text.mp4", {}, "invalid_video", None),
    "garbage data url": ("data:video/mp4;base64," + base64.b64encode(b"\0\1" * 500).decode(), {},
                         "invalid_video", None),
    "longer than --max-video-seconds": ("long.mp4", {}, "video_too_long", None),
    "max_frames above the cap": ("mp4", {"video": {"max_frames": 65}}, "invalid_value",
                                 "video.max_frames"),
    "fps above the cap": ("mp4", {"video": {"fps": 30}}, "invalid_value", "video.fps"),
    "too many videos": (["mp4"] * 5, {}, "too_many_videos", "messages"),
    "over the context length": ("large.mp4", {"video": {"fps": 4.0}}, "context_length_exceeded",
                                None),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refusals(name: str, server: RunningServer, media_server: MediaServer) -> None:
    source, fields, code, param = REFUSALS[name]
    sources = source if isinstance(source, list) else [source]
    urls = [
        media_server.url(s) if s.startswith("/") else s if s.startswith("data:") else data_url(s)
        for s in sources
    ]
    response = chat(server, [video_part(url) for url in urls], **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "Traceback" not in response.text
    if param is not None:
        assert error["param"] == param
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200


def test_video_metrics(server: RunningServer) -> None:
    assert server.metric("kimi_vl_video_frames_per_request_count") > 0
    assert server.metric("kimi_vl_video_tokens_per_request_sum") > 0
    assert server.metric("kimi_vl_media_decode_seconds_count") > 0
