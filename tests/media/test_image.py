"""decode_image on real encoded files: formats, corrupt data, pixel cap, EXIF, colour modes."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from server.errors import ImageTooLarge, InvalidImage
from server.media.image import decode_image
from tests.media.conftest import encode_image

MAX = 10_000_000


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)  # RGB images give (r, g, b)
    return value


def gradient(size: tuple[int, int] = (40, 30)) -> Image.Image:
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1), "RGB")


@pytest.mark.parametrize(
    ("fmt", "args", "tolerance"),
    [
        ("PNG", {}, 0),
        ("BMP", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("JPEG", {"quality": 95}, 12),
        ("GIF", {}, 40),
    ],
)
def test_formats_round_trip(fmt: str, args: dict[str, object], tolerance: int) -> None:
    source = gradient()
    decoded = decode_image(encode_image(source, fmt, **args), max_pixels=MAX)
    assert decoded.mode == "RGB" and decoded.size == source.size
    diff = np.abs(np.asarray(decoded, dtype=int) - np.asarray(source, dtype=int))
    assert diff.mean() <= tolerance


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    data = encode_image(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert pixel(decode_image(data, max_pixels=MAX), (0, 0)) == (255, 0, 0)


def test_truncated_png() -> None:
    data = encode_image(gradient((64, 64)), "PNG")
    with pytest.raises(InvalidImage) as err:
        decode_image(data[: len(data) // 2], max_pixels=MAX)
    assert err.value.code == "invalid_image"


@pytest.mark.parametrize("data", [b"", b"hello, not an image", b"%PDF-1.4\n" + b"0" * 100])
def test_non_image_bytes(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_image(data, max_pixels=MAX)


def test_unsupported_format_is_refused() -> None:
    with pytest.raises(InvalidImage):
        decode_image(encode_image(gradient(), "TIFF"), max_pixels=MAX)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims `width` x `height` (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("width", "height"), [(5000, 5000), (100_000, 100_000)])
def test_pixel_cap_checked_before_decoding(width: int, height: int) -> None:
    # The body could never decode; ImageTooLarge (not InvalidImage) shows the header check ran
    # first. The second case also exceeds Pillow's own bomb limit.
    with pytest.raises(ImageTooLarge) as err:
        decode_image(png_declaring(width, height), max_pixels=MAX)
    assert err.value.code == "image_too_large"


def test_pixel_cap_boundary() -> None:
    data = encode_image(gradient((100, 50)), "PNG")
    assert decode_image(data, max_pixels=5000).size == (100, 50)
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=4999)


def test_exif_orientation_applied() -> None:
    # Stored 40x20: left half red, right half blue. Orientation 6 = display rotated 90° CW, so
    # the displayed image is 20x40 with red on top.
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode_image(stored, "JPEG", exif=exif, quality=95), max_pixels=MAX)
    assert decoded.size == (20, 40)
    top, bottom = pixel(decoded, (10, 5)), pixel(decoded, (10, 35))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_rgba_drops_alpha_without_compositing() -> None:
    rgba = Image.new("RGBA", (4, 4), (10, 200, 30, 0))  # fully transparent green
    rgba.putpixel((0, 0), (250, 5, 5, 128))
    decoded = decode_image(encode_image(rgba, "PNG"), max_pixels=MAX)
    assert decoded.mode == "RGB"
    assert pixel(decoded, (1, 1)) == (10, 200, 30)  # not white, not black
    assert pixel(decoded, (0, 0)) == (250, 5, 5)


def test_palette_with_transparency_la_and_cmyk() -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    png_p = encode_image(palette, "PNG", transparency=1)
    assert pixel(decode_image(png_p, max_pixels=MAX), (0, 0)) == (12, 34, 56)

    la = Image.new("LA", (4, 4), (77, 0))
    assert pixel(decode_image(encode_image(la, "PNG"), max_pixels=MAX), (0, 0)) == (77, 77, 77)

    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    red = pixel(decode_image(encode_image(cmyk, "JPEG", quality=95), max_pixels=MAX), (4, 4))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    values = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    decoded = decode_image(encode_image(Image.fromarray(values), "PNG"), max_pixels=MAX)
    assert [pixel(decoded, (i, 0))[0] for i in range(4)] == [0, 128, 255, 3]
