"""`kimi-vl-batch`'s Ctrl-C and engine-death handling, with real signals and no engine: a first
SIGINT cancels the run (which still cleans up), an engine death right after it (the terminal's
SIGINT reaches the engine's processes too) counts as the interruption, a second SIGINT stops at
once, and each ending has its exit status and message. The whole runner under Ctrl-C is
tests/e2e/test_batch_cli.py."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from server import batch_cli
from server.batch_cli import INTERRUPTED, Interrupt
from server.engine.contract import EngineDeadError


def _sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)


async def _sleep_through_sigint() -> list[str]:
    seen = []
    interrupt = Interrupt(asyncio.current_task())
    try:
        _sigint()
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        seen.append(f"cancelled, received={interrupt.received}")
        interrupt.swallow()
        await asyncio.sleep(0.01)  # clean-up awaits still run
        seen.append("cleaned up")
    finally:
        interrupt.restore()
    return seen


def test_a_sigint_cancels_the_run_and_its_clean_up_still_runs() -> None:
    before = signal.getsignal(signal.SIGINT)
    assert asyncio.run(_sleep_through_sigint()) == ["cancelled, received=True", "cleaned up"]
    assert signal.getsignal(signal.SIGINT) is before


async def _engine_dies_of_the_same_sigint() -> list[str]:
    seen = []
    interrupt = Interrupt(asyncio.current_task())
    try:
        _sigint()  # the handler runs before the next line: received is set, a cancel is queued
        raise EngineDeadError("the engine died")
    except EngineDeadError:
        seen.append(f"engine died, received={interrupt.received}")
        interrupt.swallow()
        await asyncio.sleep(0.05)  # the queued cancellation never lands
        seen.append("cleaned up")
    finally:
        interrupt.restore()
    return seen


def test_an_engine_death_after_a_sigint_is_the_interruption() -> None:
    assert asyncio.run(_engine_dies_of_the_same_sigint()) == [
        "engine died, received=True",
        "cleaned up",
    ]


async def _two_sigints() -> None:
    interrupt = Interrupt(asyncio.current_task())
    try:
        _sigint()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            interrupt.swallow()
        _sigint()  # while cleaning up: stop now
        await asyncio.sleep(10)
    finally:
        interrupt.restore()


def test_a_second_sigint_raises_keyboard_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(_two_sigints())


@pytest.mark.parametrize(
    ("outcome", "status", "message"),
    [
        (INTERRUPTED, 130, "interrupted; the finished requests are in"),
        (KeyboardInterrupt(), 130, "interrupted; the finished requests are in"),
        (EngineDeadError("the engine died"), 1, "the engine died; the finished requests are in"),
        (0, 0, ""),
    ],
)
def test_exit_status_and_message(
    outcome: Any,
    status: int,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def run(args: Any, rest: list[str]) -> int:
        if isinstance(outcome, BaseException):
            raise outcome
        return int(outcome)

    monkeypatch.setattr(batch_cli, "run", run)
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as exited:
        batch_cli.main(["-i", str(tmp_path / "in.jsonl"), "-o", str(out)])
    assert exited.value.code == status
    err = capsys.readouterr().err
    if message:
        assert message in err and str(out) in err and "run the same command again" in err
    else:
        assert err == ""
