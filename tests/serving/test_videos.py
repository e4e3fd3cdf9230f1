"""Video options against the server's caps, and the prompt-length arithmetic of video blocks.

The reference for the arithmetic is the expansion as text — per frame, the timestamp and an
image block with the frame's pads — tokenized with special tokens recognised; tests/model proves
the processor's expansion equals exactly that.
"""

from __future__ import annotations

import dataclasses

import pytest

from server.errors import InvalidRequest, TooManyVideos
from server.media.video import DecodedVideo, VideoOptions, decode_video
from server.model.image_processing import ImageProcessorConfig
from server.model.media_format import format_timestamp
from server.model.tiny import PREPROCESSOR_CONFIG
from server.model.tokenizer import TikTokenTokenizer
from server.protocol.chat import ChatCompletionRequest
from server.protocol.chat import VideoOptions as Requested
from server.serving.prompt import SpecialIds, VideoRef, render_prompt
from server.serving.videos import VideoPolicy, expanded_tokens, video_block_tokens
from server.settings import load_settings
from tests.media import videos

CFG = ImageProcessorConfig.from_dict(dict(PREPROCESSOR_CONFIG))
POLICY = VideoPolicy.from_settings(load_settings({"model": "m"}))
IMAGE_BLOCK = "<|media_start|>image<|media_content|>{pads}<|media_end|>"
VIDEO_BLOCK = "<|media_start|>video<|media_content|><|media_pad|><|media_end|>"


def test_defaults_from_settings() -> None:
    assert POLICY.options(None) == VideoOptions(
        fps=1.0, max_frames=64, max_tokens=16384, timestamps=True
    )


def test_request_values_within_caps() -> None:
    asked = Requested(fps=4.0, max_frames=8, max_tokens=1000, timestamps=False)
    assert POLICY.options(asked) == VideoOptions(
        fps=4.0, max_frames=8, max_tokens=1000, timestamps=False
    )
    assert POLICY.options(Requested(timestamps=True)).timestamps


@pytest.mark.parametrize(
    ("asked", "param"),
    [
        (Requested(fps=4.5), "video.fps"),
        (Requested(max_frames=65), "video.max_frames"),
        (Requested(max_tokens=16385), "video.max_tokens"),
    ],
)
def test_values_above_the_caps(asked: Requested, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        POLICY.options(asked)
    assert (info.value.param, info.value.code, info.value.status_code) == (
        param,
        "invalid_value",
        400,
    )
    assert "at most" in info.value.message


def test_raised_caps_from_settings() -> None:
    policy = VideoPolicy.from_settings(
        load_settings({"model": "m", "max_video_fps": 10, "max_video_frames": 512})
    )
    assert policy.options(Requested(fps=10, max_frames=512)).max_frames == 512


def test_video_count_limit() -> None:
    refs = [VideoRef(0, i, "data:,x") for i in range(5)]
    POLICY.check_count(refs[:4])
    with pytest.raises(TooManyVideos) as info:
        POLICY.check_count(refs)
    assert info.value.code == "too_many_videos"


def _decoded(**options: object) -> DecodedVideo:
    return decode_video(
        videos.mp4(seconds=3.0, size=(200, 120)),
        options=VideoOptions(**options),  # type: ignore[arg-type]
        cfg=CFG,
        max_pixels=10**7,
        max_duration_s=60,
    )


def _expansion_text(video: DecodedVideo, timestamps: bool) -> str:
    block = IMAGE_BLOCK.format(pads="<|media_pad|>" * video.tokens_per_frame)
    return "".join((format_timestamp(t) if timestamps else "") + block for t in video.timestamps)


@pytest.mark.parametrize("timestamps", [True, False])
def test_expanded_tokens_equal_the_expansion_tokenized(
    kimi_tokenizer: TikTokenTokenizer, timestamps: bool
) -> None:
    video = _decoded(fps=2.0)
    assert len(video.timestamps) == 6 and video.tokens_per_frame > 1
    want = len(kimi_tokenizer.encode(_expansion_text(video, timestamps), add_special_tokens=False))
    assert expanded_tokens(video, timestamps=timestamps, tokenizer=kimi_tokenizer) == want


def test_hour_long_timestamps(kimi_tokenizer: TikTokenTokenizer) -> None:
    video = dataclasses.replace(_decoded(fps=1.0), timestamps=[59.0, 3599.0, 3600.0])
    assert [format_timestamp(t) for t in video.timestamps] == ["00:59", "59:59", "1:00:00"]
    want = len(kimi_tokenizer.encode(_expansion_text(video, True), add_special_tokens=False))
    assert expanded_tokens(video, timestamps=True, tokenizer=kimi_tokenizer) == want


def test_prompt_length_with_images_and_videos(kimi_tokenizer: TikTokenTokenizer) -> None:
    """Rendered ids - each video block + its expansion == the fully expanded prompt tokenized."""
    specials = SpecialIds.from_tokenizer(kimi_tokenizer)
    video = _decoded(fps=1.0)
    raw = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}},
                {"type": "text", "text": " with"},
                {"type": "video_url", "video_url": {"url": "https://example.com/b.webm"}},
            ],
        }
    ]
    messages = ChatCompletionRequest.model_validate({"messages": raw}).messages
    rendered = render_prompt(messages, kimi_tokenizer, specials)
    assert [ref.param for ref in rendered.videos] == [
        "messages[0].content[1].video_url",
        "messages[0].content[3].video_url",
    ]
    head = "<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>"
    turn = "<|im_user|>user<|im_middle|>Compare{v} with{v}<|im_end|>"
    tail = "<|im_assistant|>assistant<|im_middle|>"
    as_rendered = head + turn.format(v=VIDEO_BLOCK) + tail
    assert rendered.token_ids == kimi_tokenizer.encode(as_rendered, add_special_tokens=False)
    expanded = head + turn.format(v=_expansion_text(video, True)) + tail
    length = len(rendered.token_ids) + 2 * (
        expanded_tokens(video, timestamps=True, tokenizer=kimi_tokenizer)
        - video_block_tokens(kimi_tokenizer)
    )
    assert length == len(kimi_tokenizer.encode(expanded, add_special_tokens=False))
