"""The Batches API over the stand-in engine: a batch runs to `completed` with every custom_id
answered exactly once (output and error files in OpenAI's line format); failures land in the
error file; cancelling keeps what was done; a batch interrupted by a restart resumes without
running any request twice; batch requests never run more than `--batch-concurrency` at a time;
bad creations get envelopes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.app import create_app
from tests.api.conftest import MODEL, api_settings
from tests.fake_engine import FakeEngine

pytestmark = pytest.mark.asyncio


def line(custom_id: str, text: str = "Hi", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": text}], **body},
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


@contextlib.asynccontextmanager
async def served(
    tokenizer: Any, state: Path, **engine_kwargs: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeEngine]]:
    """The app with its batch runner going (ASGITransport runs no lifespan)."""
    engine = FakeEngine(tokenizer, **engine_kwargs)
    settings = api_settings(state_dir=state, batch_concurrency=2)
    app = create_app(settings, engine)
    await engine.start()
    runner = asyncio.create_task(app.state.batches.run())
    app.state.batches.poll_s = 0.01
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30
        ) as client:
            yield client, engine
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def start_batch(client: httpx.AsyncClient, lines: list[dict[str, Any]]) -> dict[str, Any]:
    upload = await client.post(
        "/v1/files", files={"file": ("in.jsonl", jsonl(lines))}, data={"purpose": "batch"}
    )
    assert upload.status_code == 200, upload.text
    created = await client.post(
        "/v1/batches",
        json={
            "input_file_id": upload.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"job": "test"},
        },
    )
    assert created.status_code == 200, created.text
    batch: dict[str, Any] = created.json()
    assert batch["status"] == "validating" and batch["object"] == "batch"
    return batch


async def wait_status(
    client: httpx.AsyncClient, batch_id: str, statuses: tuple[str, ...], timeout: float = 20
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        batch: dict[str, Any] = (await client.get(f"/v1/batches/{batch_id}")).json()
        if batch["status"] in statuses:
            return batch
        assert asyncio.get_running_loop().time() < deadline, batch
        await asyncio.sleep(0.02)


async def file_lines(client: httpx.AsyncClient, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.get(f"/v1/files/{file_id}/content")
    return [json.loads(x) for x in content.text.splitlines()]


async def test_a_batch_runs_to_completion(kimi_tokenizer: Any, tmp_path: Path) -> None:
    lines = [line(f"req-{i}", f"Question {i}") for i in range(6)]
    lines.append(line("bad-model", model="no-such-model"))
    async with served(kimi_tokenizer, tmp_path) as (client, engine):
        batch = await start_batch(client, lines)
        done = await wait_status(client, batch["id"], ("completed",))
        assert done["request_counts"] == {"total": 7, "completed": 6, "failed": 1}
        assert done["metadata"] == {"job": "test"}
        assert done["in_progress_at"] and done["finalizing_at"] and done["completed_at"]
        outputs = await file_lines(client, done["output_file_id"])
        assert [o["custom_id"] for o in outputs] == [f"req-{i}" for i in range(6)]
        for o in outputs:
            assert o["response"]["status_code"] == 200 and o["error"] is None
            body = o["response"]["body"]
            assert body["object"] == "chat.completion"
            assert body["choices"][0]["message"]["content"] == "Hello world!"
        (error,) = await file_lines(client, done["error_file_id"])
        assert error["custom_id"] == "bad-model"
        assert error["response"]["status_code"] == 404
        assert error["response"]["body"]["error"]["code"] == "model_not_found"
        output_file = (await client.get(f"/v1/files/{done['output_file_id']}")).json()
        assert output_file["purpose"] == "batch_output"
        assert len(engine.requests) == 6
        listed = (await client.get("/v1/batches")).json()
        assert [b["id"] for b in listed["data"]] == [batch["id"]]


async def test_batch_requests_stay_within_their_concurrency(
    kimi_tokenizer: Any, tmp_path: Path
) -> None:
    lines = [line(f"r{i}") for i in range(8)]
    async with served(kimi_tokenizer, tmp_path, step_delay=0.01) as (client, engine):
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                running = len(engine.requests) - len(engine.closed)
                most = max(most, running)
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        batch = await start_batch(client, lines)
        interactive = await client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "now"}]},
        )
        assert interactive.status_code == 200
        await wait_status(client, batch["id"], ("completed",))
        watcher.cancel()
        assert 0 < most <= 3  # 2 batch requests + the interactive one, never more


async def test_cancel_keeps_what_was_done(kimi_tokenizer: Any, tmp_path: Path) -> None:
    lines = [line(f"r{i}") for i in range(40)]
    async with served(kimi_tokenizer, tmp_path, step_delay=0.02) as (client, _):
        batch = await start_batch(client, lines)
        await wait_status(client, batch["id"], ("in_progress",))
        await asyncio.sleep(0.3)
        cancelling = await client.post(f"/v1/batches/{batch['id']}/cancel")
        assert cancelling.status_code == 200
        assert cancelling.json()["status"] in ("cancelling", "cancelled")
        done = await wait_status(client, batch["id"], ("cancelled",))
        counts = done["request_counts"]
        assert counts["total"] == 40 and 0 < counts["completed"] < 40
        outputs = await file_lines(client, done["output_file_id"])
        assert len(outputs) == counts["completed"]
        again = await client.post(f"/v1/batches/{batch['id']}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_a_restart_resumes_and_runs_each_request_once(
    kimi_tokenizer: Any, tmp_path: Path
) -> None:
    lines = [line(f"r{i}") for i in range(30)]
    async with served(kimi_tokenizer, tmp_path, step_delay=0.02) as (client, first):
        batch = await start_batch(client, lines)
        await wait_status(client, batch["id"], ("in_progress",))
        while len(first.requests) < 6:
            await asyncio.sleep(0.01)
    # the server is gone mid-batch (its runner cancelled); a new one on the same state
    async with served(kimi_tokenizer, tmp_path) as (client, second):
        done = await wait_status(client, batch["id"], ("completed",))
        outputs = await file_lines(client, done["output_file_id"])
        ids = [o["custom_id"] for o in outputs]
        assert sorted(ids) == sorted(f"r{i}" for i in range(30)) and len(set(ids)) == 30
        finished_before = 30 - len(second.requests)
        assert finished_before >= 1  # the first server's results were kept, not rerun
        assert done["request_counts"] == {"total": 30, "completed": 30, "failed": 0}


@pytest.mark.parametrize(
    ("change", "status", "code", "param"),
    [
        ({"input_file_id": "file-nope"}, 404, "file_not_found", "input_file_id"),
        ({"endpoint": "/v1/completions"}, 400, "invalid_value", "endpoint"),
        ({"completion_window": "1h"}, 400, None, "completion_window"),
        ({"endpoint": "/v1/embeddings"}, 400, None, "endpoint"),
    ],
)
async def test_bad_creations(
    kimi_tokenizer: Any,
    tmp_path: Path,
    change: dict[str, Any],
    status: int,
    code: str | None,
    param: str,
) -> None:
    async with served(kimi_tokenizer, tmp_path) as (client, _):
        upload = await client.post(
            "/v1/files", files={"file": ("in.jsonl", jsonl([line("a")]))}, data={"purpose": "batch"}
        )
        body = {
            "input_file_id": upload.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            **change,
        }
        response = await client.post("/v1/batches", json=body)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["param"] == param and (code is None or error["code"] == code)
        missing = await client.get("/v1/batches/batch_nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "batch_not_found"


async def test_an_expired_batch_keeps_what_was_done(kimi_tokenizer: Any, tmp_path: Path) -> None:
    lines = [line(f"r{i}") for i in range(40)]
    async with served(kimi_tokenizer, tmp_path, step_delay=0.02) as (client, _):
        batch = await start_batch(client, lines)
        await wait_status(client, batch["id"], ("in_progress",))
        while (await client.get(f"/v1/batches/{batch['id']}")).json()["request_counts"][
            "completed"
        ] < 2:
            await asyncio.sleep(0.01)
        store = client._transport.app.state.batches.store  # type: ignore[attr-defined]
        with store._lock:  # the 24 h window passes
            store._db.execute("UPDATE batches SET expires_at = 0 WHERE id = ?", (batch["id"],))
        done = await wait_status(client, batch["id"], ("expired",))
        counts = done["request_counts"]
        assert done["expired_at"] and 0 < counts["completed"] < 40
        assert len(await file_lines(client, done["output_file_id"])) == counts["completed"]
