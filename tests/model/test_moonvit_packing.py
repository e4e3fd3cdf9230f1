"""Packed multi-image encoding equals encoding the images one by one, and vLLM's built-in MoonViT."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from benchmarks.vision import finish_loading, vllm_tp1
from server.model.image_processing import ImageProcessorConfig, preprocess_images


def encoders(layers: int = 2):  # type: ignore[no-untyped-def]
    from vllm.model_executor.models.moonvit import MoonVitPretrainedModel
    from vllm.transformers_utils.configs.moonvit import MoonViTConfig

    from server.model.moonvit import MoonViT

    config = MoonViTConfig(
        num_hidden_layers=layers, hidden_size=64, num_attention_heads=4, intermediate_size=96
    )
    ours = MoonViT(config, prefix="vision_tower").eval()
    builtin = MoonVitPretrainedModel(config, prefix="vision_tower").eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            w = torch.randn(p.shape, generator=gen) * (0.3 if ".wqkv." in name else 0.1)
            p.copy_(w + 1 if "norm" in name and name.endswith("weight") else w)
    builtin.load_state_dict(ours.state_dict(), strict=True)
    finish_loading(ours)
    finish_loading(builtin)
    return ours, builtin


@pytest.fixture(scope="module")
def vit():  # type: ignore[no-untyped-def]
    with vllm_tp1():
        yield encoders()


def images() -> dict[str, torch.Tensor]:
    rng = torch.Generator().manual_seed(1)
    sizes = [
        (224, 168),
        (64, 64),
        (300, 120),
        (100, 250),
        (896, 896),
    ]  # (896, 896): the 64x64 table as is
    ims = [
        Image.fromarray((torch.rand(h, w, 3, generator=rng) * 255).to(torch.uint8).numpy(), "RGB")
        for w, h in sizes
    ]
    return preprocess_images(ims, ImageProcessorConfig())


@pytest.mark.parametrize("patches_per_pass", [10**9, 4096, 200])
def test_packed_equals_one_by_one_and_builtin(vit, monkeypatch, patches_per_pass) -> None:  # type: ignore[no-untyped-def]
    """One pass over all images, the default CPU grouping (4 small images, then the 896² one),
    and a pass per image (patches 192, 36, 220, 144, 4096: no two fit in 200) give the same."""
    from server.model import moonvit

    monkeypatch.setattr(moonvit, "CPU_PATCHES_PER_PASS", patches_per_pass)
    ours, builtin = vit
    batch = images()
    grids = [tuple(g) for g in batch["image_grid_hws"].tolist()]
    with torch.no_grad():
        packed = ours(batch["pixel_values"], grids)
        # Twice: the second pass uses the per-grid caches.
        assert torch.equal(packed, ours(batch["pixel_values"], grids))
        loop, start = [], 0
        for h, w in grids:
            loop.append(ours(batch["pixel_values"][start : start + h * w], [(h, w)]))
            start += h * w
        ref = torch.cat(builtin(batch["pixel_values"], batch["image_grid_hws"]))
    assert packed.shape == (sum(h * w // 4 for h, w in grids), 4, 64)
    torch.testing.assert_close(packed, torch.cat(loop), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed, ref, rtol=1e-4, atol=1e-4)


def test_pass_groups_respect_the_patch_budget() -> None:
    from server.model.moonvit import _groups

    lengths = [256, 576, 1024, 1064, 1656, 3136, 3072, 4356]
    assert _groups(lengths, 4096) == [(0, 4), (4, 5), (5, 6), (6, 7), (7, 8)]
    assert _groups(lengths, 10**9) == _groups(lengths, None) == [(0, 8)]
    assert _groups([5000, 10, 10], 4096) == [(0, 1), (1, 3)]  # oversized item alone
    assert _groups([100] * 5, 200) == [(0, 2), (2, 4), (4, 5)]
