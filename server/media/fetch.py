"""Obtain the bytes behind a media URL: `data:` (base64), `file://` (under one root), http(s).

Every path enforces the byte cap before or while reading (never an unbounded read). HTTP goes
through the SSRF guard (ssrf.py) on every hop, follows at most `max_redirects` redirects by
hand, and the whole fetch — DNS, connect, redirects, body — shares one deadline.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import httpcore
import httpx

from server.errors import (
    InvalidImageURL,
    MediaFetchFailed,
    MediaHostNotAllowed,
    MediaTimeout,
    MediaTooLarge,
)
from server.media.ssrf import PinnedTransport, resolve_pinned
from server.metrics import MEDIA_BYTES, MEDIA_FETCH_SECONDS
from server.settings import Settings

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_WHITESPACE = str.maketrans("", "", " \t\r\n")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
# Large data: URLs are decoded off the event loop; small ones are not worth a thread hop.
_INLINE_DECODE_LIMIT = 256 * 1024
_HTTPCORE_ERRORS = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
)


@dataclass(frozen=True, slots=True)
class MediaLimits:
    """The media knobs of Settings, in the shape the media code needs."""

    max_bytes: int
    timeout_s: float
    max_image_pixels: int
    allowed_hosts: frozenset[str] = frozenset()
    allowed_local_path: Path | None = None
    max_redirects: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaLimits:
        return cls(
            max_bytes=settings.max_media_bytes,
            timeout_s=settings.media_fetch_timeout,
            max_image_pixels=settings.max_image_pixels,
            allowed_hosts=frozenset(settings.allowed_media_hosts),
            allowed_local_path=settings.allowed_local_media_path,
        )


def _short(url: str) -> str:
    return url if len(url) <= 80 else url[:77] + "..."


def _too_large(max_bytes: int) -> MediaTooLarge:
    return MediaTooLarge(f"Media is larger than the server's limit of {max_bytes} bytes.")


async def fetch_media(url: str, *, limits: MediaLimits) -> bytes:
    """Return the bytes of `url`, or raise a typed media error (an APIError)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    start = time.perf_counter()
    if scheme == "data":
        source = "data"
        if len(url) > _INLINE_DECODE_LIMIT:
            data = await asyncio.to_thread(decode_data_url, url, limits.max_bytes)
        else:
            data = decode_data_url(url, limits.max_bytes)
    elif scheme == "file":
        source = "file"
        data = await asyncio.to_thread(read_local_file, url, limits)
    elif scheme in ("http", "https"):
        source = "http"
        data = await _fetch_http(url, limits)
    else:
        raise InvalidImageURL(
            f"Unsupported media URL '{_short(url)}': use http(s)://, data: or file:// URLs."
        )
    MEDIA_FETCH_SECONDS.labels(source=source).observe(time.perf_counter() - start)
    MEDIA_BYTES.labels(source=source).inc(len(data))
    return data


# -- data: -----------------------------------------------------------------------------------


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """`data:[<type>][;base64],<payload>` -> bytes; base64 is decoded strictly."""
    header, sep, payload = url[len("data:") :].partition(",")
    if not sep:
        raise InvalidImageURL("Malformed data URL: no ',' before the payload.")
    if "base64" in (p.strip().lower() for p in header.split(";")):
        if "%" in payload:  # some clients percent-encode the payload
            payload = unquote(payload)
        compact = payload.translate(_WHITESPACE)
        if len(compact) // 4 * 3 > max_bytes + 2:  # decoded size, checked before decoding
            raise _too_large(max_bytes)
        # b64decode(validate=True) still accepts excess padding; require canonical form.
        if len(compact) % 4 or not _BASE64.fullmatch(compact):
            raise InvalidImageURL("The data URL does not contain valid base64.")
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidImageURL("The data URL does not contain valid base64.") from exc
    else:
        data = unquote_to_bytes(payload)
    if not data:
        raise InvalidImageURL("The data URL is empty.")
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data


