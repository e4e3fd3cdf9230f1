"""Shutting down without cutting anyone off silently.

On SIGTERM (`docker stop`, Kubernetes) the server drains: `/ready` turns 503 at once, new
requests are refused with 503 `server_shutting_down`, and requests under way go on generating
for the grace period. A request still generating when the grace period is nearly over ends
properly: a stream gets a final OpenAI-style error event (`server_shutting_down`) and `[DONE]`,
a non-streamed request a 503 envelope — never a bare connection close. The HTTP server's own
hard deadline (uvicorn's) is `grace_s`; ours comes `MARGIN_S` before it, so those last events
are written before any task would be cancelled.

`Drain.interruptible` wraps an engine output stream: it yields the outputs and raises
`ServerShuttingDown` when the drain deadline passes while it waits. Closing the wrapper closes
the engine stream (which aborts the engine request).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import suppress
from typing import TypeVar

from server.errors import ServerShuttingDown

T = TypeVar("T")
MARGIN_S = 1.0


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.deadline: float | None = None  # time.monotonic() when generation is cut
        self._cut: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the server runs on (the lifespan calls this)."""
        self._loop = loop

    def begin(self, grace_s: float) -> None:
        """Start draining. Safe from a signal handler: the loop does the work."""
        if self.draining:
            return
        self.draining = True
        cut_in = max(0.0, grace_s - MARGIN_S)
        self.deadline = time.monotonic() + cut_in
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._schedule_cut, cut_in)

    def _schedule_cut(self, delay: float) -> None:
        assert self._loop is not None
        self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        if self._cut is not None and not self._cut.done():
            self._cut.set_result(None)

    def check(self) -> None:
        """New work is refused while draining."""
        if self.draining:
            raise ServerShuttingDown("The server is shutting down; retry on another replica.")

    def _cut_future(self) -> asyncio.Future[None]:
        if self._cut is None:
            self._cut = asyncio.get_running_loop().create_future()
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self._cut.set_result(None)
        return self._cut

    async def interruptible(self, source: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """`source`'s items until it ends or the drain deadline passes (ServerShuttingDown).
        Owns `source`: closing this generator closes it."""
        cut = self._cut_future()
        try:
            while True:
                step = asyncio.ensure_future(anext(source))
                try:
                    await asyncio.wait((step, cut), return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    # The step runs `source`: let it take the cancellation before the finally
                    # closes `source` (aclose() of a generator still running fails).
                    step.cancel()
                    await asyncio.wait((step,))
                    raise
                if not step.done():
                    step.cancel()
                    with suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
                    raise ServerShuttingDown(
                        "The server is shutting down and the grace period ended before this "
                        "request finished; retry on another replica."
                    )
                try:
                    item = step.result()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            await source.aclose()
