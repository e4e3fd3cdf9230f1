"""The demo's training prompts are token for token what the server renders for the same chat."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from server.model.demo.checkpoint import preprocessor_config, write_tokenizer
from server.model.demo.prompt import (
    THINK_END,
    THINK_START,
    THINKING_SYSTEM_PROMPT,
    PromptBuilder,
    target_text,
)
from server.model.demo.tasks import (
    COLORS,
    DIRECTIONS,
    ORDINALS,
    SHAPES,
    heldout_seed,
    make_sample,
)
from server.model.image_processing import ImageProcessorConfig, num_image_tokens
from server.model.media_format import format_timestamp
from server.model.tokenizer import TikTokenTokenizer
from server.protocol.chat import ChatMessage
from server.serving.prompt import SpecialIds, render_prompt
from server.serving.reasoning import split_reasoning


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TikTokenTokenizer:
    d: Path = tmp_path_factory.mktemp("demo-tok")
    write_tokenizer(d)
    return TikTokenTokenizer.from_pretrained(str(d))


@pytest.fixture(scope="module")
def builder(tokenizer: TikTokenTokenizer) -> PromptBuilder:
    return PromptBuilder(tokenizer, ImageProcessorConfig.from_dict(preprocessor_config()))


def _messages(sample, *, thinking: bool, text_first: bool) -> list[ChatMessage]:  # type: ignore[no-untyped-def]
    media = (
        [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AA=="}}]
        if sample.frames
        else [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
            for _ in sample.images
        ]
    )
    text = [{"type": "text", "text": sample.question}]
    msgs = [{"role": "user", "content": text + media if text_first else media + text}]
    if thinking:
        msgs.insert(0, {"role": "system", "content": THINKING_SYSTEM_PROMPT})
    return [ChatMessage.model_validate(m) for m in msgs]


@pytest.mark.parametrize("task", ["color", "multi_image", "motion"])
@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("text_first", [False, True])
def test_unexpanded_prompt_equals_the_servers_rendering(
    builder: PromptBuilder,
    tokenizer: TikTokenTokenizer,
    task: str,
    thinking: bool,
    text_first: bool,
) -> None:
    sample = make_sample(task, heldout_seed(0))
    ours = builder.encode(sample, thinking=thinking, text_first=text_first, expand=False)
    served = render_prompt(
        _messages(sample, thinking=thinking, text_first=text_first),
        tokenizer,
        SpecialIds.from_tokenizer(tokenizer),
    )
    assert ours.prompt_ids == served.token_ids


def test_expansion_adds_each_images_token_count(builder: PromptBuilder) -> None:
    sample = make_sample("multi_image", heldout_seed(1))
    raw = builder.encode(sample, expand=False)
    full = builder.encode(sample)
    cfg = builder.cfg
    pads = sum(num_image_tokens(im.width, im.height, cfg) for im in sample.images)
    pad = builder.ids["<|media_pad|>"]
    assert full.prompt_ids.count(pad) == pads
    assert len(full.prompt_ids) == len(raw.prompt_ids) + pads - len(sample.images)
    assert full.pixel_values.shape[0] == sum(h * w for h, w in full.grids)


@pytest.mark.parametrize("fps", [1, 2, 10, 30])
def test_video_frames_carry_their_timestamps(
    builder: PromptBuilder, tokenizer: TikTokenTokenizer, fps: int
) -> None:
    """Frame i of a clip at `fps` is stamped with the whole seconds of i / fps, as the server
    stamps each decoded frame with its time."""
    sample = dataclasses.replace(make_sample("motion", heldout_seed(2)), fps=fps)
    text = str(tokenizer.decode(builder.encode(sample).prompt_ids))
    stamps = re.findall(r"(\d\d:\d\d)<\|media_start\|>image", text)
    assert stamps == [format_timestamp(i / fps) for i in range(len(sample.frames))]


def test_every_answer_is_one_token(builder: PromptBuilder) -> None:
    answers = [*COLORS, *SHAPES, *DIRECTIONS, *ORDINALS, *(str(n) for n in range(1, 7))]
    assert all(len(builder.text(a)) == 1 for a in answers)
    assert len({builder.text(a)[0] for a in answers}) == len(answers)


def test_follow_ups_continue_the_conversation_with_answer_targets(
    builder: PromptBuilder, tokenizer: TikTokenTokenizer
) -> None:
    sample = make_sample("count", heldout_seed(4))
    more = [("What color is the circle?", "red"), ("How many shapes are there?", "2")]
    single = builder.encode(sample)
    both = builder.encode(sample, follow_ups=more)
    assert both.prompt_ids == single.prompt_ids
    assert both.target_ids[: len(single.target_ids)] == single.target_ids
    assert both.target_mask is not None and single.target_mask is None
    scored = [t for t, m in zip(both.target_ids, both.target_mask, strict=True) if m]
    end = builder.ids["<|im_end|>"]
    assert scored == [*builder.text(sample.answer), end, *builder.text("red"), end,
                      *builder.text("2"), end]  # fmt: skip
    text = str(tokenizer.decode(both.target_ids))
    assert text.endswith(
        "<|im_user|>user<|im_middle|>How many shapes are there?<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|>2<|im_end|>"
    )


def test_targets_end_the_turn_and_thinking_splits_into_reasoning(
    builder: PromptBuilder, tokenizer: TikTokenTokenizer
) -> None:
    sample = make_sample("count", heldout_seed(3))
    end = builder.ids["<|im_end|>"]
    plain = builder.encode(sample).target_ids
    assert plain[-1] == end and tokenizer.decode(plain[:-1]) == sample.answer
    thought = builder.encode(sample, thinking=True).target_ids
    text = str(tokenizer.decode(thought[:-1]))
    assert text.startswith(THINK_START) and THINK_END in text
    assert text == target_text(sample, thinking=True)
    assert split_reasoning(text) == (sample.thought, sample.answer)
    assert builder.answer_from(thought) == sample.answer
