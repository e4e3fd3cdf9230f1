"""Response helpers for long requests: SSE responses that always close their generator, and
non-streaming handlers that stop when the client hangs up.

Either way the engine generator is closed, which aborts the engine request, so a client that
goes away stops costing GPU time within one engine step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import TypeVar

from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStreamResponse(StreamingResponse):
    """`text/event-stream` whose body generator is closed however the response ends.

    Starlette cancels the sending task on disconnect but leaves the generator to the garbage
    collector; closing it here runs its `finally` (engine abort, admission release) at once.
    """

    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncGenerator[str, None], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(events, headers={**_SSE_HEADERS, **(headers or {})})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read (FastAPI parsed it), so the next message can only be the
    # disconnect; reading here consumes nothing the handler needs.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Callable[[], Awaitable[T]]) -> T | None:
    """Run `work()`; if the client disconnects first, cancel it and return None."""
    task = asyncio.ensure_future(work())
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (watcher, task):
            if not pending.done():
                pending.cancel()
        await asyncio.gather(watcher, task, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()
