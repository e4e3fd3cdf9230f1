"""Media intake: fetch bytes (http(s)/data:/file with limits and an SSRF guard), decode images."""

from server.media.fetch import MediaLimits, fetch_media
from server.media.image import decode_image
from server.media.ssrf import is_public_address

__all__ = [
    "MediaLimits",
    "decode_image",
    "fetch_media",
    "is_public_address",
]
