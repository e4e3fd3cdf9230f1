"""Bytes -> RGB PIL image, with the guards a public endpoint needs.

Pipeline: sniff the format (PNG/JPEG/WebP/GIF/BMP only) -> check width*height from the header
against the pixel cap *before* decoding (decompression bombs) -> full decode (catches truncated
files) -> apply EXIF orientation -> convert to RGB the way the HF Kimi-VL processor does
(`convert("RGB")`: alpha is dropped, not composited — docs/model.md#image-preprocessing).
"""

from __future__ import annotations

import io
import struct
import time
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from server.errors import ImageTooLarge, InvalidImage
from server.metrics import MEDIA_DECODE_SECONDS

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
# What Pillow raises on corrupt or truncated data varies by plugin.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError)


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own pixel cap applies; Pillow's warning threshold is not a decision.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"The image has too many pixels ({exc}).") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(
            "The media is not an image in a supported format (PNG, JPEG, WebP, GIF, BMP)."
        ) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidImage("The image header is corrupt.") from exc


def _oriented(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except _DECODE_ERRORS:  # malformed EXIF: keep the pixels as stored
        return image
    if orientation in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        # convert("RGB") would clip 16-bit values at 255 (nearly all white); scale instead.
        wide = np.asarray(image).astype(np.int64)
        narrow = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(narrow).convert("RGB")
    with warnings.catch_warnings():
        # "Palette images with transparency … should be converted to RGBA": dropping the
        # transparency is exactly what the reference processor does.
        warnings.simplefilter("ignore", UserWarning)
        return image.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode and normalise one image; raises InvalidImage or ImageTooLarge. Blocking."""
    start = time.perf_counter()
    image = _open(data)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImage("The image has no pixels.")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image is {width}x{height} ({width * height} pixels); "
            f"the limit is {max_pixels} pixels."
        )
    try:
        image.load()  # animated GIF/WebP: the first frame
    except _DECODE_ERRORS as exc:
        raise InvalidImage("The image data is truncated or corrupt.") from exc
    result = _to_rgb(_oriented(image))
    MEDIA_DECODE_SECONDS.labels(kind="image").observe(time.perf_counter() - start)
    return result
