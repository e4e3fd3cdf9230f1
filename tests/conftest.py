"""Fixtures shared across test folders."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from server.model.tokenizer import TikTokenTokenizer
from tests.tiny_tokenizer import load_tiny_tokenizer


@pytest.fixture(scope="session")
def kimi_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TikTokenTokenizer:
    """The tiny checkpoint's tokenizer: real tiktoken files, real special-token names."""
    return load_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session", autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Apps built in tests keep their durable state (uploaded files) in a temporary folder,
    not in the user's cache."""
    previous = os.environ.get("KIMI_VL_STATE_DIR")
    os.environ["KIMI_VL_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    yield
    if previous is None:
        os.environ.pop("KIMI_VL_STATE_DIR", None)
    else:
        os.environ["KIMI_VL_STATE_DIR"] = previous
