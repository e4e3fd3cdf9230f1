"""Optional API-key auth: `Authorization: Bearer <key>`, compared in constant time.

A middleware rather than a route dependency, so an unauthenticated request is refused before
its body is parsed (no 400 that reveals validation details to a caller without a key).
Health probes and /metrics stay open when `open_health_and_metrics` is set, and so do the
playground's static files (`open_paths`: exact paths, which hold no secrets; the page asks for
the key and sends it to the API); CORS preflights (OPTIONS) pass so browsers can ask before
sending the key.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.errors import error_response
from server.errors import InvalidAPIKey

PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})


def key_matches(presented: str, keys: Iterable[bytes]) -> bool:
    """Compare against every key (no early exit), each in constant time."""
    candidate = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched


class APIKeyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keys: Iterable[str],
        open_probes: bool,
        open_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.keys = tuple(key.encode() for key in keys)
        self.open_paths = (PROBE_PATHS if open_probes else frozenset()) | frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.keys
            or scope["method"] == "OPTIONS"
            or scope["path"] in self.open_paths
        ):
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and key_matches(token.strip(), self.keys):
            await self.app(scope, receive, send)
            return
        await error_response(InvalidAPIKey())(scope, receive, send)
