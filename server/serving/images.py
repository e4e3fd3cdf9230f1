"""The images of one chat request: fetch + decode (server/media), size to a token budget, count.

Token arithmetic is the model processor's own (server/model/image_processing, docs/model.md#image-preprocessing):
an image of w x h costs gh*gw/4 tokens after the in_token_limit downscale and padding. `detail`
picks the budget: `low` downsizes here (PIL bicubic, as the processor would) until the image
costs at most LOW_DETAIL_MAX_TOKENS; `high`/`auto` keep the model's in_token_limit. A smaller
`--in-token-limit` setting works the same way as `low`; the processor then sees an image already
within its limit and leaves it alone, so the counts here equal what the engine uses.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import Image

from server.aio import gather_or_cancel
from server.errors import APIError, ImageTooLarge, TooManyImages
from server.media import MediaLimits, decode_image, fetch_media
from server.model.image_processing import (
    ImageProcessorConfig,
    ImageTooLargeError,
    check_grid,
    num_image_tokens,
    resized_size,
)
from server.serving.prompt import ImageRef

LOW_DETAIL_MAX_TOKENS = 256
_CONCURRENT_LOADS = 8


@dataclass(frozen=True, slots=True)
class PreparedImage:
    image: Image.Image
    num_tokens: int


@dataclass(frozen=True, slots=True)
class ImageBudget:
    """The model's processor config and the (possibly smaller) limit the server applies."""

    model: ImageProcessorConfig
    in_token_limit: int

    @classmethod
    def from_preprocessor(
        cls, preprocessor: Mapping[str, object], override: int | None = None
    ) -> ImageBudget:
        model = ImageProcessorConfig.from_dict(dict(preprocessor))
        limit = model.in_token_limit if override is None else min(override, model.in_token_limit)
        return cls(model=model, in_token_limit=limit)

    def patch_limit(self, detail: str) -> int:
        """in_token_limit (in 14-px patches) for one image of the given detail."""
        if detail == "low":
            merge = self.model.merge_kernel_size[0] * self.model.merge_kernel_size[1]
            return min(self.in_token_limit, LOW_DETAIL_MAX_TOKENS * merge)
        return self.in_token_limit


def fit_image(image: Image.Image, detail: str, budget: ImageBudget) -> PreparedImage:
    """Downscale `image` to the budget of `detail` and count its tokens. Blocking (PIL).

    At the model's own limit the downscale is done here (less data to the engine) only when the
    processor will leave the result alone: its size can round to a few patches over the limit,
    and the processor would then shrink a second time, which is not the reference
    preprocessing. Such an image goes to the engine as it is, for the processor's one downscale.
    """
    limit = budget.patch_limit(detail)
    while True:
        cfg = dataclasses.replace(budget.model, in_token_limit=limit)
        width, height = resized_size(image.width, image.height, cfg)
        if width < 1 or height < 1:
            raise ImageTooLarge("The image's aspect ratio is too extreme for the model.")
        tokens = num_image_tokens(width, height, budget.model)
        # Padding to 28 px can push a resized image just over a low-detail budget.
        if detail != "low" or tokens <= LOW_DETAIL_MAX_TOKENS or limit <= 1:
            break
        limit = max(1, int(limit * 0.9))
    if limit >= budget.model.in_token_limit and resized_size(width, height, budget.model) != (
        width,
        height,
    ):
        width, height = image.size
        tokens = num_image_tokens(width, height, budget.model)
    try:
        check_grid(width, height, budget.model)
    except ImageTooLargeError as exc:
        raise ImageTooLarge(str(exc)) from exc
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return PreparedImage(image=image, num_tokens=tokens)


def _decode_and_fit(
    data: bytes, detail: str, budget: ImageBudget, max_pixels: int
) -> PreparedImage:
    """One worker-thread hop per image: decode (server/media) and fit to the budget."""
    return fit_image(decode_image(data, max_pixels=max_pixels), detail, budget)


def check_image_count(refs: Sequence[ImageRef], limit: int) -> None:
    if len(refs) > limit:
        raise TooManyImages(
            f"The request has {len(refs)} images; this server accepts at most {limit} per request.",
            param="messages",
        )


async def prepare_images(
    refs: Sequence[ImageRef], *, limits: MediaLimits, budget: ImageBudget
) -> list[PreparedImage]:
    """Load every image concurrently and fit it to its budget, in prompt order.

    The first failure cancels the rest and is raised with `param` naming its content part.
    """
    gate = asyncio.Semaphore(_CONCURRENT_LOADS)

    async def one(ref: ImageRef) -> PreparedImage:
        async with gate:
            try:
                data = await fetch_media(ref.url, limits=limits)
                return await asyncio.to_thread(
                    _decode_and_fit, data, ref.detail, budget, limits.max_image_pixels
                )
            except APIError as exc:
                raise exc.with_param(ref.param) from None

    return await gather_or_cancel(one(ref) for ref in refs)
