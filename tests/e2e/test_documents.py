"""PDF `file` parts through the real server and the official `openai` SDK: vLLM's own count of
the prompt equals the server's (text + `X-Document-Tokens`, and /tokenize), pages in order, the
Responses API's `input_file`, streaming with a page selection, and hostile files refused with the
server healthy and no renderer process left behind."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import openai
import psutil
import pytest

from server.settings import TINY_MODEL_NAME
from tests.e2e.conftest import API_KEY, RunningServer
from tests.pdf_writer import Page, nested_arrays_pdf, write_pdf

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUESTION = "What is on page 2?"
DOCUMENT = {"max_tokens": 900}


def pdf(pages: int) -> bytes:
    shapes = []
    for i in range(pages):
        w, h = [(595, 842), (842, 595), (400, 400)][i % 3]
        page = Page(width=w, height=h).rect(0, 0, w, h, (40, 40, 40))
        page.circle(w / 2, h / 2, min(w, h) / 4, (230, 40, 40)).text(30, h - 40, 18, f"p{i + 1}")
        shapes.append(page)
    return write_pdf(shapes)


def file_part(data: bytes) -> dict[str, Any]:
    url = "data:application/pdf;base64," + base64.b64encode(data).decode()
    return {"type": "file", "file": {"file_data": url, "filename": "doc.pdf"}}


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)


def text_only_tokens(client: openai.OpenAI) -> int:
    reply = client.chat.completions.create(
        model=TINY_MODEL_NAME,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=1,
    )
    assert reply.usage is not None
    return reply.usage.prompt_tokens


def test_vllm_counts_the_pages_as_the_server_does(
    server: RunningServer, client: openai.OpenAI
) -> None:
    base = text_only_tokens(client)
    messages: Any = [
        {"role": "user", "content": [file_part(pdf(3)), {"type": "text", "text": QUESTION}]}
    ]
    raw = client.chat.completions.with_raw_response.create(
        model=TINY_MODEL_NAME, messages=messages, max_tokens=2, extra_body={"document": DOCUMENT}
    )
    reply = raw.parse()
    assert reply.usage is not None and reply.choices[0].finish_reason in ("length", "stop")
    assert raw.headers["X-Document-Pages"] == "3"
    # usage.prompt_tokens is vLLM's own count after its processor expanded every page
    assert reply.usage.prompt_tokens == base + int(raw.headers["X-Document-Tokens"])
    counted = httpx.post(
        server.base_url + "/tokenize",
        json={"messages": messages, "document": DOCUMENT},
        headers=AUTH,
        timeout=60,
    )
    assert counted.json()["count"] == reply.usage.prompt_tokens


def test_streamed_page_selection(client: openai.OpenAI) -> None:
    messages: Any = [
        {"role": "user", "content": [file_part(pdf(5)), {"type": "text", "text": QUESTION}]}
    ]
    stream = client.chat.completions.create(
        model=TINY_MODEL_NAME,
        messages=messages,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"document": {"pages": "2,4-5", "max_tokens": 600}},
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens >= 1
    one_page = client.chat.completions.create(
        model=TINY_MODEL_NAME,
        messages=messages,
        max_tokens=1,
        extra_body={"document": {"pages": "2", "max_tokens": 200}},
    )
    assert one_page.usage is not None and one_page.usage.prompt_tokens < usage.prompt_tokens


def test_responses_api_input_file(client: openai.OpenAI) -> None:
    url = "data:application/pdf;base64," + base64.b64encode(pdf(2)).decode()
    response = client.responses.create(
        model=TINY_MODEL_NAME,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_file", "file_data": url, "filename": "doc.pdf"},
                    {"type": "input_text", "text": "Summarise."},
                ],
            }
        ],
        max_output_tokens=4,
    )
    assert response.status in ("completed", "incomplete")
    assert response.usage is not None and response.usage.input_tokens > 2 * 10


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7 truncated",
        write_pdf([Page()], user_password="secret"),
        nested_arrays_pdf(),
        write_pdf([Page(width=50_000, height=50_000)]),
    ],
    ids=["truncated", "encrypted", "nested", "huge-page"],
)
def test_hostile_files_are_refused(
    server: RunningServer, client: openai.OpenAI, data: bytes
) -> None:
    messages: Any = [{"role": "user", "content": [file_part(data)]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=TINY_MODEL_NAME, messages=messages, max_tokens=1)
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_document"
    assert error["param"] == "messages[0].content[0].file"
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200
    children = psutil.Process(server.pid).children(recursive=True)
    assert not [p for p in children if "pdf_worker" in " ".join(_cmdline(p))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def test_sdk_files_api_and_a_pdf_by_file_id(client: openai.OpenAI, tmp_path: Any) -> None:
    path = tmp_path / "doc.pdf"
    path.write_bytes(pdf(2))
    uploaded = client.files.create(file=path.open("rb"), purpose="user_data")
    assert uploaded.filename == "doc.pdf" and uploaded.bytes == path.stat().st_size
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).read() == path.read_bytes()
    assert uploaded.id in [f.id for f in client.files.list()]
    messages: Any = [
        {
            "role": "user",
            "content": [
                {"type": "file", "file": {"file_id": uploaded.id}},
                {"type": "text", "text": QUESTION},
            ],
        }
    ]
    raw = client.chat.completions.with_raw_response.create(
        model=TINY_MODEL_NAME, messages=messages, max_tokens=1, extra_body={"document": DOCUMENT}
    )
    assert raw.headers["X-Document-Pages"] == "2"
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
