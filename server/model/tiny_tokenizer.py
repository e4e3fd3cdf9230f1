"""Tokenizer files for tiny Kimi-VL test checkpoints, in the real format: a small byte-level BPE
learned (seeded) from a built-in corpus, written as `tiktoken.model`, plus the real
`tokenizer_config.json` layout and our `chat_template.jinja`."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex

from server.model.tokenizer import DEFAULT_CHAT_TEMPLATE_PATH, NUM_RESERVED_SPECIAL_TOKENS, PAT_STR

REAL_NUM_BASE_TOKENS = 163584
SMALL_NUM_BASE_TOKENS = 1024
MAX_MERGES = 600

# Named special tokens as offsets from the first special id (real ids: 163584 + offset).
SPECIAL_TOKEN_OFFSETS: dict[str, int] = {
    "[BOS]": 0,
    "[EOS]": 1,
    "<|im_end|>": 2,
    "<|im_user|>": 3,
    "<|im_assistant|>": 4,
    "<|start_header_id|>": 6,
    "<|end_header_id|>": 7,
    "[EOT]": 9,
    "<|im_system|>": 10,
    "<|im_middle|>": 17,
    "<|media_start|>": 18,
    "<|media_content|>": 19,
    "<|media_end|>": 20,
    "<|media_pad|>": 21,
    "[PAD]": 254,
    "[UNK]": 255,
}

_CORPUS = """\
You are a helpful assistant. The user asks a question and the assistant answers it.
What is in this image? The image shows a cat sitting on a red chair next to the window.
Describe the picture in detail. There are two people walking in the park with their dog.
The quick brown fox jumps over the lazy dog. It's a sunny day and we're going to the beach.
Please think step by step before you answer the question, and then give the final answer.
◁think▷ The user wants to know the answer. Let me think about it. ◁/think▷ The answer is 42.
◁think▷ First, I look at the image. Then I count the objects. ◁/think▷ There are three apples.
This is a test of the tokenizer. The tokenizer should split words into tokens.
Images, videos and text are all inputs of the model; the model generates text as output.
I think that the weather will be nice tomorrow, but it might rain in the afternoon.
How many people are in the photo? There are five people in the photo, and they are smiling.
你好，我是一个有用的助手。请问有什么可以帮助你的吗？
这张图片里有什么？图片里有一只猫坐在红色的椅子上。
今天天气很好，我们一起去公园散步吧。我们可以在公园里看花。
请一步一步地思考，然后给出最终的答案。这个问题的答案是四十二。
人工智能是计算机科学的一个分支，它研究如何让机器像人一样思考。
中文和英文都是模型的输入，模型可以理解图片和视频。
你好，世界！这是一个测试。我们的模型可以回答问题，也可以描述图片。
图片里有两个人在公园里散步，他们的狗跟在后面。天气很好，公园里有很多花。
Hello world! Hello, how are you today? I am fine, thank you. How can I help you today?
The model reads the image, then it writes an answer. The answer should be short and correct.
Question: what color is the car in the image? Answer: the car in the image is red.
Question: how many cats are there? Answer: there are two cats on the sofa in the room.
The assistant should answer the question of the user with a short and helpful answer.
In the first image there is a dog, and in the second image there is a cat with a ball.
def add(a: int, b: int) -> int:
    return a + b

class Tokenizer:
    def __init__(self, path: str) -> None:
        self.path = path

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

for i in range(10):
    print(f"value {i}: {i * i}")

def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]

if __name__ == "__main__":
    import json
    data = {"name": "kimi", "model": "vl", "tokens": [1, 2, 3]}
    print(json.dumps(data, indent=2))
