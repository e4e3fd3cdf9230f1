"""Typed domain errors and the one place that turns any failure into an OpenAI error envelope.

Code anywhere in the server raises an `APIError` subclass (or an engine contract error); the
handlers installed by `install_error_handlers` render `{"error": {message, type, param, code}}`.
Unexpected exceptions become a generic 500: logged with their traceback, never sent to clients.
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.engine.contract import EngineDeadError, PromptTooLongError, RequestRejectedError
from server.metrics import record_rejection
from server.protocol.errors import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """An error with its HTTP status and OpenAI `type`/`code`; subclasses fix those."""

    status_code = 500
    error_type = SERVER_ERROR
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def with_param(self, param: str) -> APIError:
        """Attach the request path of the offending value, e.g. `messages[0].content[1]`."""
        self.param = param
        return self

    def envelope(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(
                message=self.message, type=self.error_type, param=self.param, code=self.code
            )
        )


class InvalidRequest(APIError):
    status_code = 400
    error_type = INVALID_REQUEST
    code = "invalid_request"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class InvalidImageURL(InvalidRequest):
    code = "invalid_image_url"


class InvalidImage(InvalidRequest):
    code = "invalid_image"


class ImageTooLarge(InvalidRequest):
    code = "image_too_large"


class TooManyImages(InvalidRequest):
    code = "too_many_images"


class TooManyVideos(InvalidRequest):
    code = "too_many_videos"


class TooManySequences(InvalidRequest):
    code = "too_many_sequences"


class InvalidVideoURL(InvalidRequest):
    code = "invalid_video_url"


class MediaFetchFailed(InvalidRequest):
    code = "media_fetch_failed"


class MediaHostNotAllowed(InvalidRequest):
    code = "media_host_not_allowed"


class MediaTooLarge(InvalidRequest):
    code = "media_too_large"


class MediaTimeout(InvalidRequest):
    code = "media_timeout"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class RequestTooLarge(InvalidRequest):
    status_code = 413
    code = "request_too_large"


class InvalidAPIKey(APIError):
    status_code = 401
    error_type = INVALID_REQUEST
    code = "invalid_api_key"

    def __init__(self, message: str = "Invalid or missing API key.") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ModelNotFound(APIError):
    status_code = 404
    error_type = INVALID_REQUEST
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist.", param="model")


class RouteNotFound(APIError):
    status_code = 404
    error_type = INVALID_REQUEST
    code = "not_found"


class MethodNotAllowed(APIError):
    status_code = 405
    error_type = INVALID_REQUEST
    code = "method_not_allowed"


class ServerOverloaded(APIError):
    status_code = 503
    code = "server_overloaded"

    def __init__(
        self, message: str = "The server is overloaded; retry later.", *, retry_after_s: int = 1
    ) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class EngineDead(APIError):
    status_code = 503
    code = "engine_dead"


class EngineStarting(APIError):
    """The engine is still loading or warming up; /ready is not 200 yet."""

    status_code = 503
    code = "engine_starting"

    def __init__(
        self, message: str = "The model is still loading; retry shortly.", *, retry_after_s: int = 5
    ) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class RequestAborted(APIError):
    """The engine dropped the request (e.g. the server is shutting down)."""

    status_code = 503
    code = "request_aborted"


class InternalError(APIError):
    """The generic 500: its message never contains details of the failure."""

    def __init__(self, message: str = "The server had an error processing the request.") -> None:
        super().__init__(message)


def to_api_error(exc: BaseException) -> APIError:
    """Map any exception to the APIError clients see (unknown ones to a generic 500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PromptTooLongError):
        return ContextLengthExceeded(str(exc), param="messages")
    if isinstance(exc, RequestRejectedError):
        return InvalidRequest(str(exc), param=exc.param, code="invalid_value")
    if isinstance(exc, EngineDeadError):
        return EngineDead("The inference engine is not running; retry later.")
    return InternalError()


def error_response(err: APIError) -> JSONResponse:
    record_rejection(err.code)
    return JSONResponse(
        err.envelope().model_dump(), status_code=err.status_code, headers=err.headers or None
    )


def sse_error_event(err: BaseException) -> str:
    """An SSE `data:` event carrying the envelope, for failures after a stream has started."""
    api_err = to_api_error(err)
    record_rejection(api_err.code)
    return f"data: {api_err.envelope().model_dump_json()}\n\n"


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
    elif exc.status_code == 400 and exc.detail == _FASTAPI_BODY_PARSE_ERROR:
        # FastAPI's answer when the JSON parser itself fails (e.g. nesting too deep to parse)
        err = InvalidRequest("The request body could not be parsed as JSON.", code="invalid_json")
    else:
        err = APIError(str(exc.detail), code=f"http_{exc.status_code}")
        err.status_code = exc.status_code
        err.error_type = INVALID_REQUEST if exc.status_code < 500 else SERVER_ERROR
    err.headers.update(exc.headers or {})
    return error_response(err)


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
    app.add_exception_handler(PromptTooLongError, _engine_error_handler)
    app.add_exception_handler(RequestRejectedError, _engine_error_handler)
    app.add_middleware(UnhandledErrorMiddleware)
