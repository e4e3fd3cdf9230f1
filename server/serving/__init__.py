"""Chat messages -> Kimi-VL prompt, and the ◁think▷ … ◁/think▷ reasoning splitter."""

from server.serving.reasoning import (
    THINK_END,
    THINK_START,
    ReasoningSplitter,
    split_reasoning,
    strip_reasoning,
)

__all__ = ["THINK_END", "THINK_START", "ReasoningSplitter", "split_reasoning", "strip_reasoning"]
