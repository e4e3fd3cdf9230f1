"""Error mapping on a tiny FastAPI app: every failure becomes the OpenAI envelope, never a 422."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from server.api.errors import install_error_handlers, param_path
from server.engine.contract import EngineDeadError, RequestRejectedError
from server.errors import APIError, ImageTooLarge, InvalidAPIKey, ModelNotFound, ServerOverloaded
from server.protocol import ChatCompletionRequest
from server.serving.streaming import sse_error_event


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat(request: ChatCompletionRequest) -> dict[str, int]:
        return {"messages": len(request.messages)}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail /etc/passwd")

    @app.get("/model")
    async def model() -> None:
        raise ModelNotFound("gpt-5")

    @app.get("/auth")
    async def auth() -> None:
        raise InvalidAPIKey()

    @app.get("/busy")
    async def busy() -> None:
        raise ServerOverloaded(retry_after_s=3)

    @app.get("/dead")
    async def dead() -> None:
        raise EngineDeadError("engine core died: CUDA error at 0xdeadbeef")

    @app.get("/rejected")
    async def rejected() -> None:
        raise RequestRejectedError("token id 999999 is outside the vocabulary", param="logit_bias")

    @app.get("/image")
    async def image() -> None:
        raise ImageTooLarge("too many pixels").with_param("messages[0].content[1].image_url")

    return app


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def envelope(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["code"], str)
    return body["error"]


@pytest.mark.asyncio
async def test_valid_request_passes(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
    )
    assert response.status_code == 200 and response.json() == {"messages": 1}


@pytest.mark.asyncio
@pytest.mark.parametrize("body", [b"{not json", b'{"messages": [', b"\xff\xfe"])
async def test_malformed_json(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = envelope(response)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"


@pytest.mark.asyncio
@pytest.mark.parametrize("body", [b"[]", b"42", b""])
async def test_body_not_an_object(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert envelope(response)["code"] == "invalid_json"


@pytest.mark.asyncio
async def test_validation_error_is_400_with_dotted_param(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image_url", "image_url": 5},
                    ],
                }
            ]
        },
    )
    assert response.status_code == 400
    error = envelope(response)
    assert error["param"] == "messages[0].content[1].image_url"
    assert error["code"] == "invalid_value" and error["type"] == "invalid_request_error"


@pytest.mark.asyncio
async def test_unsupported_and_unknown_params(client: httpx.AsyncClient) -> None:
    base = {"messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/chat/completions", json={**base, "audio": {"voice": "x"}})
    assert response.status_code == 400
    assert envelope(response)["param"] == "audio"
    assert envelope(response)["code"] == "unsupported_parameter"
    response = await client.post("/v1/chat/completions", json={**base, "nope": 1})
    assert (response.status_code, envelope(response)["code"]) == (400, "unknown_parameter")


@pytest.mark.asyncio
async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nothing")
    assert response.status_code == 404 and envelope(response)["code"] == "not_found"
    response = await client.get("/v1/chat/completions")
    assert response.status_code == 405 and envelope(response)["code"] == "method_not_allowed"
    assert "POST" in response.headers["allow"]


@pytest.mark.asyncio
async def test_unexpected_exception_is_generic_500(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="server.api.errors"):
        response = await client.get("/boom")
    assert response.status_code == 500
    error = envelope(response)
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert "RuntimeError" not in response.text
    assert any(
        r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records
    )  # the details go to the log instead


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "status", "code", "param"),
    [
        ("/model", 404, "model_not_found", "model"),
        ("/auth", 401, "invalid_api_key", None),
        ("/busy", 503, "server_overloaded", None),
        ("/dead", 503, "engine_dead", None),
        ("/rejected", 400, "invalid_value", "logit_bias"),
        ("/image", 400, "image_too_large", "messages[0].content[1].image_url"),
    ],
)
async def test_domain_errors(
    client: httpx.AsyncClient, path: str, status: int, code: str, param: str | None
) -> None:
    response = await client.get(path)
    assert response.status_code == status
    error = envelope(response)
    assert (error["code"], error["param"]) == (code, param)
    assert "0xdeadbeef" not in response.text


@pytest.mark.asyncio
async def test_headers_carried(client: httpx.AsyncClient) -> None:
    assert (await client.get("/busy")).headers["retry-after"] == "3"
    assert (await client.get("/auth")).headers["www-authenticate"] == "Bearer"


def test_sse_error_event() -> None:
    event = sse_error_event(ModelNotFound("x"))
    assert event.startswith("data: ") and event.endswith("\n\n")
    assert json.loads(event[len("data: ") :])["error"]["code"] == "model_not_found"
    hidden = json.loads(sse_error_event(ValueError("internal path /srv/x"))[len("data: ") :])
    assert hidden["error"]["code"] == "internal_error" and "/srv/x" not in json.dumps(hidden)


def test_param_path() -> None:
    assert param_path(("body", "messages", 0, "content", 1, "image_url")) == (
        "messages[0].content[1].image_url"
    )
    assert param_path(("body", "logit_bias", "abc", "[key]")) == "logit_bias.abc"
    assert param_path(("body",)) is None
    assert param_path(("query", "limit")) == "limit"


def test_api_error_defaults() -> None:
    err = APIError("x")
    assert (err.status_code, err.error_type, err.code) == (500, "server_error", "internal_error")
    assert APIError("y", code="custom").code == "custom"
