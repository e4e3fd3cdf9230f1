"""The demo's training prompts are token for token what the server renders for the same chat."""

from __future__ import annotations

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
from server.model.demo.tasks import heldout_seed, make_sample
from server.model.image_processing import ImageProcessorConfig, num_image_tokens
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


def test_video_frames_carry_one_second_timestamps(
    builder: PromptBuilder, tokenizer: TikTokenTokenizer
) -> None:
    sample = make_sample("motion", heldout_seed(2))
    text = tokenizer.decode(builder.encode(sample).prompt_ids)
    stamps = [f"00:{i:02d}<|media_start|>image" for i in range(len(sample.frames))]
    assert all(s in text for s in stamps)
    assert f"00:{len(sample.frames):02d}" not in text


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
