"""`/openapi.json` as the server really behaves: request bodies are the pydantic request models
(FastAPI's default), and the responses are the ones the server sends — the OpenAI error
envelope for 400/401/404/405/413/499/500/503 (never FastAPI's 422, which this server does not
send: validation errors are 400 envelopes), event streams beside JSON for the generation
endpoints, and plain text for /metrics.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from server.protocol.errors import ErrorResponse

_ENVELOPE = {"$ref": "#/components/schemas/ErrorResponse"}
_ERRORS = {
    "400": "Invalid request (OpenAI error envelope; `param` names the field)",
    "401": "Missing or wrong API key",
    "404": "Unknown model, route or stored response",
    "405": "Method not allowed",
    "413": "Request body too large",
    "500": "Internal error (no details)",
    "503": "Engine starting or dead, server overloaded or shutting down (see `code`)",
}
_STREAMING = ("/v1/chat/completions", "/v1/completions", "/v1/responses")


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _schema(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _schema(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    envelope = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(envelope.pop("$defs", {}))
    components["ErrorResponse"] = envelope
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in _ERRORS.items():
                responses.setdefault(
                    status,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": _ENVELOPE}},
                    },
                )
            if method == "post" and path in _STREAMING:
                ok = responses["200"].setdefault("content", {})
                ok["text/event-stream"] = {  # each event: `data:` a JSON chunk, then [DONE]
                    "schema": {"description": "server-sent events, with `stream: true`"}
                }
            if path == "/metrics":
                responses["200"]["content"] = {
                    "text/plain": {"schema": {"type": "string", "description": "Prometheus text"}}
                }
    return schema
