"""The engine supervisor: restarts a dead engine with backoff up to its budget, then gives up
(the server exits non-zero); a failed restart counts against the budget; a failed first start
gives up at once. Driven with the stand-in engine, whose death is a flag."""

from __future__ import annotations

import asyncio

import pytest

from server.engine.supervisor import EngineSupervisor
from server.metrics import ENGINE_RESTARTS
from server.model.tokenizer import TikTokenTokenizer
from tests.fake_engine import FakeEngine

pytestmark = pytest.mark.asyncio


class Flaky(FakeEngine):
    """Counts starts and stops; `fail_starts` of the next starts raise."""

    def __init__(self, tokenizer: TikTokenTokenizer) -> None:
        super().__init__(tokenizer)
        self.starts = self.stops = 0
        self.fail_starts = 0

    async def start(self) -> None:
        self.starts += 1
        if self.fail_starts:
            self.fail_starts -= 1
            self.alive = False
            raise RuntimeError("no luck")
        await super().start()

    async def stop(self) -> None:
        self.stops += 1
        await super().stop()


async def wait_until(check: object, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def restarts_counted() -> float:
    return ENGINE_RESTARTS._value.get()  # type: ignore[attr-defined,no-any-return]


async def test_a_dead_engine_is_restarted_until_the_budget_is_spent(
    kimi_tokenizer: TikTokenTokenizer,
) -> None:
    engine = Flaky(kimi_tokenizer)
    gave_up = asyncio.Event()
    supervisor = EngineSupervisor(
        engine, restarts=2, on_give_up=gave_up.set, poll_s=0.01, backoff_s=(0.01, 0.02)
    )
    counted = restarts_counted()
    task = asyncio.create_task(supervisor.run())
    await wait_until(engine.is_ready)
    for n in (1, 2):
        engine.alive = False  # the engine process died
        await wait_until(lambda n=n: engine.starts == n + 1 and engine.is_ready())
        assert engine.stops == n and not gave_up.is_set()
    assert restarts_counted() - counted == 2
    engine.alive = False  # third death: no restarts left
    await asyncio.wait_for(gave_up.wait(), 2)
    await asyncio.wait_for(task, 2)
    assert engine.starts == 3


async def test_a_failed_restart_counts_and_the_next_one_may_succeed(
    kimi_tokenizer: TikTokenTokenizer,
) -> None:
    engine = Flaky(kimi_tokenizer)
    gave_up = asyncio.Event()
    supervisor = EngineSupervisor(
        engine, restarts=3, on_give_up=gave_up.set, poll_s=0.01, backoff_s=(0.01,)
    )
    task = asyncio.create_task(supervisor.run())
    await wait_until(engine.is_ready)
    engine.fail_starts = 1
    engine.alive = False
    await wait_until(lambda: engine.starts == 3 and engine.is_ready())
    assert supervisor.restarts_left == 1 and not gave_up.is_set()
    task.cancel()


async def test_no_restarts_means_exit_at_the_first_death(
    kimi_tokenizer: TikTokenTokenizer,
) -> None:
    engine = Flaky(kimi_tokenizer)
    gave_up = asyncio.Event()
    supervisor = EngineSupervisor(engine, restarts=0, on_give_up=gave_up.set, poll_s=0.01)
    task = asyncio.create_task(supervisor.run())
    await wait_until(engine.is_ready)
    engine.alive = False
    await asyncio.wait_for(gave_up.wait(), 2)
    await task
    assert engine.starts == 1 and engine.stops == 0


async def test_a_failed_first_start_gives_up(kimi_tokenizer: TikTokenTokenizer) -> None:
    engine = Flaky(kimi_tokenizer)
    engine.fail_starts = 1
    gave_up = asyncio.Event()
    await EngineSupervisor(engine, restarts=5, on_give_up=gave_up.set, poll_s=0.01).run()
    assert gave_up.is_set() and engine.starts == 1
