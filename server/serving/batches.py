"""The Batches API and its runner: batch input files (server/serving/files.py) run on the same
engine as interactive traffic, in the background, without starving it.

Pacing: at most `--batch-concurrency` batch requests at a time, and a new one starts only while
the engine has a free sequence slot (interactive requests never queue behind more than that
many batch requests); with `--scheduling-policy priority` they also run at a lower priority.
Each finished request is committed at once (server/store/batches.py), so a batch interrupted by
a crash or a restart resumes where it stopped and every `custom_id` is answered exactly once.
Requests the server cannot run right now (engine starting or dead, overloaded, shutting down)
are retried later, not failed. Output and error files are written in OpenAI's line format when
the batch finalizes; cancelling stops new requests, lets running ones finish, and finalizes
with what was done.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from server.errors import (
    APIError,
    EngineDead,
    EngineStarting,
    FileNotFound,
    InvalidRequest,
    ServerOverloaded,
    ServerShuttingDown,
)
from server.protocol.batches import (
    Batch,
    BatchError,
    BatchErrors,
    BatchList,
    CreateBatchRequest,
    RequestCounts,
)
from server.protocol.chat import ChatCompletionRequest
from server.protocol.completions import CompletionRequest
from server.protocol.responses import ResponsesRequest
from server.serving.files import Files
from server.store.batches import BatchStore, StoredBatch

logger = logging.getLogger(__name__)

WINDOW_S = {"24h": 24 * 3600}
BATCH_PRIORITY = 10  # later than interactive requests (0) under --scheduling-policy priority
_RETRY_LATER = (EngineDead, EngineStarting, ServerOverloaded, ServerShuttingDown)

# endpoint -> (request model, service name on the runner)
ENDPOINTS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/responses": ResponsesRequest,
}

Service = Callable[[BaseModel, str], Awaitable[BaseModel]]


class NotFoundBatch(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "batch_not_found"


def batch_object(stored: StoredBatch) -> Batch:
    errors = None
    if stored.errors:
        errors = BatchErrors(data=[BatchError(**e) for e in stored.errors])
    fields: dict[str, Any] = {
        "id": stored.id,
        "endpoint": stored.endpoint,
        "errors": errors,
        "input_file_id": stored.input_file_id,
        "completion_window": stored.completion_window,
        "status": stored.status,
        "output_file_id": stored.output_file_id,
        "error_file_id": stored.error_file_id,
        "created_at": stored.created_at,
        "expires_at": stored.expires_at,
        "request_counts": RequestCounts(
            total=stored.total, completed=stored.completed, failed=stored.failed
        ),
        "metadata": stored.metadata,
        **stored.times,
    }
    return Batch.model_validate(fields)


class Batches:
    def __init__(
        self,
        store: BatchStore,
        files: Files,
        services: dict[str, Service],
        *,
        concurrency: int,
        has_free_slot: Callable[[], bool],
        priority: int = 0,
        poll_s: float = 0.2,
    ) -> None:
        self.store, self.files = store, files
        self.services = services
        self.concurrency = concurrency
        self.has_free_slot = has_free_slot
        self.priority = priority
        self.poll_s = poll_s
        self._wake = asyncio.Event()

    # -- API --------------------------------------------------------------------------------
    async def create(self, request: CreateBatchRequest) -> Batch:
        try:
            stored_file = await self.files.get(request.input_file_id)
        except FileNotFound as exc:
            raise exc.with_param("input_file_id") from None
        if stored_file.purpose != "batch":
            raise InvalidRequest(
                f"File {request.input_file_id} was uploaded for '{stored_file.purpose}', not "
                "'batch'.",
                param="input_file_id",
                code="invalid_value",
            )
        lines = await self._lines(request.input_file_id)
        other = next((n for n, line in lines if line["url"] != request.endpoint), None)
        if other is not None:
            raise InvalidRequest(
                f"Line {other} of the input file is for another endpoint than "
                f"'{request.endpoint}'.",
                param="endpoint",
                code="invalid_value",
            )
        stored = await asyncio.to_thread(
            self.store.create,
            endpoint=request.endpoint,
            input_file_id=request.input_file_id,
            completion_window=request.completion_window,
            window_s=WINDOW_S[request.completion_window],
            metadata=request.metadata,
        )
        self._wake.set()
        return batch_object(stored)

    async def get(self, batch_id: str) -> Batch:
        return batch_object(await self._stored(batch_id))

    async def _stored(self, batch_id: str) -> StoredBatch:
        stored = await asyncio.to_thread(self.store.get, batch_id)
        if stored is None:
            raise NotFoundBatch(f"No such Batch object: {batch_id}", param="batch_id")
        return stored

    async def page(self, *, limit: int, after: str | None) -> BatchList:
        if not 1 <= limit <= 100:
            raise InvalidRequest(
                "'limit' must be between 1 and 100.", param="limit", code="invalid_value"
            )
        rows, more = await asyncio.to_thread(self.store.page, limit=limit, after=after)
        data = [batch_object(r) for r in rows]
        return BatchList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=more,
        )

    async def cancel(self, batch_id: str) -> Batch:
        await self._stored(batch_id)
        moved = await asyncio.to_thread(
            self.store.set_status,
            batch_id,
            "cancelling",
            only_from=("validating", "in_progress"),
        )
        stored = await self._stored(batch_id)
        if not moved and stored.status not in ("cancelling", "cancelled"):
            raise InvalidRequest(
                f"Batch {batch_id} is {stored.status}; only a running batch can be cancelled.",
                param="batch_id",
                code="invalid_state",
            )
        self._wake.set()
        return batch_object(stored)

    # -- runner -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Work through unfinished batches, oldest first, until cancelled."""
        while True:
            for batch_id in await asyncio.to_thread(self.store.active):
                try:
                    await self._run_one(batch_id)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("Batch %s stopped on an error; it will be resumed", batch_id)
            self._wake.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
            # that comes as the wake-up does (the server could then not stop its runner).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._wake.wait()

    async def _run_one(self, batch_id: str) -> None:
        stored = await self._stored(batch_id)
        if stored.status == "validating":
            try:
                lines = await self._lines(stored.input_file_id)
            except APIError as exc:
                await asyncio.to_thread(
                    self.store.fail, batch_id, [{"code": exc.code, "message": exc.message}]
                )
                return
            await asyncio.to_thread(self.store.set_total, batch_id, len(lines))
            await asyncio.to_thread(
                self.store.set_status, batch_id, "in_progress", only_from=("validating",)
            )
            stored = await self._stored(batch_id)
        if stored.status == "in_progress":
            await self._requests(stored)
            stored = await self._stored(batch_id)
        if stored.status in ("in_progress", "cancelling", "finalizing"):
            await self._finalize(stored)

    async def _requests(self, batch: StoredBatch) -> None:
        """Run every request without a result yet; requests the server could not take (busy,
        restarting) are tried again until all have one, or the batch stops running."""
        lines = await self._lines(batch.input_file_id)
        while True:
            done = await asyncio.to_thread(self.store.done_ids, batch.id)
            todo = [(n, line) for n, line in lines if line["custom_id"] not in done]
            if not todo or not await self._launch(batch, todo):
                return
            await asyncio.sleep(self.poll_s)

    async def _launch(self, batch: StoredBatch, todo: list[tuple[int, dict[str, Any]]]) -> bool:
        """Start `todo` at the allowed pace and wait for them; False once the batch is no
        longer running (cancelling, expired)."""
        running: set[asyncio.Task[None]] = set()
        try:
            for number, line in todo:
                while True:
                    current = await self._stored(batch.id)
                    if current.status != "in_progress":
                        return False
                    if time.time() > current.expires_at:  # finalized as expired
                        await asyncio.to_thread(self.store.set_status, batch.id, "finalizing")
                        return False
                    if len(running) < self.concurrency and self.has_free_slot():
                        break
                    await asyncio.sleep(self.poll_s)
                task = asyncio.create_task(self._request(batch, number, line))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        return True

    async def _request(self, batch: StoredBatch, number: int, line: dict[str, Any]) -> None:
        custom_id = line["custom_id"]
        request_id = f"batch_req_{secrets.token_hex(12)}"
        model = ENDPOINTS[batch.endpoint]
        body = dict(line["body"])
        if self.priority and batch.endpoint != "/v1/responses":
            body.setdefault("priority", self.priority)
        try:
            request = model.model_validate(body)
            answer = await self.services[batch.endpoint](request, request_id)
        except _RETRY_LATER as exc:
            logger.info("Batch %s line %d: %s; will retry", batch.id, number, exc.code)
            await asyncio.sleep(self.poll_s)
            return
        except APIError as exc:
            body_out = exc.envelope().model_dump()
            result = result_line(request_id, custom_id, exc.status_code, body_out)
            await asyncio.to_thread(
                self.store.add_result, batch.id, custom_id, number, False, result
            )
            return
        except Exception as exc:  # a validation error the upload check did not foresee
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            envelope = {"error": {"message": message, "type": "invalid_request_error"}}
            result = result_line(request_id, custom_id, 400, envelope)
            await asyncio.to_thread(
                self.store.add_result, batch.id, custom_id, number, False, result
            )
            return
        result = result_line(request_id, custom_id, 200, answer.model_dump(exclude_none=True))
        await asyncio.to_thread(self.store.add_result, batch.id, custom_id, number, True, result)

    async def _finalize(self, batch: StoredBatch) -> None:
        ending = batch.status
        if ending == "in_progress":
            await asyncio.to_thread(self.store.set_status, batch.id, "finalizing")
        unfinished = batch.completed + batch.failed < batch.total
        final = "completed"
        if ending == "cancelling":
            final = "cancelled"
        elif unfinished and time.time() > batch.expires_at:
            final = "expired"
        outputs = await asyncio.to_thread(self.store.results, batch.id, True)
        errors = await asyncio.to_thread(self.store.results, batch.id, False)
        output_id = await self._write(batch, outputs, "output")
        error_id = await self._write(batch, errors, "errors")
        await asyncio.to_thread(self.store.finish, batch.id, final, output_id, error_id)

    async def _write(self, batch: StoredBatch, lines: list[str], kind: str) -> str | None:
        if not lines:
            return None
        data = "".join(line + "\n" for line in lines).encode()
        stored = await self.files.upload(
            io.BytesIO(data), filename=f"{batch.id}_{kind}.jsonl", purpose="batch_output"
        )
        return stored.id

    async def _lines(self, file_id: str) -> list[tuple[int, dict[str, Any]]]:
        try:
            data = await self.files.read(file_id, self.files.max_bytes)
        except FileNotFound as exc:
            raise exc.with_param("input_file_id") from None
        out = []
        for number, raw in enumerate(data.splitlines(), start=1):
            if raw.strip():
                out.append((number, json.loads(raw)))
        return out


def result_line(
    request_id: str, custom_id: str, status: int, body: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": request_id,
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }
