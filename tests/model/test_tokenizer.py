"""Kimi-VL tokenizer (no remote code), chat template, tiny tokenizer files.

See docs/model.md: Tokenizer, Chat template and Pitfalls.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import regex
import tiktoken

from server.model.tiny_tokenizer import SPECIAL_TOKEN_OFFSETS, write_tokenizer_files
from server.model.tokenizer import (
    DEFAULT_CHAT_TEMPLATE_PATH,
    PAT_STR,
    TikTokenTokenizer,
    read_tiktoken_ranks,
    register_tokenizer,
    stop_token_ids,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

TEXTS = [
    "Hello world! What is in this image?",
    "你好，世界！这张图片里有什么？",
    "Emoji: 😀👍🏽 and a family 👨‍👩‍👧 ok",
    "def add(a: int, b: int) -> int:\n    return a + b\n\n\tprint(f'{x!r}')  # done",
    "◁think▷ 用户想知道答案。Let me count: 1, 22, 333, 4444. ◁/think▷ The answer is 42.",
    "Ünïcödé Ελληνικά русский 日本語のテキスト 한국어 It's WE'LL they've",
    "   leading and trailing spaces   \r\n\r\n\n",
    "",
]

# The two rendered examples (docs/model.md, Chat template).
EXAMPLE_IMAGE = (
    "<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>"
    "<|im_user|>user<|im_middle|><|media_start|>image<|media_content|><|media_pad|><|media_end|>"
    "What is this?<|im_end|><|im_assistant|>assistant<|im_middle|>"
)
EXAMPLE_SYSTEM = (
    "<|im_system|>system<|im_middle|>S<|im_end|><|im_user|>user<|im_middle|>hi<|im_end|>"
    "<|im_assistant|>assistant<|im_middle|>"
)
IMAGE_BLOCK = "<|media_start|>image<|media_content|><|media_pad|><|media_end|>"
DEFAULT_SYSTEM = "<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>"


def _write_config(ckpt: Path, facts: dict[str, int]) -> None:
    config = {
        "model_type": "kimi_vl",
        "architectures": ["KimiVLForConditionalGeneration"],
        "auto_map": {
            "AutoConfig": "configuration_kimi_vl.KimiVLConfig",
            "AutoModel": "modeling_kimi_vl.KimiVLForConditionalGeneration",
        },
        "text_config": {
            "model_type": "deepseek_v3",
            "vocab_size": facts["vocab_size"],
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        "vision_config": {"model_type": "moonvit"},
        "media_placeholder_token_id": facts["media_pad_id"],
    }
    (ckpt / "config.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    ckpt = tmp_path_factory.mktemp("small")
    facts = write_tokenizer_files(ckpt, real_vocab=False)
    _write_config(ckpt, facts)
    return ckpt, facts


@pytest.fixture(scope="module")
def real_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    ckpt = tmp_path_factory.mktemp("real")
    facts = write_tokenizer_files(ckpt, real_vocab=True)
    _write_config(ckpt, facts)
    return ckpt, facts


@pytest.fixture(scope="module")
def small_tok(small_ckpt: tuple[Path, dict[str, int]]) -> TikTokenTokenizer:
    return TikTokenTokenizer.from_pretrained(small_ckpt[0])


@pytest.fixture(scope="module")
def real_tok(real_ckpt: tuple[Path, dict[str, int]]) -> TikTokenTokenizer:
    return TikTokenTokenizer.from_pretrained(real_ckpt[0])


@pytest.fixture(scope="module")
def registered() -> None:
    register_tokenizer()
    register_tokenizer()  # idempotent


# ---- encoding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("which", ["small_tok", "real_tok"])
def test_round_trip(text: str, which: str, request: pytest.FixtureRequest) -> None:
    tok: TikTokenTokenizer = request.getfixturevalue(which)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(i < tok.num_base_tokens for i in ids), "plain text must not yield special ids"
    assert tok.convert_tokens_to_string(tok.convert_ids_to_tokens(ids)) == text


def test_same_ids_for_small_and_real_vocab(
    small_tok: TikTokenTokenizer, real_tok: TikTokenTokenizer
):
    for text in TEXTS:
        assert small_tok.encode(text) == real_tok.encode(text)


def test_common_words_are_multibyte_tokens(small_tok: TikTokenTokenizer) -> None:
    for word in [" the", " image", " assistant", "图片", "think"]:
        assert len(small_tok.encode(word)) == 1, word
    assert (
        len(small_tok.encode("◁think▷")) > 1
    )  # markers are text (docs/model.md, Thinking markers)


def test_pretokenizer_matches_regex_with_set_intersection() -> None:
    """tiktoken (fancy-regex) must honour `&&[^\\p{Han}]` exactly like `regex` V1: give every
    substring of every expected piece a rank, then each piece must come back as one token."""
    text = "Hello世界 ÀB它's CamelCase 日本語のテキスト Москва2024年 x=12345;\n\n  it'S  end"
    pieces = regex.findall(PAT_STR, text, flags=regex.V1)
    assert pieces[:2] == ["Hello", "世界"]  # Han never glued to Latin letters
    ranks = {bytes([b]): b for b in range(256)}
    for piece in pieces:
        raw = piece.encode()
        for n in range(2, len(raw) + 1):
            for i in range(len(raw) - n + 1):
                ranks.setdefault(raw[i : i + n], len(ranks))
    enc = tiktoken.Encoding("probe", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={})
    got = [enc.decode_single_token_bytes(t).decode() for t in enc.encode_ordinary(text)]
    assert got == pieces


def test_long_whitespace_run_round_trips(small_tok: TikTokenTokenizer) -> None:
    text = "a" + " " * 30_000 + "b" + "x" * 30_000
    assert small_tok.decode(small_tok.encode(text)) == text


def test_no_bos_added(small_tok: TikTokenTokenizer) -> None:
    ids = small_tok.encode("hi there")
    assert ids == small_tok.encode("hi there", add_special_tokens=False)
    assert small_tok.bos_token_id not in ids
    assert small_tok("hi there")["input_ids"] == ids


def test_truncation_left_keeps_the_end(small_tok: TikTokenTokenizer) -> None:
    ids = small_tok.encode("one two three four five six")
    small_tok.truncation_side = "left"
    try:
        out = small_tok("one two three four five six", truncation=True, max_length=3)
    finally:
        small_tok.truncation_side = "right"
    assert out["input_ids"] == ids[-3:]


# ---- special tokens ---------------------------------------------------------------------------
def test_real_special_token_ids(real_tok: TikTokenTokenizer, real_ckpt) -> None:
    expected = {
        "[BOS]": 163584, "[EOS]": 163585, "<|im_end|>": 163586, "<|im_user|>": 163587,
        "<|im_assistant|>": 163588, "<|im_system|>": 163594, "<|im_middle|>": 163601,
        "<|media_start|>": 163602, "<|media_content|>": 163603, "<|media_end|>": 163604,
        "<|media_pad|>": 163605, "[PAD]": 163838, "[UNK]": 163839,
    }  # fmt: skip
    for name, token_id in expected.items():
        assert real_tok.convert_tokens_to_ids(name) == token_id, name
        assert real_tok.encode(name) == [token_id]
        assert real_tok.decode([token_id]) == name
    config = json.loads((real_ckpt[0] / "tokenizer_config.json").read_text())
    for token_id, entry in config["added_tokens_decoder"].items():
        assert real_tok.convert_tokens_to_ids(entry["content"]) == int(token_id)
    assert real_tok.bos_token_id == 163584
    # <|im_end|> is reported as EOS so stock vLLM stops on it ([EOS] comes from generation_config).
    assert real_tok.eos_token_id == 163586
    assert real_tok.convert_tokens_to_ids("[EOS]") == 163585
    assert (real_tok.pad_token_id, real_tok.unk_token_id) == (163838, 163839)
    assert len(real_tok) == real_tok.vocab_size == 163840
    assert real_ckpt[1] == {
        "vocab_size": 163840, "num_base_tokens": 163584, "bos_token_id": 163584,
        "eos_token_id": 163585, "im_end_id": 163586, "media_pad_id": 163605,
        "pad_token_id": 163838,
    }  # fmt: skip


def test_reserved_ids_decode(real_tok: TikTokenTokenizer) -> None:
    assert real_tok.decode([163589]) == "<|reserved_token_163589|>"
    assert real_tok.convert_ids_to_tokens([163700]) == ["<|reserved_token_163700|>"]
    ids = real_tok.encode("ok") + [163589, 163586, 163838]
    assert real_tok.decode(ids, skip_special_tokens=True) == "ok"
    assert set(real_tok.all_special_ids) == set(range(163584, 163840))


def test_special_text_in_user_text(small_tok: TikTokenTokenizer, small_ckpt) -> None:
    facts = small_ckpt[1]
    text = "say <|im_end|> then <|media_pad|>"
    literal = small_tok.encode_text(text)  # default: special text stays text
    assert all(i < facts["num_base_tokens"] for i in literal)
    assert small_tok.decode(literal) == text
    assert small_tok.encode(text, split_special_tokens=True) == literal
    only_end = small_tok.encode_text(text, allowed_special={"<|im_end|>"})
    assert facts["im_end_id"] in only_end and facts["media_pad_id"] not in only_end
    # HF encode / __call__ parse special text (rendered chat prompts and vLLM depend on it).
    everything = small_tok.encode_text(text, allowed_special="all")
    assert small_tok.encode(text) == everything
    assert {facts["im_end_id"], facts["media_pad_id"]} <= set(everything)


def test_stop_token_ids(real_tok: TikTokenTokenizer, small_tok: TikTokenTokenizer, small_ckpt):
    assert stop_token_ids(real_tok) == [163586, 163585]
    assert stop_token_ids(small_tok) == [small_ckpt[1]["im_end_id"], small_ckpt[1]["eos_token_id"]]


# ---- chat template ----------------------------------------------------------------------------
def _render(tok: TikTokenTokenizer, messages: list[dict[str, Any]], gen: bool = True) -> str:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    assert isinstance(text, str)  # tokenize=False renders to text
    return text


def test_chat_template_examples(small_tok: TikTokenTokenizer) -> None:
    image_msg = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}
    ]
    assert _render(small_tok, image_msg) == EXAMPLE_IMAGE
    system_msg = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert _render(small_tok, system_msg) == EXAMPLE_SYSTEM


def test_chat_template_multi_turn_multi_image(small_tok: TikTokenTokenizer) -> None:
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:,"}},
                {"image": "b.png"},
                {"type": "text", "text": "Compare them."},
            ],
        },
        {"role": "assistant", "content": "◁think▷two◁/think▷They differ."},
        {"role": "user", "content": [{"type": "text", "text": "Why?"}, {"type": "image"}]},
    ]
    expected = (
        DEFAULT_SYSTEM
        + f"<|im_user|>user<|im_middle|>{IMAGE_BLOCK}{IMAGE_BLOCK}Compare them.<|im_end|>"
        + "<|im_assistant|>assistant<|im_middle|>◁think▷two◁/think▷They differ.<|im_end|>"
        + f"<|im_user|>user<|im_middle|>Why?{IMAGE_BLOCK}<|im_end|>"
    )
    assert _render(small_tok, messages, gen=False) == expected
    assert _render(small_tok, messages) == expected + "<|im_assistant|>assistant<|im_middle|>"


def test_chat_template_tokenizes_to_special_ids(real_tok: TikTokenTokenizer) -> None:
    ids = real_tok.encode(EXAMPLE_IMAGE)
    assert ids[0] == 163594 and ids.count(163605) == 1 and ids[-1] == 163601
    assert real_tok.decode(ids) == EXAMPLE_IMAGE


def test_checkpoint_template_wins_else_ours(small_ckpt, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(small_ckpt[0], ckpt)
    custom = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (ckpt / "chat_template.jinja").write_text(custom)
    assert TikTokenTokenizer.from_pretrained(ckpt).chat_template == custom
    (ckpt / "chat_template.jinja").unlink()
    ours = DEFAULT_CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
    assert TikTokenTokenizer.from_pretrained(ckpt).chat_template == ours


# ---- loading ----------------------------------------------------------------------------------
def test_missing_tiktoken_model_is_a_clear_error(small_ckpt, tmp_path: Path) -> None:
    shutil.copy(small_ckpt[0] / "tokenizer_config.json", tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "tiktoken.model")):
        TikTokenTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="tiktoken.model"):
        read_tiktoken_ranks(tmp_path / "tiktoken.model")


@pytest.mark.parametrize("trust_remote_code", [False, None, True])
def test_autotokenizer_resolves_without_remote_code(
    registered, small_ckpt, small_tok, trust_remote_code
):
    from transformers import AutoTokenizer

    assert not (small_ckpt[0] / "tokenization_moonshot.py").exists()
    tok = AutoTokenizer.from_pretrained(small_ckpt[0], trust_remote_code=trust_remote_code)
    assert type(tok) is TikTokenTokenizer
    assert tok.encode(EXAMPLE_SYSTEM) == small_tok.encode(EXAMPLE_SYSTEM)


@pytest.mark.parametrize("mode", ["auto", "kimi_vl"])
def test_vllm_get_tokenizer(registered, real_ckpt, mode: str) -> None:
    from vllm.tokenizers import get_tokenizer

    tok = get_tokenizer(real_ckpt[0], tokenizer_mode=mode)
    assert isinstance(tok, TikTokenTokenizer) and not tok.is_fast
    assert tok.convert_tokens_to_ids("<|media_pad|>") == 163605
    assert tok.max_token_id == 163839 and len(tok) == 163840
    assert stop_token_ids(tok) == [163586, 163585]
    assert (
        tok.apply_chat_template(
            [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        == EXAMPLE_SYSTEM
    )


def test_cached_tokenizer_pickles(small_ckpt, small_tok: TikTokenTokenizer) -> None:
    from vllm.tokenizers.hf import get_cached_tokenizer

    clone = pickle.loads(pickle.dumps(get_cached_tokenizer(small_tok)))
    assert clone.encode(EXAMPLE_IMAGE) == small_tok.encode(EXAMPLE_IMAGE)


def test_xgrammar_sees_a_byte_level_tiktoken_vocab(small_tok: TikTokenTokenizer) -> None:
    xgr = pytest.importorskip("xgrammar")
    info = xgr.TokenizerInfo.from_huggingface(small_tok, vocab_size=len(small_tok))
    assert info.vocab_type == xgr.VocabType.BYTE_LEVEL


# ---- vLLM incremental detokenization ----------------------------------------------------------
@pytest.mark.parametrize(("skip_special_tokens", "spaces"), [(True, True), (False, False)])
def test_vllm_incremental_detokenization(
    small_tok: TikTokenTokenizer, skip_special_tokens: bool, spaces: bool
) -> None:
    """Stream ids through vLLM's slow-path helper exactly as SlowIncrementalDetokenizer does."""
    from vllm.tokenizers.detokenizer_utils import (
        convert_prompt_ids_to_tokens,
        detokenize_incrementally,
    )
    from vllm.tokenizers.hf import get_cached_tokenizer
    from vllm.tokenizers.protocol import TokenizerLike

    # transformers' __call__ signature differs from TokenizerLike's, so mypy rejects the HF
    # tokenizer structurally; vLLM's slow-path detokenizer is given exactly this at runtime.
    tok = cast("TokenizerLike", get_cached_tokenizer(small_tok))
    prompt = tok.encode(EXAMPLE_IMAGE)
    answer = "◁think▷ 图中有一只鹦鹉🦜，颜色鲜艳。◁/think▷ A parrot 鹦鹉 — très coloré!"
    generated = tok.encode(answer) + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert any("\ufffd" in tok.decode([i]) for i in generated), "want characters split over tokens"

    tokens, prefix, read = convert_prompt_ids_to_tokens(tok, prompt, skip_special_tokens)
    ids, pieces = list(prompt), []
    for token_id in generated:
        ids.append(token_id)
        new_tokens, text, prefix, read = detokenize_incrementally(
            tok, ids, tokens, prefix, read,
            skip_special_tokens=skip_special_tokens, spaces_between_special_tokens=spaces,
        )  # fmt: skip
        tokens += new_tokens
        pieces.append(text)
    expected = answer if skip_special_tokens else answer + "<|im_end|>"
    assert "".join(pieces) == expected
    assert tok.decode(generated, skip_special_tokens=skip_special_tokens) == expected
    assert all("\ufffd" not in piece for piece in pieces)


