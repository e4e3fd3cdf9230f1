"""Demo clips as MP4 (H.264, yuv420p) and back, with PyAV.

The demo preset samples videos at up to 30 frames per second, each decoded frame at most once,
so every frame of a clip at 30 fps or less reaches the model, stamped with its time as in
training.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

FPS = 1


def encode_mp4(frames: list[Image.Image], fps: int = FPS) -> bytes:
    """Frames of one (even) size -> MP4 bytes."""
    import av

    w, h = frames[0].size
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def decode_mp4(data: bytes) -> list[Image.Image]:
    """Every frame of an MP4, as RGB images."""
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        return [frame.to_image().convert("RGB") for frame in container.decode(video=0)]
