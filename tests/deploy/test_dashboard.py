"""The Grafana dashboard uses only real metric names (vLLM's `vllm:*` and the collectors in
server/metrics.py) and covers what operators watch."""

from __future__ import annotations

import json

from .conftest import DASHBOARD
from .promql import dashboard_metric_names, dashboard_queries, kimi_vl_series, metric_names

USED = dashboard_metric_names(DASHBOARD)


def test_every_metric_is_vllm_or_one_of_our_collectors() -> None:
    ours = kimi_vl_series()
    unknown = {n: t for n, t in USED.items() if not n.startswith("vllm:") and n not in ours}
    assert not unknown, f"not exported by vLLM (vllm:*) nor server/metrics.py: {unknown}"


def test_dashboard_covers_the_operators_questions() -> None:
    wanted = {
        "request rate": "kimi_vl_http_requests_total",
        "TTFT": "kimi_vl_time_to_first_token_seconds_bucket",
        "TPOT": "vllm:request_time_per_output_token_seconds_bucket",
        "e2e latency": "vllm:e2e_request_latency_seconds_bucket",
        "tokens/s": "vllm:generation_tokens_total",
        "KV-cache usage": "vllm:kv_cache_usage_perc",
        "queue depth": "vllm:num_requests_waiting",
        "media fetch time": "kimi_vl_media_fetch_seconds_bucket",
        "media decode time": "kimi_vl_media_decode_seconds_bucket",
        "images per request": "kimi_vl_images_per_request_bucket",
        "image tokens per request": "kimi_vl_image_tokens_per_request_bucket",
        "errors by code": "kimi_vl_rejected_requests_total",
    }
    missing = {what: name for what, name in wanted.items() if name not in USED}
    assert not missing, missing


def test_percentile_panels_aggregate_by_le() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for title, expr in dashboard_queries(dashboard):
        if "histogram_quantile" in expr:
            assert "by (le" in expr and "_bucket" in expr, f"{title}: {expr}"


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.9, sum by (le, source) (rate(kimi_vl_media_fetch_seconds_bucket"
        '{source=~"http|data"}[$__rate_interval]))) / on(instance) group_left vllm:x'
    )
    assert metric_names(expr) == {"kimi_vl_media_fetch_seconds_bucket", "vllm:x"}
