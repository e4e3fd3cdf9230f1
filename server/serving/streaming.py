"""Server-sent events as the OpenAI API frames them, and the merge of several engine streams.

Services yield finished `data: …` events; `server/api/streaming.py` sends them as a
`text/event-stream` response. A failure after the stream started becomes one error event
carrying the OpenAI envelope, followed by `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any, TypeVar

from server.errors import to_api_error
from server.metrics import record_rejection

T = TypeVar("T")


def sse_event(payload: str) -> str:
    return f"data: {payload}\n\n"


SSE_DONE = "data: [DONE]\n\n"


_END = object()


async def merge_streams(
    streams: Sequence[AsyncGenerator[T, None]],
) -> AsyncGenerator[tuple[int, T], None]:
    """Interleave several engine streams as (stream index, item), in arrival order.

    The first failure is raised; leaving early (or failing) cancels and closes every stream,
    which aborts their engine requests.
    """
    queue: asyncio.Queue[tuple[int, Any, Exception | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[T, None]) -> None:
        try:
            async with aclosing(stream):
                async for item in stream:
                    await queue.put((index, item, None))
            await queue.put((index, _END, None))
        except Exception as exc:
            await queue.put((index, _END, exc))

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item, error = await queue.get()
            if error is not None:
                raise error
            if item is _END:
                remaining -= 1
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sse_error_event(err: BaseException) -> str:
    """An SSE `data:` event carrying the envelope, for failures after a stream has started."""
    api_err = to_api_error(err)
    record_rejection(api_err.code)
    return sse_event(api_err.envelope().model_dump_json())
