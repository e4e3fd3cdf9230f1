"""Image preprocessing: token arithmetic (docs/model.md, Image preprocessing table), vLLM's own
formula, pixel layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from server.model.image_processing import (
    ImageProcessorConfig,
    ImageTooLargeError,
    grid_size,
    num_image_tokens,
    preprocess_image,
    preprocess_images,
)

# (W, H) -> (grid at 4096, tokens at 4096, grid at 16384, tokens at 16384), from the table in
# docs/model.md, Image preprocessing.
TABLE = {
    (224, 224): ((16, 16), 64, (16, 16), 64),
    (448, 448): ((32, 32), 256, (32, 32), 256),
    (640, 480): ((36, 46), 414, (36, 46), 414),
    (896, 896): ((64, 64), 1024, (64, 64), 1024),
    (1024, 1024): ((66, 66), 1089, (74, 74), 1369),
    (1280, 720): ((50, 86), 1075, (52, 92), 1196),
    (1920, 1080): ((48, 86), 1032, (78, 138), 2691),
    (1792, 1792): ((64, 64), 1024, (128, 128), 4096),
    (3840, 2160): ((48, 86), 1032, (98, 172), 4214),
}


def vllm_formula(width: int, height: int, limit: int) -> int:
    """vLLM 0.32's KimiVLProcessingInfo.get_num_image_tokens, called on the real method."""
    from types import SimpleNamespace
    from typing import cast

    from vllm.model_executor.models.kimi_vl import KimiVLProcessingInfo

    ip = SimpleNamespace(patch_size=14, merge_kernel_size=(2, 2), in_token_limit=limit)
    fake_self = SimpleNamespace(get_hf_processor=lambda: SimpleNamespace(image_processor=ip))
    # A duck-typed stand-in for `self`: the method only calls self.get_hf_processor().
    return KimiVLProcessingInfo.get_num_image_tokens(
        cast(KimiVLProcessingInfo, fake_self), image_width=width, image_height=height
    )


@pytest.mark.parametrize("size", sorted(TABLE))
def test_token_table(size: tuple[int, int]) -> None:
    g4, t4, g16, t16 = TABLE[size]
    for limit, grid, tokens in ((4096, g4, t4), (16384, g16, t16)):
        cfg = ImageProcessorConfig(in_token_limit=limit)
        assert grid_size(*size, cfg) == grid
        assert num_image_tokens(*size, cfg) == tokens
        assert vllm_formula(*size, limit) == tokens


@pytest.mark.parametrize("size", [(1, 1), (13, 29), (333, 77), (5000, 30), (2000, 1999)])
def test_matches_vllm_formula_on_odd_sizes(size: tuple[int, int]) -> None:
    cfg = ImageProcessorConfig()
    assert num_image_tokens(*size, cfg) == vllm_formula(*size, 4096)


def test_preprocessed_image_matches_token_count() -> None:
    cfg = ImageProcessorConfig()
    img = Image.new("RGB", (1280, 720), (10, 20, 30))
    patches, (gh, gw) = preprocess_image(img, cfg)
    assert (gh, gw) == (50, 86)
    assert patches.shape == (gh * gw, 3, 14, 14)
    assert gh * gw // 4 == num_image_tokens(1280, 720, cfg)


def test_pixel_layout_hand_computed() -> None:
    """A 30x20 image: padded to 56x28 -> grid (2, 4); patches row-major, channel-first, pads = -1."""
    cfg = ImageProcessorConfig()
    arr = np.zeros((20, 30, 3), dtype=np.uint8)
    arr[..., 0] = np.arange(30)[None, :]  # R = column index
    arr[..., 1] = np.arange(20)[:, None]  # G = row index
    arr[..., 2] = 255
    patches, grid = preprocess_image(Image.fromarray(arr, "RGB"), cfg)
    assert grid == (2, 4)
    assert patches.shape == (8, 3, 14, 14)

    def norm(v: float) -> float:
        return (v / 255.0 - 0.5) / 0.5

    # Patch 1 = grid row 0, column 1: pixel (r, c) inside it is image pixel (r, 14 + c).
    assert patches[1, 0, 3, 5] == pytest.approx(norm(14 + 5))
    assert patches[1, 1, 3, 5] == pytest.approx(norm(3))
    assert patches[1, 2, 3, 5] == pytest.approx(1.0)
    # Patch 4 = grid row 1, column 0: image row 14 + r.
    assert patches[4, 1, 2, 0] == pytest.approx(norm(16))
    # Padding (image is 30 wide: column 30.. is pad, in patch 2 from local column 2) is black -> -1.
    assert np.all(patches[2, :, :, 2:] == -1.0)
    assert np.all(patches[5, :, 6:, :] == -1.0)  # rows 20.. of grid row 1


def test_alpha_is_dropped_not_composited() -> None:
    cfg = ImageProcessorConfig()
    rgba = Image.new("RGBA", (28, 28), (200, 100, 50, 0))
    patches, _ = preprocess_image(rgba, cfg)
    assert patches[0, 0, 0, 0] == pytest.approx((200 / 255 - 0.5) / 0.5)


def test_downscale_uses_pil_bicubic_and_never_upscales() -> None:
    cfg = ImageProcessorConfig(in_token_limit=64)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8))
    patches, grid = preprocess_image(img, cfg)
    # (200//14)*(300//14) = 14*21 = 294 > 64 -> scale sqrt(64/294) -> 93x139 -> padded 112x140.
    assert grid == (10, 8)
    expected = np.asarray(img.resize((93, 139), Image.Resampling.BICUBIC), dtype=np.float32)
    np.testing.assert_allclose(
        patches[0, 0, 0, :], (expected[0, :14, 0] / 255 - 0.5) / 0.5, atol=1e-6
    )
    small = Image.new("RGB", (20, 20))
    assert preprocess_image(small, cfg)[1] == (2, 2)


def test_extreme_aspect_ratio_rejected() -> None:
    cfg = ImageProcessorConfig(in_token_limit=16384)
    with pytest.raises(ImageTooLargeError, match="patch grid"):
        preprocess_image(Image.new("RGB", (10000, 200)), cfg)


def test_batch_concatenates_in_order() -> None:
    cfg = ImageProcessorConfig()
    out = preprocess_images([Image.new("RGB", (28, 28)), Image.new("RGB", (56, 28))], cfg)
    assert out["image_grid_hws"].tolist() == [[2, 2], [2, 4]]
    assert out["pixel_values"].shape == (4 + 8, 3, 14, 14)
