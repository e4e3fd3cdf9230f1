"""The Files API: store uploads (server/store/files.py), check batch input line by line.

A `batch` file must be JSONL in OpenAI's batch input format — per line an object with a unique
`custom_id`, `method: "POST"`, a `url` this server runs (/v1/chat/completions, /v1/completions,
/v1/responses) and a `body` that is a valid, non-streaming request for it — and a bad line is
refused at upload with its line number. Other purposes (`user_data` for PDFs that chat
requests name by `file_id`, …) are stored as they are.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, BinaryIO

from pydantic import BaseModel, ValidationError

from server.errors import FileNotFound, InvalidRequest, RequestTooLarge
from server.protocol.chat import ChatCompletionRequest
from server.protocol.completions import CompletionRequest
from server.protocol.files import FileDeleted, FileList, FileObject
from server.protocol.responses import ResponsesRequest
from server.store.files import FileStore, StoredFile

BATCH_ENDPOINTS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/responses": ResponsesRequest,
}
MAX_BATCH_LINES = 50_000  # OpenAI's limit per batch input file
MAX_LIST = 10_000


def file_object(stored: StoredFile) -> FileObject:
    return FileObject(
        id=stored.id,
        bytes=stored.bytes,
        created_at=stored.created_at,
        filename=stored.filename,
        purpose=stored.purpose,
    )


def check_batch_file(source: BinaryIO) -> int:
    """Validate batch input JSONL; returns the number of requests. Blocking."""
    seen: set[str] = set()
    count = 0
    for number, raw in enumerate(source, start=1):
        if not raw.strip():
            continue
        count += 1
        if count > MAX_BATCH_LINES:
            raise _bad_line(number, f"a batch holds at most {MAX_BATCH_LINES} requests")
        try:
            line = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _bad_line(number, f"not valid JSON ({exc})") from None
        _check_line(number, line, seen)
    if count == 0:
        raise InvalidRequest("The batch file holds no requests.", param="file")
    return count


def _check_line(number: int, line: Any, seen: set[str]) -> None:
    if not isinstance(line, dict):
        raise _bad_line(number, "each line must be a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _bad_line(number, "'custom_id' must be a non-empty string")
    if custom_id in seen:
        raise _bad_line(number, f"'custom_id' {custom_id!r} appears twice")
    seen.add(custom_id)
    if line.get("method") != "POST":
        raise _bad_line(number, "'method' must be \"POST\"")
    url = line.get("url")
    model = BATCH_ENDPOINTS.get(url) if isinstance(url, str) else None
    if model is None:
        raise _bad_line(number, f"'url' must be one of {', '.join(BATCH_ENDPOINTS)}")
    unknown = set(line) - {"custom_id", "method", "url", "body"}
    if unknown:
        raise _bad_line(number, f"unknown field {sorted(unknown)[0]!r}")
    body = line.get("body")
    if not isinstance(body, dict):
        raise _bad_line(number, "'body' must be a JSON object")
    if body.get("stream"):
        raise _bad_line(number, "batch requests cannot stream")
    try:
        model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _bad_line(number, f"body.{where}: {first['msg']}") from None


def _bad_line(number: int, reason: str) -> InvalidRequest:
    return InvalidRequest(
        f"Line {number} of the batch file is invalid: {reason}.",
        param="file",
        code="invalid_batch_line",
    )


class Files:
    def __init__(self, store: FileStore, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes

    async def upload(self, source: BinaryIO, *, filename: str, purpose: str) -> FileObject:
        def work() -> StoredFile:
            if purpose == "batch":
                check_batch_file(source)
                source.seek(0)
            try:
                return self.store.add(
                    source, filename=filename, purpose=purpose, max_bytes=self.max_bytes
                )
            except ValueError:
                raise RequestTooLarge(
                    f"The file is larger than this server's limit of {self.max_bytes} bytes "
                    "(--max-file-bytes)."
                ) from None

        return file_object(await asyncio.to_thread(work))

    async def get(self, file_id: str) -> FileObject:
        return file_object(await self._stored(file_id))

    async def _stored(self, file_id: str) -> StoredFile:
        stored = await asyncio.to_thread(self.store.get, file_id)
        if stored is None:
            raise FileNotFound(f"No such File object: {file_id}", param="file_id")
        return stored

    async def content_path(self, file_id: str) -> tuple[StoredFile, str]:
        stored = await self._stored(file_id)
        return stored, str(self.store.path(stored.id))

    async def read(self, file_id: str, max_bytes: int) -> bytes:
        """The content of a stored file (for a chat `file` part naming it)."""
        stored, path = await self.content_path(file_id)
        if stored.bytes > max_bytes:
            raise RequestTooLarge(
                f"File {file_id} is {stored.bytes} bytes; media may be at most {max_bytes} bytes."
            )
        return await asyncio.to_thread(self.store.path(stored.id).read_bytes)

    async def list(
        self, *, purpose: str | None, limit: int, after: str | None, order: str
    ) -> FileList:
        if not 1 <= limit <= MAX_LIST:
            raise InvalidRequest(
                f"'limit' must be between 1 and {MAX_LIST}.", param="limit", code="invalid_value"
            )
        rows, more = await asyncio.to_thread(
            self.store.list, purpose=purpose, limit=limit, after=after, newest_first=order == "desc"
        )
        data = [file_object(r) for r in rows]
        return FileList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=more,
        )

    async def delete(self, file_id: str) -> FileDeleted:
        if not await asyncio.to_thread(self.store.delete, file_id):
            raise FileNotFound(f"No such File object: {file_id}", param="file_id")
        return FileDeleted(id=file_id)
