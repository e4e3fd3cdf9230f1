"""The Batches API through the real server and the official SDK: upload a batch file, create
the batch, watch it complete, read the output file; and a batch that outlives a `kill -9`."""

from __future__ import annotations

import io
import json
import os
import signal
import time

import openai
import pytest

from server.settings import TINY_MODEL_NAME
from tests.e2e.conftest import API_KEY, RunningServer, running_server

pytestmark = pytest.mark.slow


def test_sdk_batch_round_trip(server: RunningServer) -> None:
    client = openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=60)
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": TINY_MODEL_NAME,
                "messages": [{"role": "user", "content": f"Question {i}"}],
                "max_tokens": 4,
            },
        }
        for i in range(4)
    ]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    upload = client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"suite": "e2e"},
    )
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None and batch.request_counts.completed == 4
    assert batch.output_file_id is not None and batch.error_file_id is None
    results = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(r["custom_id"] for r in results) == ["q0", "q1", "q2", "q3"]
    for result in results:
        body = result["response"]["body"]
        assert result["response"]["status_code"] == 200
        assert body["usage"]["completion_tokens"] == 4 and body["model"] == TINY_MODEL_NAME
    assert batch.id in [b.id for b in client.batches.list()]


def test_a_batch_survives_kill_9(tmp_path_factory: pytest.TempPathFactory) -> None:
    """SIGKILL the whole server (engine included) while a 200-line batch runs; a new server on
    the same state folder finishes it with each custom_id exactly once."""
    work = tmp_path_factory.mktemp("crash")
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": f"n{i}"}], "max_tokens": 2},
        }
        for i in range(200)
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
        assert batch.request_counts.completed < 200, "finished before the crash"
        os.killpg(first.pid, signal.SIGKILL)  # no drain, no shutdown: a crash
    with running_server(work) as second:
        client = openai.OpenAI(base_url=second.v1, api_key="unused", max_retries=0, timeout=60)
        deadline = time.monotonic() + 240
        while batch.status != "completed":
            assert time.monotonic() < deadline, batch
            time.sleep(0.5)
            batch = client.batches.retrieve(batch.id)
        assert batch.request_counts is not None and batch.request_counts.completed == 200
        assert batch.output_file_id is not None
        text = client.files.content(batch.output_file_id).text
        ids = [json.loads(x)["custom_id"] for x in text.splitlines()]
        assert len(ids) == 200 and set(ids) == {f"c{i}" for i in range(200)}
