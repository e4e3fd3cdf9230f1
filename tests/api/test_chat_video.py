"""Video parts in the front end over the stand-in engine: what the engine receives, the report
headers on JSON and SSE responses, option caps and the per-request video limit."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from tests.api.conftest import MODEL, png_data_url
from tests.media import videos

pytestmark = pytest.mark.asyncio

URL = "/v1/chat/completions"
MP4 = "data:video/mp4;base64," + base64.b64encode(videos.mp4(seconds=3.0)).decode()
GIF = "data:image/gif;base64," + base64.b64encode(videos.gif(seconds=2.0)).decode()


def _body(*urls: str, **fields: Any) -> dict[str, Any]:
    parts = [{"type": "video_url", "video_url": {"url": url}} for url in urls]
    parts.append({"type": "text", "text": "What happens?"})
    return {"model": MODEL, "messages": [{"role": "user", "content": parts}], **fields}


async def test_engine_gets_frames_and_timestamps(make_client: Any) -> None:
    client, engine = await make_client()
    image = {"type": "image_url", "image_url": {"url": png_data_url(30, 20)}}
    body = _body(MP4, GIF, video={"fps": 2.0})
    body["messages"][0]["content"].insert(1, image)
    response = await client.post(URL, json=body)
    assert response.status_code == 200, response.text
    media = engine.requests[-1].multi_modal_data
    assert media is not None and len(media["image"]) == 1
    (mp4_frames, mp4_meta), (gif_frames, gif_meta) = media["video"]
    assert isinstance(mp4_frames, np.ndarray) and mp4_frames.dtype == np.uint8
    assert mp4_frames.shape == (6, 64, 96, 3) and gif_frames.shape[0] == 4
    assert mp4_meta == {"timestamps": pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])}
    assert response.headers["X-Video-Frames"] == "10"
    assert int(response.headers["X-Video-Tokens"]) > 10 * 12


async def test_timestamps_off_and_streaming_headers(make_client: Any) -> None:
    client, engine = await make_client()
    body = _body(MP4, video={"timestamps": False}, stream=True)
    async with client.stream("POST", URL, json=body) as response:
        assert response.status_code == 200
        assert response.headers["X-Video-Frames"] == "3"
        assert response.headers["content-type"].startswith("text/event-stream")
        await response.aread()
    media = engine.requests[-1].multi_modal_data
    assert media is not None and media["video"][0][1] == {"timestamps": None}


async def test_text_only_has_no_video_headers(make_client: Any) -> None:
    client, _ = await make_client()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post(URL, json=body)
    assert response.status_code == 200 and "X-Video-Frames" not in response.headers


@pytest.mark.parametrize(
    ("settings", "fields", "code", "param"),
    [
        ({}, {"video": {"max_tokens": 20_000}}, "invalid_value", "video.max_tokens"),
        (
            {"max_video_frames": 8},
            {"video": {"max_frames": 9}},
            "invalid_value",
            "video.max_frames",
        ),
        ({"limit_videos_per_request": 0}, {}, "too_many_videos", "messages"),
        ({"max_video_seconds": 2}, {}, "video_too_long", "messages[0].content[0].video_url"),
    ],
)
async def test_limits(
    make_client: Any, settings: dict[str, Any], fields: dict[str, Any], code: str, param: str
) -> None:
    client, engine = await make_client(settings=settings)
    response = await client.post(URL, json=_body(MP4, **fields))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert engine.requests == []


async def test_bad_video_url_names_its_part(make_client: Any) -> None:
    client, _ = await make_client()
    response = await client.post(URL, json=_body(MP4, "data:video/mp4;base64,"))
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (
        "invalid_video_url",
        "messages[0].content[1].video_url",
    )
    response = await client.post(URL, json=_body("data:video/mp4;base64,AAAA"))
    assert response.json()["error"]["code"] == "invalid_video"
