"""PDF rendering in its worker process (server/media/document.py) on PDFs written by
tests/pdf_writer.py: what the pages look like, sizes with rotation, the plan's say over which
pages are rendered, and every way a file can fail — each a 400 `invalid_document`, none a hang,
a crash or a process left behind."""

from __future__ import annotations

import asyncio
import time

import psutil
import pytest

from server.errors import InvalidDocument, InvalidRequest
from server.media.document import RenderedDocument, render_pdf
from server.media.pdf_worker import MAX_NESTING, nesting_depth
from tests.pdf_writer import Page, huge_page_pdf, nested_arrays_pdf, write_pdf

RED, BLUE, GREEN = (230, 40, 40), (40, 90, 230), (40, 200, 60)


def three_pages() -> bytes:
    return write_pdf(
        [
            Page().rect(0, 0, 595, 842, RED).text(72, 770, 24, "Page one"),
            Page(width=842, height=595).rect(0, 0, 842, 595, BLUE),
            Page(width=300, height=300, rotate=90).circle(150, 150, 140, GREEN),
        ]
    )


def every_page(scale: float = 0.5):  # type: ignore[no-untyped-def]
    def plan(sizes: list[tuple[float, float]]) -> list[tuple[int, float]]:
        return [(i, scale) for i in range(len(sizes))]

    return plan


def pdf_workers() -> list[psutil.Process]:
    children = psutil.Process().children(recursive=True)
    return [p for p in children if any("pdf_worker" in part for part in _cmdline(p))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


async def render(data: bytes, plan=None, timeout: float = 10.0) -> RenderedDocument:  # type: ignore[no-untyped-def]
    return await render_pdf(data, plan or every_page(), page_timeout_s=timeout)


@pytest.mark.asyncio
async def test_pages_come_back_in_order_at_the_planned_scale() -> None:
    doc = await render(three_pages())
    assert doc.page_count == 3
    assert [p.index for p in doc.pages] == [0, 1, 2]
    # half a pixel per point; the rotated square page stays square
    assert [p.image.size for p in doc.pages] == [(298, 421), (421, 298), (150, 150)]
    colors = [p.image.getpixel((p.image.width // 2, p.image.height // 2)) for p in doc.pages]
    assert colors == [RED, BLUE, GREEN]
    text = doc.pages[0].image.crop((30, 20, 120, 50))  # "Page one" in black on red
    assert min(text.convert("L").getdata()) < 100  # type: ignore[type-var]
    assert all(p.seconds > 0 for p in doc.pages)


@pytest.mark.asyncio
async def test_rotation_is_applied_to_the_size() -> None:
    seen: list[list[tuple[float, float]]] = []

    def plan(sizes: list[tuple[float, float]]) -> list[tuple[int, float]]:
        seen.append(sizes)
        return [(0, 0.25)]

    doc = await render(write_pdf([Page(width=400, height=200, rotate=90)]), plan)
    assert seen == [[(200.0, 400.0)]]
    assert doc.pages[0].image.size == (50, 100)


@pytest.mark.asyncio
async def test_only_the_planned_pages_are_rendered() -> None:
    data = write_pdf([Page(width=200, height=200).rect(0, 0, 200, 200, RED)] * 200)
    doc = await render(data, lambda sizes: [(199, 0.1), (4, 0.1)])
    assert doc.page_count == 200 and [p.index for p in doc.pages] == [199, 4]


@pytest.mark.asyncio
async def test_a_plan_that_refuses_stops_the_worker() -> None:
    def plan(sizes: list[tuple[float, float]]) -> list[tuple[int, float]]:
        raise InvalidRequest("no", param="document.pages")

    with pytest.raises(InvalidRequest):
        await render(three_pages(), plan)
    assert pdf_workers() == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GIF89a not a pdf", "not a PDF"),
        (b"", "not a PDF"),
        (three_pages()[:400], "could not be read"),
        (b"%PDF-1.7\n" + b"\x00\xff" * 500, "could not be read"),
        (write_pdf([Page()], user_password="secret"), "encrypted"),
        (huge_page_pdf(), "at most 14400 points"),
        (write_pdf([Page(width=20000, height=100)]), "at most 14400 points"),
        (nested_arrays_pdf(), "nested more than 64 levels"),
        (write_pdf([]), "could not be read"),
    ],
    ids=[
        "gif",
        "empty",
        "truncated",
        "garbage",
        "encrypted",
        "huge-page",
        "long-page",
        "nested",
        "no-pages",
    ],
)
@pytest.mark.asyncio
async def test_bad_files_are_invalid_documents(data: bytes, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidDocument) as info:
        await render(data)
    assert message in info.value.message
    assert info.value.code == "invalid_document" and info.value.status_code == 400
    assert time.perf_counter() - started < 10
    assert pdf_workers() == []


@pytest.mark.asyncio
async def test_a_page_over_the_time_limit_is_refused() -> None:
    pages = [Page().circle(300, 400, 250, RED) for _ in range(3)]
    with pytest.raises(InvalidDocument, match="took longer than"):
        await render(write_pdf(pages), every_page(4.0), timeout=0.001)
    assert pdf_workers() == []


@pytest.mark.asyncio
async def test_cancelling_kills_the_worker() -> None:
    pages = [Page().circle(300, 400, 250, RED) for _ in range(40)]
    task = asyncio.create_task(render(write_pdf(pages), every_page(4.0)))
    for _ in range(200):  # until the worker runs
        await asyncio.sleep(0.01)
        if pdf_workers():
            break
    assert pdf_workers()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if not pdf_workers():
            break
        await asyncio.sleep(0.05)
    assert pdf_workers() == []


def test_nesting_depth_skips_stream_bodies() -> None:
    assert nesting_depth(b"<< /A [1 [2] << /B 3 >>] >>") == 3
    body = b"[" * 500
    stream = b"<< /Length 500 >>\nstream\n" + body + b"\nendstream"
    assert nesting_depth(stream) == 1
    assert nesting_depth(b"[" * (MAX_NESTING + 1)) == MAX_NESTING + 1
