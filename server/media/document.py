"""PDF bytes -> page images, rendered by PDFium in a supervised worker process.

PDFium is fast and faithful but is C code fed with untrusted files, and not thread-safe. Each
document therefore gets its own short-lived process (server/media/pdf_worker.py run as a script: a
fresh interpreter that shares nothing with the server, its address space capped), connected by
a socket pair. The parent keeps all policy:
it checks the file is a PDF, learns the page sizes, lets the caller choose pages and a scale
for each (`plan`), then receives the pages one at a time, each within `page_timeout_s`. A worker
that errs, crashes, runs out of memory or overruns a deadline is killed, and the request gets a
400 `invalid_document`; the server itself never runs PDFium code.

Pages larger than PDF's own limit (14400 units, 200 inches; ISO 32000-1 Annex C) are refused:
they are the usual shape of a "PDF bomb", and a renderer asked to honour them allocates
gigabytes.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from PIL import Image

from server.errors import InvalidDocument
from server.media import pdf_worker

PDF_MAGIC = b"%PDF-"
MAGIC_WINDOW = 1024  # PDF readers accept the header anywhere in the first kilobyte
MAX_PAGE_POINTS = 14400.0
POINTS_PER_INCH = 72.0

PageSize = tuple[float, float]  # (width, height) in points, page rotation applied
# (page sizes) -> [(page index, scale in pixels per point)], raising APIError to refuse
Plan = Callable[[list[PageSize]], list[tuple[int, float]]]


@dataclass(frozen=True, slots=True)
class RenderedPage:
    index: int  # 0-based page index in the file
    image: Image.Image
    seconds: float  # render time, as the parent waited for it


@dataclass(frozen=True, slots=True)
class RenderedDocument:
    page_count: int
    pages: list[RenderedPage]


def check_pdf(data: bytes) -> None:
    if PDF_MAGIC not in data[:MAGIC_WINDOW]:
        raise InvalidDocument("The file is not a PDF (no '%PDF-' header); only PDFs are read.")


def check_page_sizes(sizes: list[PageSize]) -> None:
    if not sizes:
        raise InvalidDocument("The PDF has no pages.")
    for number, (width, height) in enumerate(sizes, start=1):
        if not (0 < width <= MAX_PAGE_POINTS and 0 < height <= MAX_PAGE_POINTS):
            raise InvalidDocument(
                f"Page {number} is {width:g} x {height:g} points; PDF pages are at most "
                f"{MAX_PAGE_POINTS:g} points (200 inches) on a side."
            )


async def render_pdf(data: bytes, plan: Plan, *, page_timeout_s: float) -> RenderedDocument:
    """Render the pages `plan` picks. Cancelling the caller kills the worker."""
    check_pdf(data)
    job = _Job(data, plan, page_timeout_s)
    try:
        return await asyncio.to_thread(job.run)
    except asyncio.CancelledError:
        job.kill()
        raise


class _Job:
    """One worker process, driven from one thread (`run`); `kill` may come from another."""

    def __init__(self, data: bytes, plan: Plan, page_timeout_s: float) -> None:
        self.data, self.plan, self.timeout = data, plan, page_timeout_s
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._killed = False

    def run(self) -> RenderedDocument:
        ours, theirs = socket.socketpair()
        with self._lock:
            if self._killed:
                raise InvalidDocument("The document was abandoned.")
            process = subprocess.Popen(
                # the file, not the module: no package __init__ (httpx, settings…) to import
                [sys.executable, "-I", pdf_worker.__file__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._process = process
        theirs.close()
        conn = Connection(ours.detach())
        try:
            conn.send_bytes(self.data)
            return self._drive(conn)
        finally:
            conn.close()
            try:
                process.wait(1.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        with self._lock:
            self._killed = True
            if self._process is not None and self._process.poll() is None:
                self._process.kill()

    def _drive(self, conn: Connection) -> RenderedDocument:
        opened = self._receive(conn, "to open the document")
        if opened[0] != "opened":
            raise self._error(opened)
        sizes: list[PageSize] = [(float(w), float(h)) for w, h in opened[1]]
        check_page_sizes(sizes)
        plan = self.plan(sizes)
        conn.send(plan)
        pages = []
        for index, _scale in plan:
            started = time.perf_counter()
            message = self._receive(conn, f"to render page {index + 1}")
            if message[0] != "page" or message[1] != index:
                raise self._error(message)
            _, _, width, height, rgb = message
            image = Image.frombytes("RGB", (width, height), rgb)
            pages.append(RenderedPage(index, image, time.perf_counter() - started))
        return RenderedDocument(len(sizes), pages)

    def _receive(self, conn: Connection, what: str) -> Any:
        try:
            if not conn.poll(self.timeout):
                raise InvalidDocument(
                    f"The PDF took longer than {self.timeout:g} s {what}; it was not read."
                )
            return conn.recv()
        except (EOFError, OSError):
            raise InvalidDocument(
                f"The PDF could not be read: the renderer stopped while trying {what} (a "
                "malformed or hostile file)."
            ) from None

    @staticmethod
    def _error(message: Any) -> InvalidDocument:
        if message[0] == "error" and message[1] == "encrypted":
            return InvalidDocument("The PDF is encrypted (password protected); it cannot be read.")
        detail = message[2] if message[0] == "error" else "unexpected reply from the renderer"
        return InvalidDocument(f"The PDF could not be read: {str(detail).rstrip('.')}.")