# -- file:// ---------------------------------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def read_local_file(url: str, limits: MediaLimits) -> bytes:
    """Read a `file://` URL that resolves (symlinks included) to a regular file under the root."""
    if limits.allowed_local_path is None:
        raise MediaHostNotAllowed(
            "file:// media is disabled; the operator can enable it with --allowed-local-media-path."
        )
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise InvalidImageURL(f"Malformed file URL '{_short(url)}': use file:///absolute/path.")
    root = os.path.realpath(limits.allowed_local_path)
    real = os.path.realpath(unquote(parts.path))
    if not _inside(real, root):
        raise MediaHostNotAllowed("The file is outside the directory allowed for local media.")
    try:
        # O_NONBLOCK: opening a FIFO must not hang the worker thread; O_NOFOLLOW: the resolved
        # path must not have become a symlink since realpath().
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise MediaFetchFailed("The local media file cannot be opened.") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidImageURL("The local media path is not a regular file.")
        # A directory component may have been swapped for a symlink between realpath() and
        # open(); what the descriptor really points at is authoritative.
        proc_link = f"/proc/self/fd/{fd}"
        if os.path.exists(proc_link) and not _inside(os.readlink(proc_link), root):
            raise MediaHostNotAllowed("The file is outside the directory allowed for local media.")
        if info.st_size > limits.max_bytes:
            raise _too_large(limits.max_bytes)
        with os.fdopen(fd, "rb") as handle:
            fd = -1  # owned by the file object now
            data = handle.read(limits.max_bytes + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > limits.max_bytes:  # the file grew after fstat
        raise _too_large(limits.max_bytes)
    return data


# -- http(s) ---------------------------------------------------------------------------------


async def _fetch_http(url: str, limits: MediaLimits) -> bytes:
    try:
        async with asyncio.timeout(limits.timeout_s):
            return await _fetch_http_hops(url, limits)
    except (TimeoutError, httpcore.TimeoutException) as exc:
        raise MediaTimeout(
            f"Fetching '{_short(url)}' took longer than {limits.timeout_s:g} s."
        ) from exc
    except _HTTPCORE_ERRORS as exc:
        raise MediaFetchFailed(f"Could not fetch '{_short(url)}': {type(exc).__name__}.") from exc
    except httpx.HTTPError as exc:
        raise MediaFetchFailed(f"Could not fetch '{_short(url)}': {type(exc).__name__}.") from exc


def _parse_http_url(url: str | httpx.URL) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidImageURL(f"Malformed media URL '{_short(str(url))}'.") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidImageURL(f"Media URL '{_short(str(url))}' needs an http(s) scheme and host.")
    return parsed


async def _fetch_http_hops(url: str, limits: MediaLimits) -> bytes:
    pins: dict[str, list[str]] = {}
    headers = {"Accept-Encoding": "identity", "User-Agent": "kimi-vl-server"}
    # trust_env=False: no proxy from the environment (a proxy would resolve names itself and
    # defeat the pinning) and Settings stays the only reader of os.environ.
    async with httpx.AsyncClient(
        transport=PinnedTransport(pins),
        follow_redirects=False,
        trust_env=False,
        timeout=limits.timeout_s,
        headers=headers,
    ) as client:
        target = _parse_http_url(url)
        for _ in range(limits.max_redirects + 1):
            host = target.raw_host.decode("ascii")
            port = target.port or (443 if target.scheme == "https" else 80)
            pins[host] = await resolve_pinned(host, port, limits.allowed_hosts)
            async with client.stream("GET", target) as response:
                if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
                    target = _parse_http_url(target.join(response.headers["location"]))
                    continue
                if response.status_code != 200:
                    raise MediaFetchFailed(
                        f"Fetching '{_short(str(target))}' returned HTTP {response.status_code}."
                    )
                return await _read_capped(response, limits.max_bytes)
    raise MediaFetchFailed(
        f"Fetching '{_short(url)}' needed more than {limits.max_redirects} redirects."
    )


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)  # refuse before reading a single body byte
    body = bytearray()
    # Raw bytes: we ask for identity encoding, so nothing is inflated past the cap here.
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(body)
