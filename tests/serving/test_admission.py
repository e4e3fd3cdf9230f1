"""Admission: capacity = running + queued sequences, 503 beyond, unique engine request ids."""

from __future__ import annotations

import pytest

from server.errors import ServerOverloaded, TooManySequences
from server.metrics import QUEUED_REQUESTS
from server.serving.admission import AdmissionGate


def test_capacity_counts_sequences_and_releases() -> None:
    gate = AdmissionGate(max_queued=2, max_running=lambda: 2)
    first = gate.admit("a", seats=3)
    assert QUEUED_REQUESTS._value.get() == 1  # 3 sequences, 2 run, 1 waits
    gate.admit("b")
    with pytest.raises(ServerOverloaded) as info:
        gate.admit("c")
    assert info.value.status_code == 503 and info.value.headers["Retry-After"]
    first.release()
    first.release()  # idempotent
    assert gate.active == 1
    gate.admit("c")


def test_reused_client_ids_get_unique_engine_ids() -> None:
    gate = AdmissionGate(max_queued=10, max_running=lambda: 1)
    ids = [gate.admit("same").request_id for _ in range(3)]
    assert ids[0] == "same" and len(set(ids)) == 3
    ticket = gate.admit("other")
    ticket.release()
    assert gate.admit("other").request_id == "other"  # free again once released


def test_a_request_that_can_never_fit_is_a_400_not_a_retry() -> None:
    gate = AdmissionGate(max_queued=2, max_running=lambda: 2)
    with pytest.raises(TooManySequences) as info:
        gate.admit("huge", seats=5)
    assert info.value.status_code == 400 and info.value.code == "too_many_sequences"
    assert gate.active == 0
    gate.admit("fits", seats=4)  # exactly the capacity: admitted
