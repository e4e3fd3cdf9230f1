"""Keeps the engine running: starts it, and when it dies, restarts it in-process with backoff.

Requests in flight when the engine dies fail at once (the engine's streams end with
`engine_dead`); while it restarts, `/ready` is 503 and new requests get 503 `engine_starting`
(with Retry-After), `/health` stays 200 (the process is fine: a liveness probe must not kill a
server that is healing itself). After `restarts` restarts (`--engine-restarts`; 0: none) the
next death is final: `on_give_up` runs and the server exits non-zero so that a supervisor
(Docker's restart policy, Kubernetes) restarts the container. A failed first start is final too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from server.engine.contract import Engine
from server.metrics import ENGINE_RESTARTS

logger = logging.getLogger(__name__)

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # before restart 1, 2, ... (then the last)


class EngineSupervisor:
    def __init__(
        self,
        engine: Engine,
        *,
        restarts: int,
        on_give_up: Callable[[], None] | None = None,
        poll_s: float = 0.25,
        backoff_s: tuple[float, ...] = BACKOFF_S,
    ) -> None:
        self.engine = engine
        self.restarts_left = restarts
        self.restarted = 0
        self.on_give_up = on_give_up
        self.poll_s, self.backoff_s = poll_s, backoff_s

    async def run(self) -> None:
        if not await self._start("start"):
            return
        while True:
            await asyncio.sleep(self.poll_s)
            if self.engine.is_alive():
                continue
            if self.restarts_left <= 0:
                logger.error("The inference engine died and no restarts are left: exiting")
                self._give_up()
                return
            self.restarts_left -= 1
            delay = self.backoff_s[min(self.restarted, len(self.backoff_s) - 1)]
            self.restarted += 1
            ENGINE_RESTARTS.inc()
            logger.error(
                "The inference engine died; restart %d in %.0f s (%d more allowed)",
                self.restarted,
                delay,
                self.restarts_left,
            )
            await self.engine.stop()
            await asyncio.sleep(delay)
            # A failed restart leaves the engine dead: the next turn of the loop counts it.
            await self._start(f"restart {self.restarted}", final=False)

    async def _start(self, what: str, *, final: bool = True) -> bool:
        try:
            await self.engine.start()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("The inference engine failed to %s", what)
            if final:
                self._give_up()
            return False
        if self.restarted:
            logger.info("The inference engine is back after restart %d", self.restarted)
        return True

    def _give_up(self) -> None:
        if self.on_give_up is not None:
            self.on_give_up()
