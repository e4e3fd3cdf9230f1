"""Fixtures shared across test folders."""

from __future__ import annotations

import pytest

from server.model.tokenizer import TikTokenTokenizer
from tests.tiny_tokenizer import load_tiny_tokenizer


@pytest.fixture(scope="session")
def kimi_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TikTokenTokenizer:
    """The tiny checkpoint's tokenizer: real tiktoken files, real special-token names."""
    return load_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
