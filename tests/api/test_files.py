"""The Files API over the stand-in engine: upload (multipart), batch input checked line by line,
list with pagination, retrieve, content, delete; the size cap; state that survives a restart
(a new app on the same state folder); and a PDF uploaded as `user_data` read by a chat `file`
part through its `file_id`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server.app import create_app
from tests.api.conftest import MODEL, api_settings
from tests.fake_engine import FakeEngine
from tests.pdf_writer import Page, write_pdf

pytestmark = pytest.mark.asyncio


def batch_line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **body},
    }


def jsonl(*lines: Any) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def upload(client: Any, data: bytes, purpose: str = "batch", name: str = "in.jsonl") -> Any:
    return await client.post("/v1/files", files={"file": (name, data)}, data={"purpose": purpose})


async def test_upload_retrieve_content_list_delete(make_client: Any, tmp_path: Path) -> None:
    client, _ = await make_client(settings={"state_dir": tmp_path})
    data = jsonl(batch_line("a"), batch_line("b", max_tokens=3))
    response = await upload(client, data)
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["object"] == "file" and created["id"].startswith("file-")
    assert (created["bytes"], created["filename"], created["purpose"]) == (
        len(data),
        "in.jsonl",
        "batch",
    )
    assert created["status"] == "processed"
    got = await client.get(f"/v1/files/{created['id']}")
    assert got.json() == created
    content = await client.get(f"/v1/files/{created['id']}/content")
    assert content.status_code == 200 and content.content == data
    listed = (await client.get("/v1/files")).json()
    assert listed["object"] == "list" and [f["id"] for f in listed["data"]] == [created["id"]]
    deleted = await client.delete(f"/v1/files/{created['id']}")
    assert deleted.json() == {"id": created["id"], "object": "file", "deleted": True}
    for path in (f"/v1/files/{created['id']}", f"/v1/files/{created['id']}/content"):
        gone = await client.get(path)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "file_not_found"
    assert (await client.delete(f"/v1/files/{created['id']}")).status_code == 404
    assert list((tmp_path / "files").iterdir()) == []  # the content went with it


async def test_pagination(make_client: Any, tmp_path: Path) -> None:
    client, _ = await make_client(settings={"state_dir": tmp_path})
    ids = [(await upload(client, b"x" * i, "user_data", f"{i}.bin")).json()["id"] for i in range(5)]
    page = (await client.get("/v1/files", params={"limit": 2, "order": "asc"})).json()
    assert [f["id"] for f in page["data"]] == ids[:2] and page["has_more"]
    assert page["first_id"] == ids[0] and page["last_id"] == ids[1]
    rest = (
        await client.get("/v1/files", params={"limit": 10, "order": "asc", "after": ids[1]})
    ).json()
    assert [f["id"] for f in rest["data"]] == ids[2:] and not rest["has_more"]
    newest = (await client.get("/v1/files", params={"limit": 1})).json()
    assert newest["data"][0]["id"] == ids[-1]
    batch_only = (await client.get("/v1/files", params={"purpose": "batch"})).json()
    assert batch_only["data"] == []


@pytest.mark.parametrize(
    ("lines", "line_no", "reason"),
    [
        ([batch_line("a"), "not json"], 2, "not valid JSON"),
        ([batch_line("a"), batch_line("a")], 2, "appears twice"),
        ([{**batch_line("a"), "method": "GET"}], 1, "'method'"),
        ([{**batch_line("a"), "url": "/v1/embeddings"}], 1, "'url' must be one of"),
        ([batch_line("a", stream=True)], 1, "cannot stream"),
        ([batch_line("a", temperature=9)], 1, "body.temperature"),
        ([{k: v for k, v in batch_line("a").items() if k != "custom_id"}], 1, "custom_id"),
        ([batch_line("a"), [1, 2]], 2, "JSON object"),
    ],
)
async def test_a_bad_batch_line_is_refused_with_its_number(
    make_client: Any, tmp_path: Path, lines: list[Any], line_no: int, reason: str
) -> None:
    client, _ = await make_client(settings={"state_dir": tmp_path})
    data = b"".join(
        (line if isinstance(line, str) else json.dumps(line)).encode() + b"\n" for line in lines
    )
    response = await upload(client, data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_batch_line" and error["param"] == "file"
    assert error["message"].startswith(f"Line {line_no} ") and reason in error["message"]
    assert (await client.get("/v1/files")).json()["data"] == []


async def test_size_cap_and_bad_purpose(make_client: Any, tmp_path: Path) -> None:
    client, _ = await make_client(settings={"state_dir": tmp_path, "max_file_bytes": 4096})
    too_big = await upload(client, b"x" * 5000, "user_data")
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "request_too_large"
    way_too_big = await upload(client, b"x" * 200_000, "user_data")  # over the body cap too
    assert way_too_big.status_code == 413
    bad = await upload(client, b"x", "fine-tune")
    assert bad.status_code == 400 and bad.json()["error"]["param"].endswith("purpose")
    assert (await client.get("/v1/files")).json()["data"] == []
    assert [p for p in (tmp_path / "files").iterdir()] == []


async def test_files_survive_a_restart(
    make_client: Any, tmp_path: Path, kimi_tokenizer: Any
) -> None:
    client, _ = await make_client(settings={"state_dir": tmp_path})
    created = (await upload(client, jsonl(batch_line("a")))).json()
    import httpx

    app = create_app(api_settings(state_dir=tmp_path), FakeEngine(kimi_tokenizer))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as again:
        assert (await again.get(f"/v1/files/{created['id']}")).json() == created


async def test_a_chat_reads_an_uploaded_pdf_by_file_id(make_client: Any, tmp_path: Path) -> None:
    client, engine = await make_client(settings={"state_dir": tmp_path})
    pdf = write_pdf([Page(width=300, height=300).rect(0, 0, 300, 300, (230, 40, 40))] * 2)
    file_id = (await upload(client, pdf, "user_data", "doc.pdf")).json()["id"]
    part: dict[str, Any] = {"type": "file", "file": {"file_id": file_id}}
    body = {"model": MODEL, "messages": [{"role": "user", "content": [part]}]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["X-Document-Pages"] == "2"
    images = engine.requests[-1].multi_modal_data["image"]  # type: ignore[index]
    assert [im.getpixel((5, 5)) for im in images] == [(230, 40, 40)] * 2
    part["file"]["file_id"] = "file-missing"
    missing = await client.post("/v1/chat/completions", json=body)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "file_not_found"
