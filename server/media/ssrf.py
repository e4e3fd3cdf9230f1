"""SSRF guard for media URLs: vet the resolved addresses of a host, then connect only to them.

The host name is resolved once; the addresses that pass are *pinned* in a httpcore network
backend, so the connection goes to exactly the vetted IP (DNS rebinding between check and
connect cannot redirect it). The URL's host name still drives the Host header, TLS SNI and
certificate checks, because only `connect_tcp` sees the substituted address.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import typing
from collections.abc import AsyncIterator, Mapping, Sequence

import httpcore
import httpx

from server.errors import MediaFetchFailed, MediaHostNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address tunnels or translates to, if any."""
    if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d
        return ip.ipv4_mapped
    if ip.sixtofour is not None:  # 2002:AABB:CCDD::/48
        return ip.sixtofour
    if ip in _NAT64:  # 64:ff9b::a.b.c.d reaches a.b.c.d through a NAT64 gateway
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses (after unwrapping IPv4-in-IPv6)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:  # the tunnel endpoint is an arbitrary IPv4 address
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(embedded)
        if ip.is_site_local:
            return False
    # `is_global` alone is not enough: Python counts e.g. 224.0.0.0/4 as global.
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


async def resolve_pinned(host: str, port: int, allowed_hosts: frozenset[str]) -> list[str]:
    """Resolve `host` once and return the addresses a fetch may connect to, in order.

    Hosts in `allowed_hosts` may resolve to anything (the operator named them); other hosts
    only to public addresses. Raises MediaHostNotAllowed or MediaFetchFailed.
    """
    name = host.lower().rstrip(".")
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(name)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                name, port, type=socket.SOCK_STREAM
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise MediaFetchFailed(f"Could not resolve media host '{host}'.") from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if name in allowed_hosts:
        return [str(a) for a in addresses]
    public = [str(a) for a in addresses if is_public_address(a)]
    if not public:
        raise MediaHostNotAllowed(
            f"Media host '{host}' is not a public address; the server operator can allow it "
            "with --allowed-media-hosts."
        )
    return public


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects a host name only to the addresses pinned for it; refuses everything else."""

    def __init__(self, pins: Mapping[str, Sequence[str]]) -> None:
        self._pins = pins
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = self._pins.get(host)
        if not addresses:  # defence in depth: every hop must have been vetted first
            raise httpcore.ConnectError(f"refusing to connect to unvetted host {host}")
        last_error: Exception | None = None
        for address in addresses:  # e.g. `localhost` -> ::1 (nothing listening), 127.0.0.1
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for media")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle costs milliseconds; contexts are safe to share.
    return httpx.create_ssl_context()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()


class PinnedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over a httpcore pool whose network backend is a PinnedBackend.

    Built from public httpcore/httpx API only; httpcore errors are not translated to httpx
    ones here, the caller maps them to media errors.
    """

    def __init__(self, pins: Mapping[str, Sequence[str]]) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=_ssl_context(), network_backend=PinnedBackend(pins), max_connections=4
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
