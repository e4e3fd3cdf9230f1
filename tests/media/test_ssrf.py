"""SSRF classification (no network) and host vetting."""

from __future__ import annotations

import ipaddress

import pytest

from server.errors import MediaFetchFailed, MediaHostNotAllowed
from server.media.ssrf import is_public_address, resolve_pinned

REFUSED = [
    "127.0.0.1",
    "127.255.0.9",
    "::1",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "0.0.0.0",
    "::",
    "100.64.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "240.0.0.1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "2002:7f00::1",
    "2002:c0a8:0101::1",
    "64:ff9b::7f00:1",
    "2001:db8::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "::7f00:1",
]
ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "2002:0808:0808::1",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize("address", REFUSED)
def test_refused(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_allowed(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.asyncio
async def test_resolve_ip_literals_without_dns() -> None:
    assert await resolve_pinned("8.8.8.8", 80, frozenset()) == ["8.8.8.8"]
    with pytest.raises(MediaHostNotAllowed):
        await resolve_pinned("10.0.0.1", 80, frozenset())
    assert await resolve_pinned("10.0.0.1", 80, frozenset({"10.0.0.1"})) == ["10.0.0.1"]


@pytest.mark.asyncio
async def test_resolve_names() -> None:
    # /etc/hosts answers these; no network needed.
    with pytest.raises(MediaHostNotAllowed):
        await resolve_pinned("localhost", 80, frozenset())
    assert "127.0.0.1" in await resolve_pinned("LOCALHOST.", 80, frozenset({"localhost"}))
    # Integer spellings of 127.0.0.1 resolve to loopback and are refused like it.
    with pytest.raises(MediaHostNotAllowed):
        await resolve_pinned("2130706433", 80, frozenset())
    with pytest.raises(MediaFetchFailed):
        await resolve_pinned("no-such-host.invalid", 80, frozenset())
