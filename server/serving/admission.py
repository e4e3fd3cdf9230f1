"""Admission control and engine request ids.

The engine runs `max_num_seqs` sequences at once; up to `max_queued_requests` more may wait in
it. Past that the server answers 503 `server_overloaded` with Retry-After at once, before
fetching any media, instead of letting latency grow without bound. A request with n choices
occupies n sequences (a text completion: n per prompt); one that asks for more sequences than
the server can ever hold gets 400 `too_many_sequences`, since retrying would not help.

Engine request ids come from the client's X-Request-Id when given, so logs on both sides line
up; a client that reuses an id still gets a unique engine id (aborting one request must never
abort another).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from server.errors import ServerOverloaded, TooManySequences
from server.metrics import QUEUED_REQUESTS


class Ticket:
    """One admitted request: its engine request id and its seats. `release()` is idempotent."""

    def __init__(self, gate: AdmissionGate, request_id: str, seats: int) -> None:
        self._gate = gate
        self.request_id = request_id
        self.seats = seats
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate._release(self)


class AdmissionGate:
    """Counts admitted sequences (single event loop: no locking needed)."""

    def __init__(self, max_queued: int, max_running: Callable[[], int]) -> None:
        self._max_queued = max_queued
        self._max_running = max_running  # known once the engine has started
        self._active = 0
        self._ids: set[str] = set()
        self._suffix = itertools.count(1)

    @property
    def active(self) -> int:
        return self._active

    def admit(self, request_id: str, seats: int = 1) -> Ticket:
        """Admit a request, or raise ServerOverloaded (503 + Retry-After) when it must wait
        for others, TooManySequences (400) when it can never fit."""
        running = max(1, self._max_running())
        if seats > running + self._max_queued:
            raise TooManySequences(
                f"The request needs {seats} sequences (choices x prompts); this server holds at "
                f"most {running + self._max_queued} at once ({running} running, "
                f"{self._max_queued} queued)."
            )
        if self._active + seats > running + self._max_queued:
            raise ServerOverloaded(
                f"The server is at capacity ({running} running, {self._max_queued} queued); "
                "retry later."
            )
        unique = request_id
        while unique in self._ids:
            unique = f"{request_id}-{next(self._suffix)}"
        self._ids.add(unique)
        self._active += seats
        self._update_gauge(running)
        return Ticket(self, unique, seats)

    def _release(self, ticket: Ticket) -> None:
        self._ids.discard(ticket.request_id)
        self._active -= ticket.seats
        self._update_gauge(max(1, self._max_running()))

    def _update_gauge(self, running: int) -> None:
        QUEUED_REQUESTS.set(max(0, self._active - running))
