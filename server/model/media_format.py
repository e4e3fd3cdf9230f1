"""How media appear in a Kimi-VL prompt: the placeholder blocks, the per-frame timestamp text and
the per-video token cap. Plain Python (no vLLM, no torch), so the front end and the training code
share these with the vLLM processor without loading vLLM.

An image is `<|media_start|>image<|media_content|><|media_pad|><|media_end|>`; the processor
expands its one pad to gh*gw/4 pads. Kimi-VL has no video tokens: a video block becomes, per
frame, an optional `MM:SS` timestamp followed by an ordinary image block (docs/model.md).
"""

from __future__ import annotations

MEDIA_PAD = "<|media_pad|>"
IMAGE_PLACEHOLDER = "<|media_start|>image<|media_content|><|media_pad|><|media_end|>"
VIDEO_PLACEHOLDER = "<|media_start|>video<|media_content|><|media_pad|><|media_end|>"
# Upper bound on one video's LLM tokens (frames x tokens per frame); the server caps requests
# below it. vLLM sizes its encoder cache from this, so it must not be exceeded.
MAX_VIDEO_TOKENS = 32768


def format_timestamp(seconds: float) -> str:
    """`MM:SS`, or `H:MM:SS` from one hour on (the per-frame text before each frame)."""
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
        if s >= 3600
        else f"{s // 60:02d}:{s % 60:02d}"
    )
