"""The web playground (`--ui`, on by default): GET / (the page), /ui/app.js and /ui/app.css (the
static files shipped in server/ui/, no build step), and /ui/config (what the page must know
before it has a key: whether the API wants one, the server's video defaults).

These paths need no API key (`PUBLIC_PATHS`, opened by the auth middleware): they hold no
secrets, and every API call the page makes carries the key the user typed. The files are read
once, served with an ETag and `Cache-Control: no-cache` (revalidated, 304 when unchanged), and
the page with a Content-Security-Policy that allows only its own script, style and API.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.deps import Context

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

# URL path -> (file in server/ui/, content type)
ASSETS: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
}
CONFIG_PATH = "/ui/config"
PUBLIC_PATHS = frozenset({*ASSETS, CONFIG_PATH})

# Media come in as data: URLs (thumbnails) and object URLs; everything else is this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob:; media-src 'self' data: blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_COMMON_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_PAGE_HEADERS = {**_COMMON_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY}

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@functools.cache
def load_assets() -> dict[str, Asset]:
    """The static files by URL path, read once (a missing file fails the first request)."""
    assets = {}
    for path, (name, media_type) in ASSETS.items():
        body = (UI_DIR / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        assets[path] = Asset(body, media_type, etag)
    return assets


def _route(path: str) -> Callable[[Request], Awaitable[Response]]:
    headers = _PAGE_HEADERS if path == "/" else _COMMON_HEADERS

    async def serve(request: Request) -> Response:
        asset = load_assets()[path]
        sent = {**headers, "ETag": asset.etag}
        if asset.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=sent)
        return Response(asset.body, media_type=asset.media_type, headers=sent)

    return serve


for _path in ASSETS:
    router.add_api_route(_path, _route(_path), methods=["GET"], response_class=Response)


@router.get(CONFIG_PATH)
async def ui_config(ctx: Context) -> dict[str, Any]:
    settings = ctx.settings
    return {
        "api_key_required": bool(settings.api_keys),
        "video": {
            "fps": settings.video_fps,
            "max_fps": settings.max_video_fps,
            "max_frames": settings.max_video_frames,
        },
    }
