from __future__ import annotations

import asyncio

import pytest

from server.aio import gather_or_cancel


@pytest.mark.asyncio
async def test_results_in_order() -> None:
    async def value(v: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return v

    assert await gather_or_cancel([value(1, 0.02), value(2, 0.0), value(3, 0.01)]) == [1, 2, 3]


@pytest.mark.asyncio
async def test_first_failure_cancels_the_rest_and_is_raised_unwrapped() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def fail() -> None:
        await asyncio.sleep(0.01)
        raise KeyError("bad part")

    with pytest.raises(KeyError, match="bad part"):
        await gather_or_cancel([slow(), fail()])
    assert cancelled.is_set()
