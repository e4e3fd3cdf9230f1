"""The one place that turns any failure into an OpenAI error envelope.

The handlers installed by `install_error_handlers` render the typed errors of `server/errors.py`
(and engine contract errors) as `{"error": {message, type, param, code}}`; request validation
failures become 400s naming the parameter. Unexpected exceptions become a generic 500: logged
with their traceback, never sent to clients.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.engine.contract import EngineDeadError, RequestRejectedError
from server.errors import (
    INVALID_REQUEST,
    SERVER_ERROR,
    APIError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    RouteNotFound,
    UnsupportedParameter,
    to_api_error,
)
from server.metrics import record_rejection

logger = logging.getLogger(__name__)


def error_response(err: APIError) -> JSONResponse:
    record_rejection(err.code)
    return JSONResponse(
        err.envelope().model_dump(), status_code=err.status_code, headers=err.headers or None
    )


# -- request validation -> 400 -----------------------------------------------------------------

_LOCATIONS = ("body", "query", "path", "header", "cookie")


def param_path(loc: Sequence[int | str]) -> str | None:
    """('body', 'messages', 0, 'content', 1, 'image_url') -> 'messages[0].content[1].image_url'."""
    parts = list(loc)
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for "the key of this dict entry"
            out += f".{part}" if out else str(part)
    return out or None


def validation_error(errors: Sequence[Mapping[str, Any]]) -> InvalidRequest:
    """The first validation error as an InvalidRequest (OpenAI reports one problem at a time)."""
    if not errors:
        return InvalidRequest("The request is invalid.")
    err = errors[0]
    kind = str(err.get("type", ""))
    loc = tuple(err.get("loc", ()))
    param = param_path(loc)
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.", code="invalid_json")
    if param is None and kind in ("missing", "model_attributes_type", "dict_type"):
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if kind == "missing" and msg == "Field required":
        return InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if kind == "extra_forbidden":
        return InvalidRequest(
            f"Unrecognized request argument supplied: {param}",
            param=param,
            code="unknown_parameter",
        )
    if kind == "unsupported_parameter":
        return UnsupportedParameter(msg, param=param)
    text = f"Invalid value for '{param}': {msg}" if param else msg
    return InvalidRequest(text, param=param, code="invalid_value")


# -- installation --------------------------------------------------------------------------------


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)  # registered for APIError only
    return error_response(exc)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(validation_error(exc.errors()))


_FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    err: APIError
    if exc.status_code == 404:
        err = RouteNotFound(f"Unknown route: {request.method} {request.url.path}")
    elif exc.status_code == 405:
        err = MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}.")
        # Starlette names the methods of the first route matching the path only.
        err.headers["Allow"] = ", ".join(_allowed_methods(request))
        err.headers.update({k: v for k, v in (exc.headers or {}).items() if k != "Allow"})
        return error_response(err)
    elif exc.status_code == 400 and exc.detail == _FASTAPI_BODY_PARSE_ERROR:
        # FastAPI's answer when the JSON parser itself fails (e.g. nesting too deep to parse)
        err = InvalidRequest("The request body could not be parsed as JSON.", code="invalid_json")
    else:
        err = APIError(str(exc.detail), code=f"http_{exc.status_code}")
        err.status_code = exc.status_code
        err.error_type = INVALID_REQUEST if exc.status_code < 500 else SERVER_ERROR
    err.headers.update(exc.headers or {})
    return error_response(err)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches({**request.scope, "method": next(iter(route.methods))})
            if match == Match.FULL:
                methods |= route.methods
    return sorted(methods)


async def _engine_error_handler(request: Request, exc: Exception) -> JSONResponse:
    return error_response(to_api_error(exc))


class UnhandledErrorMiddleware:
    """Last line of defence: an exception no handler took becomes a logged, generic 500.

    A pure ASGI middleware (not an `Exception` handler) so the failure is logged once: Starlette
    re-raises after calling an `Exception` handler and the server would log it a second time.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                # Headers are gone (a stream broke); let the server drop the connection so the
                # client sees a failed response rather than a silently short one.
                raise
            logger.exception("Unhandled error in %s %s", scope.get("method"), scope.get("path"))
            err = InternalError()
            record_rejection(err.code)
            body = json.dumps(err.envelope().model_dump()).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": err.status_code,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure of `app` to the OpenAI error envelope. Call once, at app creation."""
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(EngineDeadError, _engine_error_handler)
    app.add_exception_handler(RequestRejectedError, _engine_error_handler)
    app.add_middleware(UnhandledErrorMiddleware)
