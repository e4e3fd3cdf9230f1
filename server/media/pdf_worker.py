"""The process that runs PDFium: open a PDF, report its page sizes, render the pages asked for.

`python server/media/pdf_worker.py FD`: a child process of the server (server/media/document.py
starts and supervises it) that talks over the socket FD (multiprocessing Connection framing), so
that a hostile or broken file can at worst crash or stall this
process, never the server. It imports only pypdfium2 and the standard library, holds no policy
(which pages, what size: the parent decides) and limits its own address space before it
touches the file.

Protocol (pickled tuples):
  parent -> worker   the PDF bytes (one raw message)
  worker -> parent   ("opened", [(width_pt, height_pt), ...])  one entry per page, rotation applied
                     or ("error", kind, message) and exit;
                     kind: "encrypted" | "malformed" | "nesting"
  parent -> worker   [(page_index, scale), ...]   pages to render, in order (or [] to stop)
  worker -> parent   ("page", page_index, width, height, rgb_bytes)  per page, in that order
                     or ("error", "render", message)
"""

from __future__ import annotations

import os
import re
import resource
import sys
from multiprocessing.connection import Connection

# Address space the worker may add to what it has at start: PDFium's own structures plus one
# page bitmap (the parent never asks for more than the model's per-image budget of pixels).
EXTRA_ADDRESS_SPACE = 1536 * 2**20
# Deepest nesting of arrays and dictionaries accepted (PDFium's parser stops at 64 and drops
# what lies deeper; a file that deep is built to attack parsers, not to be read).
MAX_NESTING = 64
_STREAM = re.compile(rb"stream\r?\n.*?endstream", re.DOTALL)
_BRACKETS = re.compile(rb"<<|>>|\[|\]")


def nesting_depth(data: bytes) -> int:
    """Deepest nesting of `[`/`<<` outside stream bodies (counting stops past MAX_NESTING)."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(_STREAM.sub(b"", data)):
        if match[0] in (b"[", b"<<"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_NESTING:
                    break
        else:
            depth = max(0, depth - 1)
    return deepest


def _limit_memory() -> None:
    with open("/proc/self/statm") as f:
        vm_bytes = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = vm_bytes + EXTRA_ADDRESS_SPACE
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(fd: int) -> None:
    try:
        _limit_memory()
    except (OSError, ValueError):  # no /proc or no permission: PDFium runs unbounded
        pass
    conn = Connection(fd)
    try:
        run(conn, conn.recv_bytes())
    except EOFError:  # the parent gave up on us
        pass
    finally:
        conn.close()


def run(conn: Connection, data: bytes) -> None:
    import pypdfium2 as pdfium

    if nesting_depth(data) > MAX_NESTING:
        message = f"objects are nested more than {MAX_NESTING} levels deep (a parser bomb)"
        conn.send(("error", "nesting", message))
        return

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        message = str(exc)
        kind = "encrypted" if "password" in message.lower() else "malformed"
        conn.send(("error", kind, message))
        return
    try:
        sizes = [tuple(pdf.get_page_size(i)) for i in range(len(pdf))]
        conn.send(("opened", sizes))
        plan: list[tuple[int, float]] = conn.recv()
        for index, scale in plan:
            page = pdf[index]
            try:
                image = page.render(scale=scale, may_draw_forms=False).to_pil().convert("RGB")
            finally:
                page.close()
            conn.send(("page", index, image.width, image.height, image.tobytes()))
    except (pdfium.PdfiumError, MemoryError, ValueError) as exc:
        conn.send(("error", "render", f"{type(exc).__name__}: {exc}"))
    except EOFError:  # the parent gave up on us
        pass
    finally:
        pdf.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