# ---- tiny tokenizer files ---------------------------------------------------------------------
def test_write_tokenizer_files_layout(small_ckpt) -> None:
    ckpt, facts = small_ckpt
    assert {p.name for p in ckpt.iterdir()} >= {
        "tiktoken.model",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    ranks = read_tiktoken_ranks(ckpt / "tiktoken.model")
    assert len(ranks) == facts["num_base_tokens"] == 1024
    assert all(bytes([b]) in ranks for b in range(256))
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "TikTokenTokenizer"
    assert config["auto_map"] == {
        "AutoTokenizer": ["tokenization_moonshot.TikTokenTokenizer", None]
    }
    assert config["model_max_length"] == 1048576
    assert {int(k) - 1024 for k in config["added_tokens_decoder"]} == set(
        SPECIAL_TOKEN_OFFSETS.values()
    )
    assert (ckpt / "chat_template.jinja").read_text() == DEFAULT_CHAT_TEMPLATE_PATH.read_text()


def _file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_write_tokenizer_files_is_deterministic(tmp_path: Path) -> None:
    write_tokenizer_files(tmp_path / "a", real_vocab=False, seed=3)
    write_tokenizer_files(tmp_path / "b", real_vocab=False, seed=4)
    script = (
        "import sys; from pathlib import Path; "
        "from server.model.tiny_tokenizer import write_tokenizer_files; "
        "write_tokenizer_files(Path(sys.argv[1]), real_vocab=False, seed=3)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "c")], check=True, cwd=REPO_ROOT, env=env
    )
    assert _file_bytes(tmp_path / "a") == _file_bytes(tmp_path / "c")
    a_vocab = (tmp_path / "a" / "tiktoken.model").read_bytes()
    assert a_vocab != (tmp_path / "b" / "tiktoken.model").read_bytes()
