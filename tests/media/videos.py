"""Real encoded test videos written with PyAV (MP4/H.264, WebM/VP8 and VP9, GIF)."""

from __future__ import annotations

import io

import numpy as np


def frame_pattern(i: int, w: int, h: int) -> np.ndarray:
    """A moving bar whose position encodes the frame index (survives lossy codecs)."""
    img = np.full((h, w, 3), 30, dtype=np.uint8)
    x = (i * 7) % max(w - 8, 1)
    img[:, x : x + 8] = (230, 200, 40)
    return img


def encode_video(
    container: str, codec: str, *, seconds: float, fps: int = 10, size: tuple[int, int] = (96, 64)
) -> bytes:
    import av

    w, h = size
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        # `codec` is a plain str, so PyAV's stubs can only say "some stream"; every codec
        # this helper is called with is a video codec.
        assert isinstance(stream, av.VideoStream), type(stream)
        stream.width, stream.height = w, h
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, w, h), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def mp4(seconds: float = 3.0, **kw) -> bytes:  # type: ignore[no-untyped-def]
    return encode_video("mp4", "libx264", seconds=seconds, **kw)


def webm(seconds: float = 3.0, codec: str = "libvpx", **kw) -> bytes:  # type: ignore[no-untyped-def]
    return encode_video("webm", codec, seconds=seconds, **kw)


def gif(seconds: float = 2.0, **kw) -> bytes:  # type: ignore[no-untyped-def]
    return encode_video("gif", "gif", seconds=seconds, **kw)
