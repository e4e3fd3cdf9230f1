"""Pure ASGI middleware: request context (id, metrics, access log) and body limits (header
limits are the HTTP protocol's: server/api/http_protocol.py).

Pure ASGI rather than Starlette's BaseHTTPMiddleware, so streaming responses and disconnect
detection pass through untouched.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import error_response
from server.errors import InvalidRequest, RequestTooLarge
from server.metrics import REQUESTS_IN_FLIGHT, record_http_request

access_logger = logging.getLogger("server.access")
logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_UNMATCHED_ROUTE = "unmatched"  # unknown paths share one label (bounded metric cardinality)


def on_request_end(request: Request, callback: Callable[[], None]) -> None:
    """Run `callback` when the request's ASGI call ends, however it ends (a backstop for
    resources a streaming body normally releases itself)."""
    cleanups: list[Callable[[], None]] | None = getattr(request.state, "cleanups", None)
    if cleanups is None:
        raise RuntimeError("RequestContextMiddleware is not installed")
    cleanups.append(callback)


class RequestContextMiddleware:
    """Outermost: assigns the request id, counts in-flight requests, records HTTP metrics by
    route template, writes one structured access-log line (never request contents)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = given if _VALID_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        cleanups: list[Callable[[], None]] = []
        state["cleanups"] = cleanups
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        REQUESTS_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUESTS_IN_FLIGHT.dec()
            for cleanup in cleanups:
                try:
                    cleanup()
                except Exception:
                    logger.exception("Request cleanup failed")
            route = scope.get("route")
            template = getattr(route, "path", None) or _UNMATCHED_ROUTE
            seconds = time.perf_counter() - started
            record_http_request(template, scope["method"], status, seconds)
            client = scope.get("client")
            access_logger.info(
                "request_id=%s method=%s route=%s status=%d duration_ms=%.1f client=%s",
                request_id,
                scope["method"],
                template,
                status,
                seconds * 1000,
                client[0] if client else "-",
            )


# JSON values (structural characters) a body may hold: a 128K-token prompt as token ids is
# ~128K, a batch of them a few times that; millions are an attack on the parser, which would
# hold the event loop for seconds (it runs on it) and build an error per bad value.
MAX_JSON_VALUES = 1_000_000
_SCAN_FROM_BYTES = 64 * 1024


def json_value_count(body: bytes | bytearray) -> int:
    """An upper bound of the JSON values in `body` (commas and opening brackets; base64 data
    has none), counted in C at memory speed."""
    return body.count(b",") + body.count(b"[") + body.count(b"{")


class BodySizeLimitMiddleware:
    """413 for request bodies over `max_bytes`, checked before any handler parses them, and
    400 `request_too_complex` for bodies of more than MAX_JSON_VALUES values.

    The body is read here (bounded) and replayed to the app; later `receive` calls (the
    disconnect a streaming handler waits for) go straight to the server.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, streamed: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = dict(streamed or {})  # path -> its own cap; read by the app, counted here

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        cap = self.streamed.get(scope["path"])
        if cap is not None:
            await self._counted(scope, receive, send, cap)
            return
        too_large = RequestTooLarge(
            f"The request body is larger than the server's limit of {self.max_bytes} bytes."
        )
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(too_large)(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # disconnected while uploading
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await error_response(too_large)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        if len(body) > _SCAN_FROM_BYTES and json_value_count(body) > MAX_JSON_VALUES:
            complex_ = InvalidRequest(
                f"The request body holds more than {MAX_JSON_VALUES} JSON values.",
                code="request_too_complex",
            )
            await error_response(complex_)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        """Pass the body through as the app reads it; past `cap` bytes the read fails with a
        413 (the app has not answered yet: it is still reading)."""
        too_large = RequestTooLarge(f"The request body is larger than this route's {cap} bytes.")
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            await error_response(too_large)(scope, receive, send)
            return
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > cap:
                raise too_large
            return message

        await self.app(scope, counting, send)
