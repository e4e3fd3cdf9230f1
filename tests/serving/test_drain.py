"""The drain's cut: an engine stream wrapped by `Drain.interruptible` runs to its end unless the
drain deadline passes while it waits; then it raises `server_shutting_down` and closes the
stream (the engine request is aborted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from server.errors import ServerShuttingDown
from server.serving.drain import Drain

pytestmark = pytest.mark.asyncio


class Source:
    def __init__(self, n: int, delay: float) -> None:
        self.n, self.delay = n, delay
        self.closed = False
        self.made = 0

    async def items(self) -> AsyncGenerator[int, None]:
        try:
            for i in range(self.n):
                await asyncio.sleep(self.delay)
                self.made += 1
                yield i
        finally:
            self.closed = True


async def test_without_a_drain_everything_comes_through() -> None:
    drain = Drain()
    drain.bind(asyncio.get_running_loop())
    source = Source(20, 0.0)
    assert [i async for i in drain.interruptible(source.items())] == list(range(20))
    assert source.closed
    drain.check()  # not draining: new work is welcome


async def test_the_deadline_cuts_a_waiting_stream_and_closes_it() -> None:
    drain = Drain()
    drain.bind(asyncio.get_running_loop())
    source = Source(1000, 0.01)
    got: list[int] = []
    with pytest.raises(ServerShuttingDown) as info:
        async for item in drain.interruptible(source.items()):
            got.append(item)
            if item == 3:
                drain.begin(grace_s=1.2)  # the cut comes 0.2 s later
    assert info.value.status_code == 503 and info.value.code == "server_shutting_down"
    assert source.closed and 5 < len(got) < 100
    made = source.made
    await asyncio.sleep(0.05)
    assert source.made == made  # nothing generated after the cut
    with pytest.raises(ServerShuttingDown):
        drain.check()


async def test_streams_that_finish_within_the_grace_period_finish() -> None:
    drain = Drain()
    drain.bind(asyncio.get_running_loop())
    drain.begin(grace_s=5.0)
    source = Source(10, 0.01)
    assert [i async for i in drain.interruptible(source.items())] == list(range(10))


async def test_a_stream_started_after_the_deadline_is_cut_at_once() -> None:
    drain = Drain()
    drain.bind(asyncio.get_running_loop())
    drain.begin(grace_s=0.0)
    await asyncio.sleep(0.01)
    source = Source(10, 0.5)
    with pytest.raises(ServerShuttingDown):
        async for _ in drain.interruptible(source.items()):
            pass
    assert source.closed


async def test_cancelling_the_consumer_mid_step_closes_the_stream_cleanly() -> None:
    """A task consuming the stream is cancelled while the source is mid-step (Ctrl-C, a client
    gone): the cancellation propagates as such and the source is closed, with no
    "aclose(): asynchronous generator is already running"."""
    drain = Drain()
    drain.bind(asyncio.get_running_loop())
    source = Source(1000, 0.05)

    async def consume() -> None:
        async for _ in drain.interruptible(source.items()):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.12)  # inside the third item's sleep
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed and source.made == 2
