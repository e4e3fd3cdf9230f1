"""Smoke test: benchmarks/soak.py runs a short soak end to end and reports its figures."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from benchmarks.soak import main, request_body


def test_every_image_request_has_a_picture_of_its_own() -> None:
    rng = random.Random(0)
    bodies = [request_body(i, rng, 1.0, 4) for i in range(6)]
    urls = [b["messages"][0]["content"][0]["image_url"]["url"] for b in bodies]
    assert len(set(urls)) == 6


@pytest.mark.slow
def test_a_short_soak_reports_requests_errors_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    main(["--minutes", "0.4", "--concurrency", "4", "--sample-every", "3", "--max-tokens", "4",
          "--json", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert report["requests"] > 10
    assert report["unexpected_errors"] == {}, report["outcomes"]
    assert report["outcomes"]["ok"] > 0
    assert 0 < report["latency_p50_s"] <= report["latency_p99_s"]
    assert len(report["rss_samples"]) >= 5
    first = report["rss_samples"][0]
    assert first["total_mib"] > 100 and any("python" in k or "VLLM" in k for k in first)
    assert isinstance(report["rss_growth_pct_from_minute_2"], float)


@pytest.mark.parametrize(
    "script", ["serve", "soak", "batch", "vision", "fused_moe", "demo_accuracy", "model"]
)
def test_benchmark_scripts_run_as_files(script: str) -> None:
    """The README runs them as `python benchmarks/<name>.py`, not only as modules."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    ran = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / f"{script}.py"), "--help"],
        cwd=repo / "tests",  # any directory: the script finds the repository itself
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
