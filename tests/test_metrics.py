"""/metrics text: our kimi_vl_* collectors beside vLLM's vllm:* ones, single and multiprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, Counter

from server import metrics

EXPECTED_NAMES = [
    "kimi_vl_http_requests_total",
    "kimi_vl_http_request_duration_seconds",
    "kimi_vl_time_to_first_token_seconds",
    "kimi_vl_time_to_first_content_token_seconds",
    "kimi_vl_media_fetch_seconds",
    "kimi_vl_media_decode_seconds",
    "kimi_vl_media_fetched_bytes_total",
    "kimi_vl_images_per_request",
    "kimi_vl_image_tokens_per_request",
    "kimi_vl_video_frames_per_request",
    "kimi_vl_video_tokens_per_request",
    "kimi_vl_rejected_requests_total",
    "kimi_vl_requests_in_flight",
    "kimi_vl_queued_requests",
]


@pytest.fixture
def vllm_like_metric() -> Iterator[Counter]:
    # vLLM's stat loggers register `vllm:*` collectors in the default registry like this.
    counter = Counter("vllm:unit_test_requests", "stand-in for a vLLM metric")
    yield counter
    REGISTRY.unregister(counter)


def test_render_includes_ours_and_vllm(vllm_like_metric: Counter) -> None:
    vllm_like_metric.inc(3)
    metrics.record_http_request("/v1/chat/completions", "POST", 200, 0.12)
    metrics.record_rejection("invalid_image")
    body, content_type = metrics.render_metrics()
    text = body.decode()
    assert content_type.startswith("text/plain")
    for name in EXPECTED_NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert "vllm:unit_test_requests_total 3.0" in text
    assert (
        'kimi_vl_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}'
    ) in text
    assert 'kimi_vl_rejected_requests_total{reason="invalid_image"}' in text


def test_multiprocess_mode(tmp_path: Path) -> None:
    # A worker process with PROMETHEUS_MULTIPROC_DIR set (before prometheus_client is imported,
    # as vLLM arranges) records metrics into the folder; /metrics aggregates them from there.
    worker = textwrap.dedent("""
        from server import metrics
        metrics.record_http_request("/v1/models", "GET", 200, 0.01)
        metrics.REQUESTS_IN_FLIGHT.inc(2)
    """)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-c", worker],
            check=True,
            env=env,
            timeout=60,
            cwd=Path(__file__).resolve().parents[1],
        )
    text = metrics.render_metrics(str(tmp_path))[0].decode()
    assert 'kimi_vl_http_requests_total{method="GET",route="/v1/models",status="200"} 2.0' in text
