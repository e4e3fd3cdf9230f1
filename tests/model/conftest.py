"""Fixtures for model tests: tiny checkpoints in the real format, and isolated engine runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from server.model.tiny import write_checkpoint

REPO = Path(__file__).resolve().parents[2]
IMAGE = "<|media_start|>image<|media_content|><|media_pad|><|media_end|>"
VIDEO = "<|media_start|>video<|media_content|><|media_pad|><|media_end|>"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


def chat(content: str) -> str:
    return (
        "<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>"
        f"<|im_user|>user<|im_middle|>{content}<|im_end|><|im_assistant|>assistant<|im_middle|>"
    )


@pytest.fixture(scope="session")
def parity_cases(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Text only, one image, and three images of different sizes in one prompt."""
    from server.model.tokenizer import TikTokenTokenizer

    tok = TikTokenTokenizer.from_pretrained(str(tiny_ckpt))

    def ids(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    cases = [
        {
            "name": "text",
            "prompt_token_ids": ids(chat("Describe the weather in Paris in one sentence.")),
            "images": [],
        },
        {
            "name": "one_image",
            "prompt_token_ids": ids(chat(IMAGE + "What is this?")),
            "images": [[224, 168, 1]],
        },
        {
            "name": "three_images",
            "prompt_token_ids": ids(chat(IMAGE + "a" + IMAGE + "b" + IMAGE + "Compare them.")),
            "images": [[64, 64, 2], [300, 120, 3], [100, 250, 4]],
        },
    ]
    path = tmp_path_factory.mktemp("cases") / "cases.json"
    path.write_text(json.dumps(cases))
    return path


@pytest.fixture(scope="session")
def video_cases(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A video, the same frames as images, with timestamps, and after an image (the first,
    "video", is also what the compiled tests ask)."""
    from server.model.tokenizer import TikTokenTokenizer

    tok = TikTokenTokenizer.from_pretrained(str(tiny_ckpt))

    def ids(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    frames = [[120, 90, 10], [120, 90, 11], [120, 90, 12]]
    video = {"size": [120, 90], "frames": 3, "seed": 10}
    q = "What happens in the video?"
    cases = [
        {
            "name": "video",
            "prompt_token_ids": ids(chat(VIDEO + q)),
            "images": [],
            "videos": [{**video, "timestamps": None}],
        },
        {"name": "frames", "prompt_token_ids": ids(chat(IMAGE * 3 + q)), "images": frames},
        {
            "name": "video_ts",
            "prompt_token_ids": ids(chat(VIDEO + q)),
            "images": [],
            "videos": [{**video, "timestamps": [0.0, 1.5, 62.0]}],
        },
        {
            "name": "frames_ts",
            "prompt_token_ids": ids(chat(f"00:00{IMAGE}00:01{IMAGE}01:02{IMAGE}" + q)),
            "images": frames,
        },
        {
            "name": "image_then_video",
            "prompt_token_ids": ids(chat(IMAGE + "then" + VIDEO + q)),
            "images": [[64, 200, 3]],
            "videos": [{**video, "timestamps": None}],
        },
        {
            "name": "image_then_frames",
            "prompt_token_ids": ids(chat(IMAGE + "then" + IMAGE * 3 + q)),
            "images": [[64, 200, 3], *frames],
        },
    ]
    path = tmp_path_factory.mktemp("video") / "cases.json"
    path.write_text(json.dumps(cases))
    return path


RunGenerate = Callable[..., dict]


@pytest.fixture(scope="session")
def run_generate(
    tiny_ckpt: Path, parity_cases: Path, tmp_path_factory: pytest.TempPathFactory
) -> RunGenerate:
    """Run tests/model/generate_runner.py in a fresh process; results cached per configuration."""
    cache: dict[tuple, dict] = {}

    def run(
        impl: str = "ours",
        dtype: str = "float32",
        tp: int = 1,
        max_tokens: int = 32,
        solo: bool = False,
        cases: Path | None = None,
        compiled: bool = False,
        pp: int = 1,
        backend: str | None = None,
    ) -> dict:
        cases = cases or parity_cases
        key = (impl, dtype, tp, max_tokens, solo, cases, compiled, pp, backend)
        if key not in cache:
            out = tmp_path_factory.mktemp("gen") / "out.json"
            cmd = [
                sys.executable, "-m", "tests.model.generate_runner", "--model", str(tiny_ckpt),
                "--impl", impl, "--dtype", dtype, "--tp", str(tp), "--cases", str(cases),
                "--out", str(out), "--max-tokens", str(max_tokens),
                "--pp", str(pp),
            ] + (["--solo"] if solo else []) + (["--compiled"] if compiled else []) + (
                ["--backend", backend] if backend else []
            )  # fmt: skip
            proc = subprocess.run(
                cmd,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=900,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}"
            cache[key] = json.loads(out.read_text())
        return cache[key]

    return run
