"""The Batches API through the real server and the official SDK: upload a batch file, create
the batch, watch it complete, read the output file; and a batch that outlives a `kill -9`."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from openai.types import Batch

from server.settings import TINY_MODEL_NAME
from tests.e2e.conftest import API_KEY, RunningServer, png, running_server

pytestmark = pytest.mark.slow

TERMINAL = ("completed", "failed", "cancelled", "expired")


def request_line(custom_id: str, **body: object) -> dict[str, object]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def upload(client: openai.OpenAI, lines: list[dict[str, object]]) -> str:
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    return client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch").id


def wait(
    client: openai.OpenAI, batch: Batch, until: Callable[[Batch], bool], seconds: float
) -> Batch:
    deadline = time.monotonic() + seconds
    while not until(batch):
        assert time.monotonic() < deadline, batch
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    return batch


def results(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    assert file_id is not None
    lines = [json.loads(x) for x in client.files.content(file_id).text.splitlines()]
    by_id = {line["custom_id"]: line for line in lines}
    assert len(by_id) == len(lines), "a custom_id twice"
    return by_id


def test_sdk_batch_round_trip(server: RunningServer) -> None:
    """Valid text lines, an image by data URL, a line for an unknown model, an undecodable image
    and a prompt over the context length: the first three in the output file, the others in the
    error file with OpenAI's error bodies."""
    client = openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=60)
    say = [{"role": "user", "content": "Say something."}]
    image = "data:image/png;base64," + base64.b64encode(png(64, 48)).decode()
    with_image = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image}},
        {"type": "text", "text": "What is it?"},
    ]}]  # fmt: skip
    broken = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
    ]}]  # fmt: skip
    lines = [
        request_line("text-0", model=TINY_MODEL_NAME, messages=say, max_tokens=4),
        request_line("text-1", model=TINY_MODEL_NAME, messages=say, max_tokens=4),
        request_line("image", model=TINY_MODEL_NAME, messages=with_image, max_tokens=4),
        request_line("unknown-model", model="no-such-model", messages=say, max_tokens=4),
        request_line("broken-image", model=TINY_MODEL_NAME, messages=broken, max_tokens=4),
        request_line("too-long", model=TINY_MODEL_NAME,
                     messages=[{"role": "user", "content": "word " * 5000}]),
    ]  # fmt: skip
    file_id = upload(client, lines)
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"suite": "e2e"},
    )
    assert batch.status == "validating" and batch.metadata == {"suite": "e2e"}
    batch = wait(client, batch, lambda b: b.status in TERMINAL, 180)
    assert batch.status == "completed" and batch.completed_at is not None
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (6, 3)
    assert batch.request_counts.failed == 3

    outputs = results(client, batch.output_file_id)
    assert sorted(outputs) == ["image", "text-0", "text-1"]
    for result in outputs.values():
        body = result["response"]["body"]
        assert result["response"]["status_code"] == 200 and result["error"] is None
        assert body["usage"]["completion_tokens"] == 4 and body["model"] == TINY_MODEL_NAME
    image_tokens = outputs["image"]["response"]["body"]["usage"]["prompt_tokens"]
    assert image_tokens > outputs["text-0"]["response"]["body"]["usage"]["prompt_tokens"]

    errors = results(client, batch.error_file_id)
    expected = {
        "unknown-model": (404, "model_not_found"),
        "broken-image": (400, "invalid_image"),
        "too-long": (400, "context_length_exceeded"),
    }
    got = {
        k: (v["response"]["status_code"], v["response"]["body"]["error"]["code"])
        for k, v in errors.items()
    }
    assert got == expected
    assert batch.id in [b.id for b in client.batches.list()]
    with pytest.raises(openai.BadRequestError) as refused:  # only a running batch can be
        client.batches.cancel(batch.id)
    assert refused.value.code == "invalid_state"


def test_sdk_upload_refuses_a_bad_line_and_auth_applies(server: RunningServer) -> None:
    client = openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=60)
    good = request_line("a", messages=[{"role": "user", "content": "hi"}])
    bad = request_line("b", messages=[{"role": "user", "content": "hi"}], max_tokens=-1)
    with pytest.raises(openai.BadRequestError) as refused:
        upload(client, [good, bad])
    assert refused.value.code == "invalid_batch_line" and "Line 2" in refused.value.message

    file_id = upload(client, [good])
    stranger = openai.OpenAI(base_url=server.v1, api_key="wrong", max_retries=0, timeout=60)
    for call in (
        lambda: upload(stranger, [good]),
        lambda: stranger.files.list(),
        lambda: stranger.files.content(file_id),
        lambda: stranger.files.delete(file_id),
        lambda: stranger.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
        lambda: stranger.batches.list(),
    ):
        with pytest.raises(openai.AuthenticationError):
            call()
    assert client.files.retrieve(file_id).id == file_id  # the refused delete did nothing


def test_sdk_cancel_mid_way(server: RunningServer) -> None:
    """Cancelling a running batch stops new requests; it ends `cancelled`, with an output file
    holding exactly the requests that ran."""
    client = openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=60)
    say = [{"role": "user", "content": "Count."}]
    lines = [request_line(f"n{i}", messages=say, max_tokens=8) for i in range(120)]
    batch = client.batches.create(
        input_file_id=upload(client, lines),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    batch = wait(
        client, batch, lambda b: bool(b.request_counts and b.request_counts.completed >= 3), 120
    )
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = wait(client, cancelling, lambda b: b.status in TERMINAL, 120)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert batch.request_counts is not None
    done = batch.request_counts.completed
    assert 3 <= done < 120 and batch.request_counts.failed == 0
    assert len(results(client, batch.output_file_id)) == done


KILLED_BATCH = 80  # lines; the kill comes once 20 are done


def test_a_batch_survives_kill_9(tmp_path_factory: pytest.TempPathFactory) -> None:
    """SIGKILL the whole server (engine included) while a batch of KILLED_BATCH lines runs; a new
    server on the same state folder finishes it with each custom_id exactly once."""
    work = tmp_path_factory.mktemp("crash")
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": f"n{i}"}], "max_tokens": 2},
        }
        for i in range(KILLED_BATCH)
    ]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    with running_server(work) as first:
        client = openai.OpenAI(base_url=first.v1, api_key="unused", max_retries=0, timeout=60)
        upload = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 120
        while True:
            batch = client.batches.retrieve(batch.id)
            assert batch.request_counts is not None
            if batch.request_counts.completed >= 20:
                break
            assert time.monotonic() < deadline, batch
            assert batch.status in ("validating", "in_progress"), batch
            time.sleep(0.1)
        assert batch.request_counts.completed < KILLED_BATCH, "finished before the crash"
        os.killpg(first.pid, signal.SIGKILL)  # no drain, no shutdown: a crash
    with running_server(work) as second:
        client = openai.OpenAI(base_url=second.v1, api_key="unused", max_retries=0, timeout=60)
        deadline = time.monotonic() + 240
        while batch.status != "completed":
            assert time.monotonic() < deadline, batch
            time.sleep(0.5)
            batch = client.batches.retrieve(batch.id)
        assert batch.request_counts is not None
        assert batch.request_counts.completed == KILLED_BATCH
        assert batch.output_file_id is not None
        text = client.files.content(batch.output_file_id).text
        ids = [json.loads(x)["custom_id"] for x in text.splitlines()]
        assert len(ids) == KILLED_BATCH and set(ids) == {f"c{i}" for i in range(KILLED_BATCH)}