"""


def _tiebreak(pair: tuple[bytes, bytes], salt: bytes) -> bytes:
    a, b = pair
    key = len(a).to_bytes(2, "little") + a + b + salt
    return hashlib.blake2b(key, digest_size=8).digest()


def _pairs(parts: list[bytes]) -> list[tuple[bytes, bytes]]:
    return list(zip(parts, parts[1:], strict=False))


@lru_cache(maxsize=8)
def learn_merges(
    seed: int, max_merges: int = MAX_MERGES, extra_corpus: str = ""
) -> tuple[bytes, ...]:
    """Byte-level BPE over the corpus's pre-tokenised pieces (the built-in corpus, then
    `extra_corpus`); equal pair counts are ordered by a seeded hash, so each seed gives its own
    deterministic merge list."""
    pieces = Counter(regex.findall(PAT_STR, _CORPUS + extra_corpus, flags=regex.V1))
    words = [([bytes([b]) for b in piece.encode("utf-8")], n) for piece, n in pieces.items()]
    salt = seed.to_bytes(8, "little", signed=True)
    counts: Counter[tuple[bytes, bytes]] = Counter()
    where: dict[tuple[bytes, bytes], set[int]] = {}
    for idx, (parts, n) in enumerate(words):
        for pair in _pairs(parts):
            counts[pair] += n
            where.setdefault(pair, set()).add(idx)
    known = {bytes([b]) for b in range(256)}
    merged: list[bytes] = []
    while counts and len(merged) < max_merges:
        best_count = max(counts.values())
        if best_count < 2:
            break
        tied = [pair for pair, c in counts.items() if c == best_count]
        best = max(tied, key=lambda pair: _tiebreak(pair, salt))
        new = best[0] + best[1]
        if new not in known:
            known.add(new)
            merged.append(new)
        for idx in sorted(where.pop(best)):
            parts, n = words[idx]
            for pair in _pairs(parts):
                counts[pair] -= n
            i = 0
            while i < len(parts) - 1:
                if (parts[i], parts[i + 1]) == best:
                    parts[i : i + 2] = [new]
                i += 1
            for pair in _pairs(parts):
                counts[pair] += n
                where.setdefault(pair, set()).add(idx)
        for pair in [p for p, c in counts.items() if c <= 0]:
            del counts[pair]
    return tuple(merged)


def regular_tokens(num_base_tokens: int, seed: int, extra_corpus: str = "") -> list[bytes]:
    """Bytes of ranks 0..num_base_tokens-1: the 256 single bytes, learned merges, then filler.

    Filler tokens are "░" + decimal rank: the pre-tokeniser always cuts "░" from digits, so they
    are never produced by encoding and the learned tokenisation is the same for every size."""
    tokens = [bytes([b]) for b in range(256)]
    tokens += learn_merges(seed, MAX_MERGES, extra_corpus)[: max(0, num_base_tokens - 256)]
    tokens += [f"░{rank}".encode() for rank in range(len(tokens), num_base_tokens)]
    return tokens


def _tokenizer_config(num_base: int) -> dict[str, Any]:
    decoder = {
        str(num_base + offset): {
            "content": name,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for name, offset in sorted(SPECIAL_TOKEN_OFFSETS.items(), key=lambda kv: kv[1])
    }
    named = [name for name in SPECIAL_TOKEN_OFFSETS if not name.startswith("[")]
    return {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": named,
        "auto_map": {"AutoTokenizer": ["tokenization_moonshot.TikTokenTokenizer", None]},
        "bos_token": "[BOS]",
        "clean_up_tokenization_spaces": False,
        "eos_token": "[EOS]",
        "model_max_length": 1048576,
        "pad_token": "[PAD]",
        "tokenizer_class": "TikTokenTokenizer",
        "unk_token": "[UNK]",
    }


def write_tokenizer_files(
    out_dir: Path, *, real_vocab: bool, seed: int = 0, extra_corpus: str = ""
) -> dict[str, int]:
    """Write `tiktoken.model`, `tokenizer_config.json` and `chat_template.jinja` into out_dir.

    `extra_corpus` is text the BPE also learns from (the demo model's task words, so that each
    answer is one token).

    real_vocab=True pads the regular vocabulary to 163584 tokens so special ids are the real
    ones (163584..163839). Returns the ids a checkpoint's config.json needs."""
    num_base = REAL_NUM_BASE_TOKENS if real_vocab else SMALL_NUM_BASE_TOKENS
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = (
        f"{base64.b64encode(tok).decode('ascii')} {rank}\n"
        for rank, tok in enumerate(regular_tokens(num_base, seed, extra_corpus))
    )
    (out_dir / "tiktoken.model").write_text("".join(lines), encoding="ascii")
    config_text = json.dumps(_tokenizer_config(num_base), indent=2, ensure_ascii=False) + "\n"
    (out_dir / "tokenizer_config.json").write_text(config_text, encoding="utf-8")
    template = DEFAULT_CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
    (out_dir / "chat_template.jinja").write_text(template, encoding="utf-8")

    def special_id(name: str) -> int:
        return num_base + SPECIAL_TOKEN_OFFSETS[name]

    return {
        "vocab_size": num_base + NUM_RESERVED_SPECIAL_TOKENS,
        "num_base_tokens": num_base,
        "bos_token_id": special_id("[BOS]"),
        "eos_token_id": special_id("[EOS]"),
        "im_end_id": special_id("<|im_end|>"),
        "media_pad_id": special_id("<|media_pad|>"),
        "pad_token_id": special_id("[PAD]"),
    }
