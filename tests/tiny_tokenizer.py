"""The tiny checkpoint's real tokenizer (tiktoken files + chat template), for front-end tests."""

from __future__ import annotations

from pathlib import Path

from server.model.tiny_tokenizer import write_tokenizer_files
from server.model.tokenizer import TikTokenTokenizer


def load_tiny_tokenizer(folder: Path) -> TikTokenTokenizer:
    """Write the tiny checkpoint's tokenizer files into `folder` and load them."""
    write_tokenizer_files(folder, real_vocab=False, seed=0)
    tokenizer: TikTokenTokenizer = TikTokenTokenizer.from_pretrained(str(folder))
    return tokenizer
