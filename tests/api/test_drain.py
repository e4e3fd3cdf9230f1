"""Draining over the stand-in engine: once a drain starts, /ready and new requests get 503
`server_shutting_down`; a stream still generating at the drain's cut ends with that error as a
final event and `[DONE]`; a non-streamed one gets the 503 envelope; both abort their engine
request. (SIGTERM, exit status and the engine processes: tests/e2e/test_shutdown.py.)"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from server.serving.context import ServingContext
from tests.api.conftest import MODEL, sse_events

pytestmark = pytest.mark.asyncio

URL = "/v1/chat/completions"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Write forever."}]}


def serving(client: Any) -> ServingContext:
    ctx: ServingContext = client._transport.app.state.serving
    return ctx


async def slow_client(make_client: Any) -> tuple[Any, Any]:
    client, engine = await make_client(script=[" word"] * 500, step_delay=0.01)
    serving(client).drain.bind(asyncio.get_running_loop())
    return client, engine


async def test_a_stream_cut_by_the_drain_ends_with_an_error_event_and_done(
    make_client: Any,
) -> None:
    client, engine = await slow_client(make_client)
    request = asyncio.create_task(client.post(URL, json={**BODY, "stream": True}))
    await asyncio.sleep(0.3)
    serving(client).drain.begin(grace_s=1.3)  # the cut: 0.3 s from now
    ready = await client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "server_shutting_down"
    refused = await client.post(URL, json=BODY)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "server_shutting_down"
    response = await request
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
    words = [e for e in events[:-2] if '"word"' in e or " word" in e]
    assert 10 < len(words) < 400  # it streamed before the cut, and stopped well before the end
    assert engine.requests[-1].request_id in engine.closed  # the engine request was aborted
    done = engine.steps_done
    await asyncio.sleep(0.1)
    assert engine.steps_done == done


async def test_a_non_streamed_request_cut_by_the_drain_gets_a_503_envelope(
    make_client: Any,
) -> None:
    client, engine = await slow_client(make_client)
    request = asyncio.create_task(client.post(URL, json=BODY))
    await asyncio.sleep(0.2)
    serving(client).drain.begin(grace_s=1.2)
    response = await request
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "server_shutting_down"
    assert engine.requests[-1].request_id in engine.closed


async def test_requests_that_finish_within_the_grace_period_are_untouched(
    make_client: Any,
) -> None:
    client, _ = await make_client(script=[" a", " b", " c"], step_delay=0.05)
    serving(client).drain.bind(asyncio.get_running_loop())
    request = asyncio.create_task(client.post(URL, json={**BODY, "stream": True}))
    await asyncio.sleep(0.02)
    serving(client).drain.begin(grace_s=5.0)
    response = await request
    events = sse_events(response.text)
    assert events[-1] == "[DONE]" and not any('"error"' in e for e in events)
    assert (
        "".join(
            json.loads(e)["choices"][0]["delta"].get("content") or ""
            for e in events[:-1]
            if json.loads(e)["choices"]
        )
        == " a b c"
    )
