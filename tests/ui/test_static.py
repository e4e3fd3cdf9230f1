"""The playground's files over HTTP, without a browser: routes, content types, cache and security
headers, auth (page open, API protected), `--no-ui`, the wheel's package data, and the page's
size and text-only rendering rule."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.api import ui
from server.app import create_app
from server.model.tokenizer import TikTokenTokenizer
from server.settings import load_settings
from tests.fake_engine import FakeEngine

REPO = Path(__file__).resolve().parents[2]
KEY = "ui-key"
PAGE_BUDGET_BYTES = 48 * 1024  # index.html + app.js + app.css, uncompressed


def client_for(tokenizer: TikTokenTokenizer, **overrides: object) -> TestClient:
    settings = load_settings({"model": "fake/model", "served_model_name": ["m"], **overrides})
    return TestClient(create_app(settings, FakeEngine(tokenizer)))


@pytest.fixture
def keyed(kimi_tokenizer: TikTokenTokenizer) -> Iterator[TestClient]:
    with client_for(kimi_tokenizer, api_keys=[KEY]) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/", "text/html; charset=utf-8", b"<title>Kimi-VL playground</title>"),
        ("/ui/app.js", "text/javascript; charset=utf-8", b'"use strict";'),
        ("/ui/app.css", "text/css; charset=utf-8", b":root"),
    ],
)
def test_files_served_without_a_key(
    keyed: TestClient, path: str, content_type: str, marker: bytes
) -> None:
    response = keyed.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert marker in response.content
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    etag = response.headers["etag"]
    again = keyed.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""


def test_page_policy_allows_only_this_origin(keyed: TestClient) -> None:
    policy = keyed.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


def test_api_stays_protected(keyed: TestClient) -> None:
    assert keyed.get("/ui/config").json()["api_key_required"] is True
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions")]:
        refused = keyed.request(method, path, json={"messages": [{"role": "user", "content": "x"}]})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
    assert keyed.get("/ui/other.js").status_code == 401  # only the exact files are open
    models = keyed.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert models.status_code == 200


def test_config_tells_the_page_the_video_defaults(kimi_tokenizer: TikTokenTokenizer) -> None:
    with client_for(kimi_tokenizer, video_fps=2.0, max_video_frames=32) as client:
        config = client.get("/ui/config").json()
    assert config == {
        "api_key_required": False,
        "video": {"fps": 2.0, "max_fps": 4.0, "max_frames": 32},
    }


def test_no_ui_serves_nothing(kimi_tokenizer: TikTokenTokenizer) -> None:
    with client_for(kimi_tokenizer, ui=False) as client:
        for path in ui.PUBLIC_PATHS:
            assert client.get(path).status_code == 404
    with client_for(kimi_tokenizer, ui=False, api_keys=[KEY]) as client:
        assert client.get("/").status_code == 401  # no open paths without the page


def test_wheel_package_data_covers_the_files() -> None:
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    names = sorted(f.name for f in ui.UI_DIR.iterdir())
    assert names == ["app.css", "app.js", "index.html"]
    assert all(any(fnmatch(f"ui/{n}", p) for p in package_data["server"]) for n in names)


def test_page_is_small_and_self_contained() -> None:
    files = {name: (ui.UI_DIR / name).read_text() for name, _ in ui.ASSETS.values()}
    assert sum(len(text.encode()) for text in files.values()) < PAGE_BUDGET_BYTES
    for text in files.values():  # offline: nothing fetched from elsewhere
        assert not re.search(r"(src|href)=\"(https?:)?//", text)
        assert "@import" not in text and "url(http" not in text
    script = files["app.js"]
    assert len(script.splitlines()) < 600
    # Model text only ever goes in as textContent: no HTML-parsing sinks at all.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


def test_every_control_has_a_label() -> None:
    page = (ui.UI_DIR / "index.html").read_text()
    labelled = set(re.findall(r'<label for="([^"]+)"', page))
    controls = re.findall(r"<(?:input|select|textarea)\b[^>]*\bid=\"([^\"]+)\"", page)
    inside_label = set(re.findall(r"<label[^>]*><input[^>]*id=\"([^\"]+)\"", page))
    assert controls and set(controls) <= labelled | inside_label
