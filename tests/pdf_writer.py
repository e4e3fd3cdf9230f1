"""A minimal PDF writer for tests: pages of vector shapes and Helvetica text, written by hand
(ISO 32000-1: header, numbered objects, cross-reference table, trailer), so the documents the
tests feed the server come from a different code base than the PDFium that reads them.

Also the hostile kinds: RC4-encrypted with a user password (standard security handler,
revision 2: ISO 32000-1 §7.6.3, algorithms 2, 3 and 4), pages larger than PDF allows, deeply
nested arrays, truncated files.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

# ISO 32000-1 §7.6.3.3, algorithm 2: the padding string.
_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")

RGB = tuple[int, int, int]


@dataclass
class Page:
    width: float = 595.0  # A4 in points
    height: float = 842.0
    rotate: int = 0
    ops: list[str] = field(default_factory=list)  # content stream operators

    def rect(self, x: float, y: float, w: float, h: float, color: RGB) -> Page:
        self.ops.append(f"{_rg(color)} {x:.2f} {y:.2f} {w:.2f} {h:.2f} re f")
        return self

    def circle(self, cx: float, cy: float, r: float, color: RGB) -> Page:
        k = 0.5523 * r  # cubic Bezier approximation of a quarter circle
        self.ops.append(
            f"{_rg(color)} {cx + r:.2f} {cy:.2f} m "
            f"{cx + r:.2f} {cy + k:.2f} {cx + k:.2f} {cy + r:.2f} {cx:.2f} {cy + r:.2f} c "
            f"{cx - k:.2f} {cy + r:.2f} {cx - r:.2f} {cy + k:.2f} {cx - r:.2f} {cy:.2f} c "
            f"{cx - r:.2f} {cy - k:.2f} {cx - k:.2f} {cy - r:.2f} {cx:.2f} {cy - r:.2f} c "
            f"{cx + k:.2f} {cy - r:.2f} {cx + r:.2f} {cy - k:.2f} {cx + r:.2f} {cy:.2f} c f"
        )
        return self

    def triangle(self, cx: float, cy: float, r: float, color: RGB) -> Page:
        pts = [
            (cx + r * math.cos(a), cy + r * math.sin(a))
            for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)
        ]
        (x0, y0), (x1, y1), (x2, y2) = pts
        self.ops.append(
            f"{_rg(color)} {x0:.2f} {y0:.2f} m {x1:.2f} {y1:.2f} l {x2:.2f} {y2:.2f} l h f"
        )
        return self

    def text(self, x: float, y: float, size: float, text: str, color: RGB = (0, 0, 0)) -> Page:
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        self.ops.append(f"{_rg(color)} BT /F1 {size:g} Tf {x:.2f} {y:.2f} Td ({escaped}) Tj ET")
        return self


def _rg(color: RGB) -> str:
    return " ".join(f"{c / 255:.4f}" for c in color) + " rg"


def write_pdf(
    pages: list[Page], *, user_password: str | None = None, catalog_extra: bytes = b""
) -> bytes:
    """The pages as a PDF file; with `user_password`, RC4-40 encrypted (revision 2);
    `catalog_extra`: more entries for the document catalog, as written."""
    n = len(pages)
    # objects: 1 catalog, 2 page tree, 3 font, then per page: page, content
    objects: dict[int, bytes] = {}
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R " + catalog_extra + b" >>"
    objects[2] = f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode()
    objects[3] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    file_id = hashlib.md5(repr([(p.width, p.height, p.ops) for p in pages]).encode()).digest()
    key = None
    encrypt: bytes | None = None
    if user_password is not None:
        key, encrypt = _rc4_security(user_password.encode(), file_id)
    for i, page in enumerate(pages):
        num = 4 + 2 * i
        objects[num] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {page.width:.2f} {page.height:.2f}] "
            f"/Rotate {page.rotate} /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {num + 1} 0 R >>"
        ).encode()
        stream = "\n".join(page.ops).encode()
        if key is not None:
            stream = _rc4(_object_key(key, num + 1), stream)
        objects[num + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    extra = ""
    if encrypt is not None:
        enc_num = 4 + 2 * n
        objects[enc_num] = encrypt
        extra = f" /Encrypt {enc_num} 0 R"
    return _assemble(objects, f"/Root 1 0 R{extra} /ID [<{file_id.hex()}> <{file_id.hex()}>]")


def _assemble(objects: dict[int, bytes], trailer: str) -> bytes:
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for num in sorted(objects):
        offsets[num] = len(out)
        out += b"%d 0 obj\n" % num + objects[num] + b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for num in range(1, size):
        out += b"%010d 00000 n \n" % offsets[num] if num in offsets else b"0000000000 65535 f \n"
    out += f"trailer\n<< /Size {size} {trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def _object_key(key: bytes, num: int, gen: int = 0) -> bytes:
    """Algorithm 1: the RC4 key of one object."""
    digest = hashlib.md5(key + num.to_bytes(3, "little") + gen.to_bytes(2, "little")).digest()
    return digest[: min(len(key) + 5, 16)]


def _rc4_security(user: bytes, file_id: bytes) -> tuple[bytes, bytes]:
    """Revision 2, 40-bit RC4, owner password = user password: (file key, /Encrypt dict)."""
    padded_user = (user + _PAD)[:32]
    owner = _rc4(hashlib.md5(padded_user).digest()[:5], padded_user)  # algorithm 3
    permissions = -4  # everything allowed
    key = hashlib.md5(
        padded_user + owner + permissions.to_bytes(4, "little", signed=True) + file_id
    ).digest()[:5]  # algorithm 2
    u = _rc4(key, _PAD)  # algorithm 4
    encrypt = (
        f"<< /Filter /Standard /V 1 /R 2 /Length 40 /P {permissions} "
        f"/O <{owner.hex()}> /U <{u.hex()}> >>"
    ).encode()
    return key, encrypt


def huge_page_pdf(side: float = 1_000_000.0) -> bytes:
    """One page far beyond PDF's 14400-point limit (a rasterisation bomb)."""
    return write_pdf([Page(width=side, height=side).rect(0, 0, side, side, (200, 0, 0))])


def nested_arrays_pdf(depth: int = 100_000) -> bytes:
    """A valid one-page PDF whose catalog holds an array nested `depth` deep."""
    bomb = b"/Deep " + b"[" * depth + b"]" * depth
    return write_pdf([Page().rect(100, 100, 200, 200, (0, 0, 200))], catalog_extra=bomb)
