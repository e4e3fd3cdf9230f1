"""Stock vLLM's OpenAI server, no extra flags and no --trust-remote-code, serves Kimi-VL with our class."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from server.model.image_processing import ImageProcessorConfig, num_image_tokens

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def png_data_url(w: int, h: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_stock_vllm_server_serves_an_image_request(tiny_ckpt: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny_ckpt),
        "--port",
        str(port),
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            pytest.fail("vLLM server did not become healthy:\n" + log.read_text()[-3000:])

        def ask(content: list[dict], **extra: object) -> dict:
            body = {
                "model": str(tiny_ckpt),
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 4,
                **extra,
            }
            r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()

        text_only = ask([{"type": "text", "text": "What is this?"}])
        with_image = ask(
            [
                {"type": "image_url", "image_url": {"url": png_data_url(200, 120)}},
                {"type": "text", "text": "What is this?"},
            ]
        )
        assert with_image["usage"]["completion_tokens"] == 4
        # The image adds its media_start/content/end markers plus gh*gw/4 placeholder tokens.
        image_tokens = num_image_tokens(200, 120, ImageProcessorConfig())
        added = with_image["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"]
        assert (
            added - image_tokens == 5
        )  # <|media_start|> image <|media_content|> ... <|media_end|>
        # Generation stops on both <|im_end|> and [EOS] (forced here with a logit bias).
        from server.model.tokenizer import TikTokenTokenizer

        vocab = TikTokenTokenizer.from_pretrained(str(tiny_ckpt)).get_vocab()
        for stop in ("<|im_end|>", "[EOS]"):
            reply = ask([{"type": "text", "text": "hi"}], logit_bias={str(vocab[stop]): 100})
            assert reply["choices"][0]["finish_reason"] == "stop", (stop, reply)
            assert reply["usage"]["completion_tokens"] == 1
        logs = log.read_text()
        assert (
            "kimi-vl-server plugin: KimiVLForConditionalGeneration -> server.model.kimi_vl" in logs
        )
        assert "trust_remote_code=False" in logs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
