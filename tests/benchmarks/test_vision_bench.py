"""Smoke test: benchmarks/vision.py runs end to end at tiny settings and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.vision import main


@pytest.mark.slow
def test_vision_bench_writes_positive_figures(tmp_path: Path) -> None:
    out = tmp_path / "vision.json"
    args = ["--json", str(out), "--device", "cpu", "--layers", "1", "--repeats", "1"]
    returned = main(args + ["--sizes", "224x224,280x168,336x336", "--jpegs", "2"])

    res = json.loads(out.read_text())
    assert res["packed_vs_loop"] == pytest.approx(returned["packed_vs_loop"])
    for key in ("packed_vs_loop", "packed_vs_builtin", "preprocess_p50_ms"):
        assert res[key] > 0, key
    variants = res["encoder"]["variants"]
    assert set(variants) == {"ours packed", "ours one-by-one", "vLLM built-in"}
    for figures in variants.values():
        assert figures["images_per_s"] > 0 and figures["patches_per_s"] > 0
        assert 0 <= figures["max_abs_diff_vs_packed"] < 1e-3  # main refuses larger anyway
    assert res["encoder"]["grids"] == [[16, 16], [12, 20], [24, 24]]
    assert set(res["preprocess"]) == {"1", "2"}
    for figures in res["preprocess"].values():
        assert figures["images_per_s"] > 0 and figures["p50_ms"] > 0
    assert (res["layers"], res["dtype"]) == (1, "fp32") and res["device"] and res["date"]
