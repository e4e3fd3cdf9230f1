"""The Batches API through the real server and the official SDK: upload a batch file, create
the batch, watch it complete, read the output file."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from server.settings import TINY_MODEL_NAME
from tests.e2e.conftest import API_KEY, RunningServer

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
