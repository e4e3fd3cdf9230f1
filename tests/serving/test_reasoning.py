"""Reasoning splitter: whole-text rules, and streaming == whole-text for every chunking."""

from __future__ import annotations

import random

import pytest

from server.serving.reasoning import (
    THINK_END,
    THINK_START,
    ReasoningSplitter,
    split_reasoning,
    strip_reasoning,
)

S, E = THINK_START, THINK_END

# (text, expected reasoning, expected content)
CASES: list[tuple[str, str | None, str]] = [
    (f"{S}Let me look.\nIt is a cat.{E}\n\nA cat.", "Let me look.\nIt is a cat.", "A cat."),
    (f"  \n{S}  think  {E}  answer  ", "think", "answer  "),
    (f"{S}{E}answer", "", "answer"),
    (f"{S}still thinking when max_tokens hit", "still thinking when max_tokens hit", ""),
    (f"{S}", "", ""),
    (f"no opener, thinking{E}\nanswer", "no opener, thinking", "answer"),
    (f"{E}answer", "", "answer"),
    ("plain answer without markers", None, "plain answer without markers"),
    (
        "  leading space kept when there are no markers\n",
        None,
        "  leading space kept when there are no markers\n",
    ),
    ("", None, ""),
    ("◁thi", None, "◁thi"),  # a partial opener that never completes is content
    ("◁ not a marker ▷ text", None, "◁ not a marker ▷ text"),
    (f"{S}a ◁/thin b ◁/ c{E}d", "a ◁/thin b ◁/ c", "d"),  # partial end markers inside
    (f"{S}one{E}two{E}three", "one", f"two{E}three"),  # only the first end marker splits
    (f"{S}x{E}y{S}z", "x", f"y{S}z"),
    (f"answer first {S}then think{E}done", f"answer first {S}then think", "done"),
    (f"{S}中文推理 ◁ ▷{E}答案：猫", "中文推理 ◁ ▷", "答案：猫"),
    (f"{S}\n\n", "", ""),
    (f"{S}trailing ws   \n", "trailing ws", ""),
]


@pytest.mark.parametrize(("text", "reasoning", "content"), CASES)
def test_split_reasoning(text: str, reasoning: str | None, content: str) -> None:
    assert split_reasoning(text) == (reasoning, content)


def stream(chunks: list[str]) -> tuple[str, str]:
    splitter = ReasoningSplitter()
    reasoning = content = ""
    for chunk in chunks:
        r, c = splitter.feed(chunk)
        reasoning, content = reasoning + r, content + c
    r, c = splitter.finish()
    return reasoning + r, content + c


def expected(text: str) -> tuple[str, str]:
    reasoning, content = split_reasoning(text)
    return reasoning or "", content


@pytest.mark.parametrize("text", [case[0] for case in CASES])
def test_streaming_matches_whole_text_for_every_chunking(text: str) -> None:
    want = expected(text)
    assert stream([text]) == want
    assert stream(list(text)) == want  # one character at a time
    for cut in range(len(text) + 1):  # every single boundary, markers split at every position
        assert stream([text[:cut], text[cut:]]) == want
    rng = random.Random(len(text))
    for _ in range(200):
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(1, 8))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert stream(chunks) == want


def test_streaming_emits_reasoning_before_the_end() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed(S) == ("", "")
    assert splitter.feed("look at ") == ("look at", "")  # trailing space held back
    assert splitter.in_reasoning
    assert splitter.feed("the image◁/th") == (" the image", "")  # partial end marker held
    assert splitter.feed("ink▷\n\nIt is") == ("", "It is")
    assert not splitter.in_reasoning
    assert splitter.feed(" a cat.") == ("", " a cat.")
    assert splitter.finish() == ("", "")


def test_streaming_without_opener_holds_text_until_decided() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("maybe reasoning") == ("", "")
    assert splitter.feed(f" indeed{E} answer") == ("maybe reasoning indeed", "answer")

    undecided = ReasoningSplitter()
    assert undecided.feed("just an answer") == ("", "")
    assert undecided.finish() == ("", "just an answer")


def test_held_text_becomes_reasoning_at_end_marker_then_content_flows() -> None:
    splitter = ReasoningSplitter()
    splitter.feed("Hello")  # not an opener: undecided between reasoning and content
    assert splitter.feed(f"{E}") == ("Hello", "")
    assert splitter.feed("x") == ("", "x")


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"{S}reasoning{E}\n\nThe answer.", "The answer."),
        (f"{S}a{E}b{E}  c", "c"),
        (f"thinking{E}answer", "answer"),
        (f"{S}unfinished", ""),
        ("An answer without reasoning.", "An answer without reasoning."),
    ],
)
def test_strip_reasoning(text: str, kept: str) -> None:
    assert strip_reasoning(text) == kept
