"""Video decoding and sampling on real encoded files."""

from __future__ import annotations

import numpy as np
import pytest

from server.media.video import (
    InvalidVideo,
    VideoOptions,
    VideoTooLong,
    decode_video,
    fit_frame_size,
    sample_times,
)
from server.model.image_processing import ImageProcessorConfig, num_image_tokens
from tests.media import videos

CFG = ImageProcessorConfig()


def decode(data: bytes, **opts):  # type: ignore[no-untyped-def]
    return decode_video(
        data, options=VideoOptions(**opts), cfg=CFG, max_pixels=10_000_000, max_duration_s=600
    )


def test_sample_times_uniform_and_capped() -> None:
    assert sample_times(3.0, 1.0, 64) == [0.0, 1.0, 2.0]
    assert sample_times(3.0, 2.0, 64) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert sample_times(100.0, 1.0, 4) == [12.5, 37.5, 62.5, 87.5]
    assert sample_times(0.0, 1.0, 4) == [0.0]


@pytest.mark.parametrize(
    "make",
    [videos.mp4, videos.webm, lambda: videos.webm(codec="libvpx-vp9"), videos.gif],
    ids=["mp4", "webm-vp8", "webm-vp9", "gif"],
)
def test_containers_decode_at_requested_fps(make) -> None:  # type: ignore[no-untyped-def]
    data = make()
    v = decode(data, fps=2.0)
    assert v.duration == pytest.approx(3.0 if len(v.timestamps) > 4 else 2.0, abs=0.15)
    assert len(v.timestamps) == pytest.approx(v.duration * 2, abs=1)
    assert v.frames.shape[1:] == (64, 96, 3) and v.frames.dtype.name == "uint8"
    assert v.timestamps == sorted(v.timestamps)
    # The bar moves 7 px per source frame at 10 fps: frame at t sits at x = 70 t.
    for frame, t in zip(v.frames, v.timestamps, strict=True):
        bright = (frame[:, :, 0] > 150).any(axis=0).nonzero()[0]
        assert abs(int(bright.min()) - (int(round(t * 10)) * 7) % 88) <= 3


def test_fps_above_the_videos_takes_each_frame_once() -> None:
    v = decode(videos.mp4(seconds=4.0, fps=2), fps=10.0)
    assert v.timestamps == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5], abs=0.01)
    assert len(v.frames) == 8
    assert all(not np.array_equal(a, b) for a, b in zip(v.frames, v.frames[1:], strict=False))


def test_max_frames_spreads_samples() -> None:
    v = decode(videos.mp4(seconds=4.0), fps=10.0, max_frames=4)
    assert len(v.timestamps) == 4
    assert v.timestamps[0] >= 0.4 and v.timestamps[-1] <= 3.6


def test_token_budget_shrinks_frames() -> None:
    big = videos.mp4(seconds=2.0, size=(640, 480))
    full = decode(big, fps=2.0)
    assert full.tokens_per_frame == num_image_tokens(640, 480, CFG) == 414
    small = decode(big, fps=2.0, max_tokens=400)
    assert len(small.timestamps) == 4
    assert small.num_tokens <= 400
    h, w = small.frames.shape[1:3]
    assert abs(w / h - 640 / 480) < 0.05
    assert small.tokens_per_frame == num_image_tokens(w, h, CFG)


def test_fit_frame_size_never_upscales() -> None:
    assert fit_frame_size(100, 80, 3, 10_000, CFG) == (100, 80)


def test_not_a_video() -> None:
    with pytest.raises(InvalidVideo):
        decode(b"this is a text file named clip.mp4, not a video" * 10)


def test_truncated_and_empty_videos() -> None:
    data = videos.mp4(seconds=3.0)
    with pytest.raises(InvalidVideo):
        decode(data[: len(data) // 10])
    with pytest.raises(InvalidVideo):
        decode(b"")


def test_too_long() -> None:
    with pytest.raises(VideoTooLong):
        decode_video(
            videos.mp4(seconds=3.0),
            options=VideoOptions(),
            cfg=CFG,
            max_pixels=10**7,
            max_duration_s=1.0,
        )


def test_pixel_cap() -> None:
    with pytest.raises(InvalidVideo, match="pixel cap"):
        decode_video(
            videos.mp4(seconds=1.0),
            options=VideoOptions(),
            cfg=CFG,
            max_pixels=1000,
            max_duration_s=60,
        )


def test_token_budget_below_frame_count_caps_frames() -> None:
    """Every frame costs at least one token: a budget of 3 allows at most 3 frames."""
    v = decode(videos.mp4(seconds=3.0), fps=4.0, max_tokens=3)
    assert len(v.timestamps) == 3 and v.num_tokens <= 3
