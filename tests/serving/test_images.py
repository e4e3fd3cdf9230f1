"""Image budgets: detail=low fits 256 tokens, the processor would not resize again, counts match."""

from __future__ import annotations

import pytest
from PIL import Image

from server.errors import ImageTooLarge, TooManyImages
from server.model.image_processing import num_image_tokens, resized_size
from server.model.tiny import PREPROCESSOR_CONFIG
from server.serving.images import LOW_DETAIL_MAX_TOKENS, ImageBudget, check_image_count, fit_image
from server.serving.prompt import ImageRef

BUDGET = ImageBudget.from_preprocessor(PREPROCESSOR_CONFIG)
SIZES = [
    (32, 24),
    (64, 64),
    (1000, 800),
    (800, 1000),
    (3000, 2000),
    (1919, 1081),
    (4000, 300),
    (3252, 919),  # one downscale still rounds to 4114 patches: the processor would shrink again
]


def _image(w: int, h: int) -> Image.Image:
    return Image.new("RGB", (w, h), (120, 30, 200))


@pytest.mark.parametrize(("w", "h"), SIZES)
def test_auto_keeps_the_model_budget(w: int, h: int) -> None:
    prepared = fit_image(_image(w, h), "auto", BUDGET)
    # What the engine's processor ends with is exactly one downscale of the original: done here
    # (less data to the engine) when the processor keeps it, else left to the processor.
    single = resized_size(w, h, BUDGET.model)
    assert resized_size(*prepared.image.size, BUDGET.model) == single
    assert prepared.image.size == (
        single if resized_size(*single, BUDGET.model) == single else (w, h)
    )
    assert prepared.num_tokens == num_image_tokens(w, h, BUDGET.model)
    # Padding to 28 px, and the int truncation of the one downscale, may exceed the limit a bit.
    assert prepared.num_tokens <= BUDGET.model.in_token_limit // 4 + 96


@pytest.mark.parametrize(("w", "h"), SIZES)
def test_low_detail_fits_256_tokens(w: int, h: int) -> None:
    prepared = fit_image(_image(w, h), "low", BUDGET)
    pw, ph = prepared.image.size
    assert prepared.num_tokens <= LOW_DETAIL_MAX_TOKENS
    assert prepared.num_tokens == num_image_tokens(pw, ph, BUDGET.model)
    assert resized_size(pw, ph, BUDGET.model) == (pw, ph)  # the processor leaves it alone
    if num_image_tokens(w, h, BUDGET.model) <= LOW_DETAIL_MAX_TOKENS:
        assert (pw, ph) == (w, h)  # small images are never touched
    else:
        assert pw / ph == pytest.approx(w / h, rel=0.05)  # aspect ratio kept


def test_smaller_in_token_limit_setting_downsizes() -> None:
    budget = ImageBudget.from_preprocessor(PREPROCESSOR_CONFIG, override=1024)
    prepared = fit_image(_image(3000, 2000), "high", budget)
    assert prepared.image.width < 3000
    assert prepared.num_tokens == num_image_tokens(*prepared.image.size, budget.model)
    # A larger override cannot exceed what the checkpoint's processor allows.
    assert ImageBudget.from_preprocessor(PREPROCESSOR_CONFIG, 10**6).in_token_limit == 4096


def test_extreme_aspect_ratio_is_refused() -> None:
    with pytest.raises(ImageTooLarge):
        fit_image(_image(20000, 14), "auto", BUDGET)


def test_image_count_limit() -> None:
    refs = [ImageRef(0, i, "data:,", "auto") for i in range(3)]
    check_image_count(refs, 3)
    with pytest.raises(TooManyImages) as info:
        check_image_count(refs, 2)
    assert info.value.param == "messages" and info.value.status_code == 400
