"""fetch_media: data: URLs, file:// under a root, http(s) through the SSRF guard (real server)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import pytest

from server.errors import (
    InvalidImageURL,
    MediaFetchFailed,
    MediaHostNotAllowed,
    MediaTimeout,
    MediaTooLarge,
)
from server.media.fetch import MediaLimits, fetch_media
from server.media.ssrf import PinnedTransport
from server.settings import Settings
from tests.media.conftest import MediaServer


def limits(**overrides: object) -> MediaLimits:
    values: dict[str, object] = {
        "max_bytes": 1 << 20,
        "timeout_s": 5.0,
        "max_image_pixels": 10_000_000,
    }
    values.update(overrides)
    return MediaLimits(**values)  # type: ignore[arg-type]


# -- data: -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_data_url_base64(png_bytes: bytes) -> None:
    url = "data:image/png;base64," + base64.b64encode(png_bytes).decode()
    assert await fetch_media(url, limits=limits()) == png_bytes


@pytest.mark.asyncio
async def test_data_url_tolerates_line_breaks(png_bytes: bytes) -> None:
    encoded = base64.encodebytes(png_bytes).decode()  # MIME style: wrapped at 76 chars
    assert await fetch_media("data:image/png;base64," + encoded, limits=limits()) == png_bytes


@pytest.mark.parametrize("payload", ["not*base64!", "QUJD=", "QUJDRA=x", "QQ"])
@pytest.mark.asyncio
async def test_data_url_bad_base64(payload: str) -> None:
    with pytest.raises(InvalidImageURL) as err:
        await fetch_media("data:image/png;base64," + payload, limits=limits())
    assert err.value.code == "invalid_image_url"


@pytest.mark.asyncio
async def test_data_url_without_comma() -> None:
    with pytest.raises(InvalidImageURL):
        await fetch_media("data:image/png;base64", limits=limits())


@pytest.mark.asyncio
async def test_data_url_size_cap_before_decoding() -> None:
    url = "data:image/png;base64," + base64.b64encode(b"\0" * 5000).decode()
    with pytest.raises(MediaTooLarge) as err:
        await fetch_media(url, limits=limits(max_bytes=4096))
    assert err.value.code == "media_too_large"


@pytest.mark.asyncio
async def test_unknown_scheme() -> None:
    with pytest.raises(InvalidImageURL):
        await fetch_media("ftp://example.com/x.png", limits=limits())


# -- file:// ---------------------------------------------------------------------------------


@pytest.fixture
def media_root(tmp_path: Path, png_bytes: bytes) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(png_bytes)
    (tmp_path / "secret.png").write_bytes(b"secret")
    return root


@pytest.mark.asyncio
async def test_file_inside_root(media_root: Path, png_bytes: bytes) -> None:
    url = (media_root / "sub" / "a.png").as_uri()
    assert await fetch_media(url, limits=limits(allowed_local_path=media_root)) == png_bytes


@pytest.mark.asyncio
async def test_file_disabled_without_root(media_root: Path) -> None:
    with pytest.raises(MediaHostNotAllowed):
        await fetch_media((media_root / "sub" / "a.png").as_uri(), limits=limits())


@pytest.mark.asyncio
async def test_file_outside_root(media_root: Path) -> None:
    with pytest.raises(MediaHostNotAllowed):
        await fetch_media(
            (media_root.parent / "secret.png").as_uri(),
            limits=limits(allowed_local_path=media_root),
        )


@pytest.mark.asyncio
async def test_file_traversal(media_root: Path) -> None:
    url = f"file://{media_root}/sub/../../secret.png"
    with pytest.raises(MediaHostNotAllowed):
        await fetch_media(url, limits=limits(allowed_local_path=media_root))


@pytest.mark.asyncio
async def test_file_symlink_escape(media_root: Path) -> None:
    os.symlink(media_root.parent / "secret.png", media_root / "link.png")
    os.symlink(media_root.parent, media_root / "dirlink")
    for name in ("link.png", "dirlink/secret.png"):
        with pytest.raises(MediaHostNotAllowed):
            await fetch_media(
                (media_root / name).as_uri(), limits=limits(allowed_local_path=media_root)
            )


@pytest.mark.asyncio
async def test_file_symlink_inside_root_is_fine(media_root: Path, png_bytes: bytes) -> None:
    os.symlink(media_root / "sub" / "a.png", media_root / "alias.png")
    url = (media_root / "alias.png").as_uri()
    assert await fetch_media(url, limits=limits(allowed_local_path=media_root)) == png_bytes


@pytest.mark.asyncio
async def test_file_missing_directory_and_too_large(media_root: Path) -> None:
    lim = limits(allowed_local_path=media_root, max_bytes=10)
    with pytest.raises(MediaFetchFailed):
        await fetch_media((media_root / "nope.png").as_uri(), limits=lim)
    with pytest.raises(InvalidImageURL):
        await fetch_media((media_root / "sub").as_uri(), limits=lim)
    with pytest.raises(MediaTooLarge):
        await fetch_media((media_root / "sub" / "a.png").as_uri(), limits=lim)


@pytest.mark.asyncio
async def test_file_url_with_remote_host(media_root: Path) -> None:
    with pytest.raises(InvalidImageURL):
        await fetch_media(
            f"file://otherhost{media_root}/sub/a.png", limits=limits(allowed_local_path=media_root)
        )


# -- http ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_http_allowed_by_allowlist(fresh_media_server: MediaServer, png_bytes: bytes) -> None:
    server = fresh_media_server
    for host in ("localhost", "127.0.0.1"):
        data = await fetch_media(
            server.url("/img.png", host=host), limits=limits(allowed_hosts=frozenset({host}))
        )
        assert data == png_bytes
    assert server.requests == [
        ("/img.png", f"localhost:{server.port}"),
        ("/img.png", f"127.0.0.1:{server.port}"),
    ]


@pytest.mark.asyncio
async def test_http_refused_without_allowlist_sends_nothing(
    fresh_media_server: MediaServer,
) -> None:
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(MediaHostNotAllowed) as err:
            await fetch_media(fresh_media_server.url("/img.png", host=host), limits=limits())
        assert err.value.code == "media_host_not_allowed"
    assert fresh_media_server.requests == []


@pytest.mark.asyncio
async def test_redirect_to_refused_address(fresh_media_server: MediaServer) -> None:
    # `localhost` is allowed, the redirect target 127.0.0.1 is not (and is private).
    lim = limits(allowed_hosts=frozenset({"localhost"}))
    with pytest.raises(MediaHostNotAllowed):
        await fetch_media(fresh_media_server.url("/to-loopback-ip", host="localhost"), limits=lim)
    assert fresh_media_server.paths == ["/to-loopback-ip"]


@pytest.mark.asyncio
async def test_three_redirects_followed(fresh_media_server: MediaServer, png_bytes: bytes) -> None:
    lim = limits(allowed_hosts=frozenset({"127.0.0.1"}))
    assert await fetch_media(fresh_media_server.url("/redirect/3"), limits=lim) == png_bytes
    assert len(fresh_media_server.requests) == 4


@pytest.mark.asyncio
async def test_more_than_three_redirects_refused(fresh_media_server: MediaServer) -> None:
    lim = limits(allowed_hosts=frozenset({"127.0.0.1"}))
    with pytest.raises(MediaFetchFailed, match="redirects"):
        await fetch_media(fresh_media_server.url("/redirect/4"), limits=lim)
    assert "/img.png" not in fresh_media_server.paths


@pytest.mark.asyncio
async def test_oversized_body_refused_mid_stream(fresh_media_server: MediaServer) -> None:
    lim = limits(allowed_hosts=frozenset({"127.0.0.1"}), max_bytes=200_000)
    with pytest.raises(MediaTooLarge):
        await fetch_media(fresh_media_server.url("/big-undeclared"), limits=lim)


@pytest.mark.asyncio
async def test_oversized_declared_length_refused(fresh_media_server: MediaServer) -> None:
    lim = limits(allowed_hosts=frozenset({"127.0.0.1"}))
    with pytest.raises(MediaTooLarge):
        await fetch_media(fresh_media_server.url("/big-declared"), limits=lim)


@pytest.mark.asyncio
async def test_slow_server_times_out(fresh_media_server: MediaServer) -> None:
    lim = limits(allowed_hosts=frozenset({"127.0.0.1"}), timeout_s=0.3)
    with pytest.raises(MediaTimeout) as err:
        await fetch_media(fresh_media_server.url("/slow"), limits=lim)
    assert err.value.code == "media_timeout"


@pytest.mark.asyncio
async def test_http_error_status(fresh_media_server: MediaServer) -> None:
    lim = limits(allowed_hosts=frozenset({"127.0.0.1"}))
    with pytest.raises(MediaFetchFailed, match="404"):
        await fetch_media(fresh_media_server.url("/missing"), limits=lim)


@pytest.mark.asyncio
async def test_connection_refused_is_fetch_failed() -> None:
    lim = limits(allowed_hosts=frozenset({"127.0.0.1"}))
    with pytest.raises(MediaFetchFailed):
        await fetch_media("http://127.0.0.1:1/x.png", limits=lim)


@pytest.mark.asyncio
async def test_pinned_transport_connects_to_the_pinned_address(
    fresh_media_server: MediaServer, png_bytes: bytes
) -> None:
    # `media.invalid` does not resolve at all: reaching the server proves the connection used
    # the pinned address, while the Host header still carries the URL's name.
    pins = {"media.invalid": ["127.0.0.1"]}
    async with httpx.AsyncClient(transport=PinnedTransport(pins), trust_env=False) as client:
        response = await client.get(f"http://media.invalid:{fresh_media_server.port}/img.png")
        assert response.content == png_bytes
        with pytest.raises(Exception, match="unvetted"):
            await client.get(f"http://other.invalid:{fresh_media_server.port}/img.png")
    assert fresh_media_server.requests == [("/img.png", f"media.invalid:{fresh_media_server.port}")]


def test_limits_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        max_media_bytes=1234,
        media_fetch_timeout=2.5,
        max_image_pixels=99,
        allowed_media_hosts=["Assets.Example.", "[::1]"],
        allowed_local_media_path=tmp_path,
    )
    lim = MediaLimits.from_settings(settings)
    assert lim == MediaLimits(
        max_bytes=1234,
        timeout_s=2.5,
        max_image_pixels=99,
        allowed_hosts=frozenset({"assets.example", "::1"}),
        allowed_local_path=tmp_path.resolve(),
    )
