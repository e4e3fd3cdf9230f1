"""The HTTP/1.1 protocol the server runs: uvicorn's httptools protocol with limits on the request
head enforced while it arrives, and OpenAI-style JSON errors for what the HTTP parser refuses.

uvicorn itself puts no limit on headers when it runs httptools (a 16 MB header or 10,000 headers
are buffered and handed to the app), and answers a request its parser cannot read with a
`text/plain` "Invalid HTTP request received.". Here:
- the request head (request line and headers) is counted as its bytes arrive: past
  `max_head_bytes` the connection gets a 431 envelope and is closed, so the server buffers at
  most one read beyond the cap, however long the header; past `max_head_count` headers, the same;
- a request the parser refuses (bad framing or chunking, a TLS or HTTP/2 preface, invalid bytes)
  gets a 400 envelope with code `invalid_http_request`.
Both are counted in the rejection metrics like every other refusal. After such an answer the
connection closes "lingering" (as nginx does): the server stops sending, discards what the
client still sends for up to LINGER_S, then closes; closing at once with unread data in the
socket would make the kernel reset the connection, and the client could lose the answer.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.errors import APIError, InvalidHTTPRequest, RequestHeadersTooLarge
from server.metrics import record_rejection

LINGER_S = 2.0


class _HeadRefused(Exception):
    """Raised in a parser callback to stop parsing (httptools turns it into a parser error)."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = 64 * 1024
    max_head_count = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # a new connection starts with a request head
        self._head_bytes = 0
        self._head_count = 0
        self._refusal: APIError | None = None
        self._answered = False  # an error was sent: discard the rest, close soon

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes and not self._answered:
            self._send_error(self._head_too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_count = True, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > self.max_head_count:
            self._refusal = self._head_too_large()
            raise _HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:  # uvicorn: the parser refused the request
        refusal, self._refusal = self._refusal, None
        self._send_error(
            refusal
            or InvalidHTTPRequest(
                "The request is not valid HTTP/1.1 (the server could not parse it)."
            )
        )

    def _head_too_large(self) -> RequestHeadersTooLarge:
        return RequestHeadersTooLarge(
            f"The request's headers are too large: this server accepts at most "
            f"{self.max_head_count} headers and {self.max_head_bytes} bytes of request line "
            "and headers."
        )

    def _send_error(self, error: APIError) -> None:
        record_rejection(error.code)
        body = json.dumps(error.envelope().model_dump()).encode()
        status = HTTPStatus(error.status_code)
        head = [f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self._answered = True
        self.transport.write(b"".join(head) + body)
        if self.transport.is_closing() or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def limited_protocol(max_head_bytes: int, max_head_count: int) -> type[LimitedHttpToolsProtocol]:
    """The protocol class with these limits (uvicorn instantiates it per connection)."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "max_head_count": max_head_count},
    )
