"""Video through our processor and model: a video is its frames as image blocks, in order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.model.image_processing import ImageProcessorConfig, num_image_tokens
from server.model.processing import format_timestamp

pytestmark = pytest.mark.slow


def test_timestamp_format() -> None:
    assert [format_timestamp(s) for s in (0, 1.9, 62, 3599, 3600, 7384)] == [
        "00:00", "00:01", "01:02", "59:59", "1:00:00", "2:03:04",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("video", "frames"),
    [("video", "frames"), ("video_ts", "frames_ts"), ("image_then_video", "image_then_frames")],
)
def test_video_equals_its_frames_as_images(
    run_generate, video_cases: Path, video: str, frames: str
) -> None:
    out = run_generate("ours", cases=video_cases)["cases"]
    assert out[video]["num_prompt_tokens"] == out[frames]["num_prompt_tokens"]
    assert out[video]["token_ids"] == out[frames]["token_ids"]


def test_video_prompt_length(run_generate, video_cases: Path) -> None:
    """3 frames of 120x90 -> 3 image blocks of gh*gw/4 tokens; timestamps add their text tokens."""
    per_frame = num_image_tokens(120, 90, ImageProcessorConfig())
    out = run_generate("ours", cases=video_cases)["cases"]
    cases = {c["name"]: c for c in json.loads(video_cases.read_text())}
    block = len(cases["frames"]["prompt_token_ids"]) - len(
        cases["video"]["prompt_token_ids"]
    )  # 2 extra blocks
    assert out["video"]["num_prompt_tokens"] == len(
        cases["video"]["prompt_token_ids"]
    ) + block + 3 * (per_frame - 1)
    assert out["video_ts"]["num_prompt_tokens"] > out["video"]["num_prompt_tokens"]
