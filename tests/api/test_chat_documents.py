"""PDF `file` parts in the front end over the stand-in engine: pages reach the engine as images
in page order behind `Page N:` markers, the token count is exact before the engine (usage, the
report headers, /tokenize all agree with the stand-in's own processor arithmetic), options and
caps, the Responses API's `input_file`, and the bad-input table: every case a 400 envelope."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from server.metrics import DOCUMENT_PAGE_RENDER_SECONDS
from server.model.image_processing import ImageProcessorConfig, num_image_tokens
from server.model.tiny import PREPROCESSOR_CONFIG
from tests.api.conftest import MODEL
from tests.pdf_writer import Page, huge_page_pdf, nested_arrays_pdf, write_pdf

pytestmark = pytest.mark.asyncio

URL = "/v1/chat/completions"
CFG = ImageProcessorConfig.from_dict(dict(PREPROCESSOR_CONFIG))
COLORS = [(230, 40, 40), (40, 200, 60), (40, 90, 230), (240, 220, 40), (150, 60, 200)]


def pdf_url(data: bytes) -> str:
    return "data:application/pdf;base64," + base64.b64encode(data).decode()


def colored_pages(n: int) -> list[Page]:
    """Page i filled with COLORS[i % 5]; portrait, landscape and square sizes in turn."""
    sizes = [(595, 842), (842, 595), (400, 400)]
    pages = []
    for i in range(n):
        w, h = sizes[i % 3]
        pages.append(Page(width=w, height=h).rect(0, 0, w, h, COLORS[i % 5]))
        pages[-1].text(40, h - 60, 20, f"Page {i + 1} of {n}").circle(w / 2, h / 2, 60, (0, 0, 0))
    return pages


def body(data: bytes | str, *, text: str = "What is on page 2?", **fields: Any) -> dict[str, Any]:
    url = data if isinstance(data, str) else pdf_url(data)
    parts = [{"type": "file", "file": {"file_data": url, "filename": "doc.pdf"}}]
    parts.append({"type": "text", "text": text})
    return {"model": MODEL, "messages": [{"role": "user", "content": parts}], **fields}


def tokens_of(image: Any) -> int:
    return num_image_tokens(image.width, image.height, CFG)


def expected_extra_tokens(tokenizer: Any, numbers: list[int], images: list[Any]) -> int:
    """Prompt tokens a document adds: per page its marker, image block and image tokens."""
    block = len(tokenizer.encode_text("image")) + 3  # start, marker, content, end
    return sum(
        len(tokenizer.encode_text(f"Page {n}:")) + block + tokens_of(im)
        for n, im in zip(numbers, images, strict=True)
    )


async def prompt_tokens_without_document(client: Any) -> int:
    text_only = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is on page 2?"}],
    }
    response = await client.post(URL, json=text_only)
    return int(response.json()["usage"]["prompt_tokens"])


@pytest.mark.parametrize("pages", [1, 3, 40])
async def test_pages_reach_the_engine_in_order_and_are_counted_exactly(
    make_client: Any, pages: int
) -> None:
    client, engine = await make_client()
    base = await prompt_tokens_without_document(client)
    request = body(write_pdf(colored_pages(pages)), document={"max_tokens": 3000})
    response = await client.post(URL, json=request)
    assert response.status_code == 200, response.text
    media = engine.requests[-1].multi_modal_data
    assert media is not None and len(media["image"]) == pages
    images = media["image"]
    centres = [im.getpixel((im.width // 4, im.height // 4)) for im in images]
    assert centres == [COLORS[i % 5] for i in range(pages)]  # page order kept
    shapes = [im.width > im.height for im in images[:3]]
    assert shapes == [False, True, False][: len(shapes)]  # portrait, landscape, square
    extra = expected_extra_tokens(engine.tokenizer, list(range(1, pages + 1)), images)
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == base + extra
    assert response.headers["X-Document-Pages"] == str(pages)
    assert response.headers["X-Document-Tokens"] == str(extra)
    prompt = engine.tokenizer.decode(engine.requests[-1].prompt_token_ids)
    markers = [f"Page {n}:<|media_start|>image" for n in range(1, pages + 1)]
    assert all(marker in prompt for marker in markers)
    positions = [prompt.index(marker) for marker in markers]
    assert positions == sorted(positions)
    # each page within its share of the budget, and within the model's per-image limit
    share = min(3000 // pages, CFG.in_token_limit // 4)
    assert all(tokens_of(im) <= share for im in images)


async def test_tokenize_counts_documents_as_chat_does(make_client: Any) -> None:
    client, _ = await make_client()
    request = body(write_pdf(colored_pages(3)), document={"max_tokens": 600})
    chat = await client.post(URL, json=request)
    assert chat.status_code == 200, chat.text
    request.pop("model")
    tokens = await client.post("/tokenize", json=request)
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["count"] == chat.json()["usage"]["prompt_tokens"]


async def test_page_selection_and_max_pages(make_client: Any) -> None:
    client, engine = await make_client()
    data = write_pdf(colored_pages(5))
    response = await client.post(URL, json=body(data, document={"pages": "4-5, 2"}))
    assert response.status_code == 200, response.text
    images = engine.requests[-1].multi_modal_data["image"]  # type: ignore[index]
    assert [im.getpixel((5, 5)) for im in images] == [COLORS[1], COLORS[3], COLORS[4]]
    prompt = engine.tokenizer.decode(engine.requests[-1].prompt_token_ids)
    assert "Page 2:" in prompt and "Page 4:" in prompt and "Page 1:" not in prompt
    response = await client.post(URL, json=body(data, document={"max_pages": 2}))
    assert response.headers["X-Document-Pages"] == "2"
    images = engine.requests[-1].multi_modal_data["image"]  # type: ignore[index]
    assert [im.getpixel((5, 5)) for im in images] == [COLORS[0], COLORS[1]]


async def test_budget_and_dpi_set_the_page_size(make_client: Any) -> None:
    client, engine = await make_client()
    data = write_pdf([Page().rect(0, 0, 595, 842, COLORS[0])] * 2)
    await client.post(URL, json=body(data, document={"max_tokens": 100}))
    small = engine.requests[-1].multi_modal_data["image"]  # type: ignore[index]
    assert all(tokens_of(im) <= 50 for im in small)
    await client.post(URL, json=body(data, document={"dpi": 36}))
    at_36 = engine.requests[-1].multi_modal_data["image"][0]  # type: ignore[index]
    assert abs(at_36.width - 595 / 2) <= 28 and abs(at_36.height - 842 / 2) <= 28
    await client.post(URL, json=body(data))  # default: A4 fills the model's per-image budget
    full = engine.requests[-1].multi_modal_data["image"][0]  # type: ignore[index]
    assert 0.85 * CFG.in_token_limit / 4 <= tokens_of(full) <= 1024


async def test_a_long_pdf_renders_only_the_pages_used(make_client: Any) -> None:
    client, engine = await make_client()
    data = write_pdf([Page(width=300, height=300).rect(0, 0, 300, 300, COLORS[2])] * 200)
    before = _rendered_pages()
    response = await client.post(URL, json=body(data, document={"max_pages": 5}))
    assert response.status_code == 200, response.text
    assert response.headers["X-Document-Pages"] == "5"
    assert _rendered_pages() - before == 5
    response = await client.post(URL, json=body(data))  # more than the server reads
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("too_many_pages", "document.max_pages")
    assert "100" in error["message"]


def _rendered_pages() -> float:
    for metric in DOCUMENT_PAGE_RENDER_SECONDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return sample.value
    return 0.0


async def test_streamed_answers_carry_the_document_headers(make_client: Any) -> None:
    client, _ = await make_client()
    request = body(write_pdf(colored_pages(2)), stream=True)
    async with client.stream("POST", URL, json=request) as response:
        assert response.status_code == 200
        assert response.headers["X-Document-Pages"] == "2"
        await response.aread()


async def test_images_and_documents_mix_in_prompt_order(make_client: Any) -> None:
    from tests.api.conftest import png_data_url

    client, engine = await make_client()
    parts = [
        {"type": "image_url", "image_url": {"url": png_data_url(40, 30, (1, 2, 3))}},
        {"type": "file", "file": {"file_data": pdf_url(write_pdf(colored_pages(2)))}},
        {"type": "image_url", "image_url": {"url": png_data_url(40, 30, (4, 5, 6))}},
    ]
    request = {"model": MODEL, "messages": [{"role": "user", "content": parts}]}
    response = await client.post(URL, json=request)
    assert response.status_code == 200, response.text
    images = engine.requests[-1].multi_modal_data["image"]  # type: ignore[index]
    firsts = [im.getpixel((5, 5)) for im in images]
    assert firsts == [(1, 2, 3), COLORS[0], COLORS[1], (4, 5, 6)]


async def test_bare_base64_file_data_is_accepted(make_client: Any) -> None:
    client, engine = await make_client()
    bare = base64.b64encode(write_pdf(colored_pages(1))).decode()
    response = await client.post(URL, json=body(bare))
    assert response.status_code == 200, response.text
    assert len(engine.requests[-1].multi_modal_data["image"]) == 1  # type: ignore[index]


async def test_responses_api_reads_input_file(make_client: Any) -> None:
    client, engine = await make_client()
    request = {
        "model": MODEL,
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_file", "file_data": pdf_url(write_pdf(colored_pages(3)))},
                    {"type": "input_text", "text": "Summarise."},
                ],
            }
        ],
    }
    response = await client.post("/v1/responses", json=request)
    assert response.status_code == 200, response.text
    assert len(engine.requests[-1].multi_modal_data["image"]) == 3  # type: ignore[index]
    request["input"][0]["content"][0] = {"type": "input_file", "file_data": pdf_url(b"x")}  # type: ignore[index]
    error = (await client.post("/v1/responses", json=request)).json()["error"]
    assert (error["code"], error["param"]) == ("invalid_document", "input[0].content[0]")


FILE = "messages[0].content[0].file"
PDF3 = write_pdf(colored_pages(3))


@pytest.mark.parametrize(
    ("settings", "request_body", "code", "param"),
    [
        ({}, body(b"GIF89a..."), "invalid_document", FILE),
        ({}, body(PDF3[:500]), "invalid_document", FILE),
        ({}, body(write_pdf(colored_pages(1), user_password="pw")), "invalid_document", FILE),
        ({}, body(huge_page_pdf()), "invalid_document", FILE),
        ({}, body(nested_arrays_pdf()), "invalid_document", FILE),
        ({}, body("data:application/pdf;base64,!!!"), "invalid_document", FILE),
        ({"max_media_bytes": 1000}, body(PDF3), "media_too_large", FILE),
        ({"document_page_timeout": 0.0001}, body(PDF3), "invalid_document", FILE),
        ({}, body(PDF3, document={"pages": "2-9"}), "invalid_value", "document.pages"),
        ({}, body(PDF3, document={"pages": "two"}), "invalid_value", "document.pages"),
        ({}, body(PDF3, document={"pages": "3-1"}), "invalid_value", "document.pages"),
        ({}, body(PDF3, document={"max_pages": 101}), "invalid_value", "document.max_pages"),
        ({"max_document_pages": 2}, body(PDF3), "too_many_pages", "document.max_pages"),
        ({}, body(PDF3, document={"max_tokens": 70000}), "invalid_value", "document.max_tokens"),
        ({}, body(PDF3, document={"max_tokens": 2}), "invalid_value", "document.max_tokens"),
        ({}, body(write_pdf(colored_pages(5))), "context_length_exceeded", "messages"),
    ],
    ids=[
        "not-pdf",
        "truncated",
        "encrypted",
        "huge-page",
        "nested",
        "bad-base64",
        "too-big",
        "page-timeout",
        "pages-beyond",
        "pages-syntax",
        "pages-reversed",
        "max-pages-cap",
        "server-page-cap",
        "max-tokens-cap",
        "max-tokens-too-small",
        "context",
    ],
)
async def test_bad_documents_get_envelopes(
    make_client: Any, settings: dict[str, Any], request_body: dict[str, Any], code: str, param: str
) -> None:
    client, engine = await make_client(settings=settings)
    response = await client.post(URL, json=request_body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    assert error["type"] == "invalid_request_error" and error["message"]
    assert engine.requests == []
    assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize(
    ("part", "param_start"),
    [
        ({"type": "file", "file": {}}, "messages[0].content[0]"),
        ({"type": "file", "file": {"file_data": "x", "file_id": "y"}}, "messages[0].content[0]"),
        ({"type": "file"}, "messages[0].content[0]"),
    ],
)
async def test_malformed_file_parts(
    make_client: Any, part: dict[str, Any], param_start: str
) -> None:
    client, _ = await make_client()
    request = {"model": MODEL, "messages": [{"role": "user", "content": [part]}]}
    response = await client.post(URL, json=request)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param_start)


async def test_documents_only_in_user_turns_and_dpi_bounds(make_client: Any) -> None:
    client, _ = await make_client()
    part = {"type": "file", "file": {"file_data": pdf_url(PDF3)}}
    request = {"model": MODEL, "messages": [{"role": "system", "content": [part]}]}
    assert (await client.post(URL, json=request)).status_code == 400
    for dpi in (5, 601):
        response = await client.post(URL, json=body(PDF3, document={"dpi": dpi}))
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "document.dpi"
