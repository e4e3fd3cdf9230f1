"""Split Kimi-VL Thinking output `◁think▷ reasoning ◁/think▷ answer` into reasoning and content.

The markers are several BPE tokens each (docs/model.md#thinking-markers), so this works on decoded text. Rules,
identical for the whole-text and the streaming API (streamed deltas concatenate to exactly the
whole-text result, whatever the chunking):

- Opening marker first (after optional whitespace): reasoning runs up to the first end marker.
  No end marker ever -> everything after the opener is (unfinished) reasoning, content "".
- No opening marker but an end marker: the text before it is reasoning (the Thinking models
  sometimes omit the opener). Streaming must hold such text back until it knows.
- No markers at all: everything is content, verbatim; reasoning is None.
- Reasoning is stripped of surrounding whitespace; content loses the whitespace right after the
  end marker (as the official recipe strips it), nothing else.
"""

from __future__ import annotations

THINK_START = "◁think▷"
THINK_END = "◁/think▷"


def _markers(text: str) -> tuple[int, int]:
    """(offset where the reasoning text starts, offset of the end marker or -1)."""
    stripped = text.lstrip()
    opened = stripped.startswith(THINK_START)
    start = len(text) - len(stripped) + len(THINK_START) if opened else 0
    return start, text.find(THINK_END, start)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """Whole-output split: (reasoning or None when there are no markers, content)."""
    start, end = _markers(text)
    if end >= 0:
        return text[start:end].strip(), text[end + len(THINK_END) :].lstrip()
    if start:
        return text[start:].strip(), ""
    return None, text


def reasoning_end(text: str) -> int:
    """Number of leading characters of `text` in the reasoning section, markers included."""
    start, end = _markers(text)
    if end >= 0:
        return end + len(THINK_END)
    return len(text) if start else 0


def strip_reasoning(text: str) -> str:
    """An earlier assistant turn as it goes back into the prompt: the answer only.

    Keeps the text after the last end marker (what Moonshot's demo does); a turn that is all
    unfinished reasoning contributes nothing.
    """
    end = text.rfind(THINK_END)
    if end >= 0:
        return text[end + len(THINK_END) :].lstrip()
    if text.lstrip().startswith(THINK_START):
        return ""
    return text


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest proper prefix of `marker` that `text` ends with."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


class ReasoningSplitter:
    """Incremental split for streaming: feed text deltas, get (reasoning, content) deltas."""

    _PRELUDE = "prelude"  # only whitespace or part of an opener so far
    _IMPLICIT = "implicit"  # no opener: held back until an end marker or the end decides
    _REASONING = "reasoning"  # after the opener
    _CONTENT = "content"  # after the end marker (or decided: no markers)

    def __init__(self) -> None:
        self._state = self._PRELUDE
        self._pending = ""  # text received but not yet emitted
        self._strip_leading = False  # drop whitespace at the start of the current section
        self._scanned = 0  # implicit state: prefix of _pending already searched for the end

    def feed(self, delta: str) -> tuple[str, str]:
        """Return (reasoning_delta, content_delta) that are now certain; either may be ""."""
        self._pending += delta
        reasoning = content = ""
        if self._state == self._PRELUDE:
            self._leave_prelude()
        if self._state == self._IMPLICIT:
            reasoning += self._implicit()
        if self._state == self._REASONING:
            reasoning += self._reasoning()
        if self._state == self._CONTENT:
            content += self._content()
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """Flush what was held back once the output is complete."""
        pending, self._pending = self._pending, ""
        if self._state in (self._PRELUDE, self._IMPLICIT):
            self._state = self._CONTENT  # never saw the markers: it was all content
            return "", pending
        if self._state == self._REASONING:  # unfinished thinking
            self._state = self._CONTENT
            return (pending.lstrip() if self._strip_leading else pending).rstrip(), ""
        return "", ""  # content is emitted as it arrives; nothing is held in this state

    @property
    def in_reasoning(self) -> bool:
        """True while the output is known to be inside the reasoning section."""
        return self._state == self._REASONING

    def _leave_prelude(self) -> None:
        head = self._pending.lstrip()
        if head.startswith(THINK_START):
            self._state = self._REASONING
            self._pending = head[len(THINK_START) :]
            self._strip_leading = True
        elif head and not THINK_START.startswith(head):
            self._state = self._IMPLICIT  # keep the leading whitespace: it may be content

    def _implicit(self) -> str:
        end = self._pending.find(THINK_END, self._scanned)
        if end < 0:
            # Resume the next search where a marker could still start.
            self._scanned = max(0, len(self._pending) - len(THINK_END) + 1)
            return ""
        reasoning = self._pending[:end].strip()
        self._pending = self._pending[end + len(THINK_END) :]
        self._state, self._strip_leading = self._CONTENT, True
        return reasoning

    def _reasoning(self) -> str:
        if self._strip_leading:
            self._pending = self._pending.lstrip()
            self._strip_leading = not self._pending
        end = self._pending.find(THINK_END)
        if end >= 0:
            reasoning = self._pending[:end].rstrip()
            self._pending = self._pending[end + len(THINK_END) :]
            self._state, self._strip_leading = self._CONTENT, True
            return reasoning
        # Hold back a possible start of the end marker, and whitespace that may turn out to
        # be trailing (reasoning is stripped).
        held = _partial_suffix(self._pending, THINK_END)
        safe = self._pending[: len(self._pending) - held]
        emit = safe.rstrip()
        self._pending = self._pending[len(emit) :]
        return emit

    def _content(self) -> str:
        if self._strip_leading:
            self._pending = self._pending.lstrip()
            self._strip_leading = not self._pending
        content, self._pending = self._pending, ""
        return content
