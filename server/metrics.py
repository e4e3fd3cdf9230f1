"""Prometheus collectors of the front end (`kimi_vl_*`), exported beside vLLM's own `vllm:*`.

vLLM registers its metrics in prometheus_client's default REGISTRY, so ours live there too and
`/metrics` renders that registry. With several API processes (`PROMETHEUS_MULTIPROC_DIR` set
before prometheus_client is imported, as vLLM's api_server does) values go to mmap files and a
fresh registry with a MultiProcessCollector aggregates them — the same rule as vLLM's
`get_prometheus_registry()`; gauges therefore declare how processes combine.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4)
_MEDIA_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_COUNT_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = tuple(float(2**i) for i in range(6, 19))  # 64 … 262144

HTTP_REQUESTS = Counter(
    "kimi_vl_http_requests",
    "HTTP requests by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "kimi_vl_http_request_duration_seconds",
    "Time from request received to response finished (whole stream for SSE).",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "kimi_vl_time_to_first_token_seconds",
    "Request received to first generated token sent (reasoning or content).",
    buckets=_TTFT_BUCKETS,
)
TIME_TO_FIRST_CONTENT_TOKEN = Histogram(
    "kimi_vl_time_to_first_content_token_seconds",
    "Request received to first answer token sent, after any reasoning.",
    buckets=_TTFT_BUCKETS,
)
MEDIA_FETCH_SECONDS = Histogram(
    "kimi_vl_media_fetch_seconds",
    "Time to obtain the bytes of one media item, by source (http, data, file).",
    ["source"],
    buckets=_MEDIA_SECONDS_BUCKETS,
)
MEDIA_DECODE_SECONDS = Histogram(
    "kimi_vl_media_decode_seconds",
    "Time to decode one media item, by kind (image, video).",
    ["kind"],
    buckets=_MEDIA_SECONDS_BUCKETS,
)
MEDIA_BYTES = Counter(
    "kimi_vl_media_fetched_bytes",
    "Bytes of media obtained, by source (http, data, file).",
    ["source"],
)
IMAGES_PER_REQUEST = Histogram(
    "kimi_vl_images_per_request", "Images in one request.", buckets=_COUNT_BUCKETS
)
IMAGE_TOKENS_PER_REQUEST = Histogram(
    "kimi_vl_image_tokens_per_request",
    "Placeholder tokens the images of one request expand to.",
    buckets=_TOKEN_BUCKETS,
)
VIDEO_FRAMES_PER_REQUEST = Histogram(
    "kimi_vl_video_frames_per_request",
    "Video frames sampled for one request.",
    buckets=_COUNT_BUCKETS,
)
VIDEO_TOKENS_PER_REQUEST = Histogram(
    "kimi_vl_video_tokens_per_request",
    "Prompt tokens the videos of one request expand to (frames' image blocks and timestamps).",
    buckets=_TOKEN_BUCKETS,
)
DOCUMENT_PAGES_PER_REQUEST = Histogram(
    "kimi_vl_document_pages_per_request",
    "PDF pages rendered for one request (all its documents).",
    buckets=_COUNT_BUCKETS,
)
DOCUMENT_TOKENS_PER_REQUEST = Histogram(
    "kimi_vl_document_tokens_per_request",
    "Prompt tokens the documents of one request expand to (page markers and page images).",
    buckets=_TOKEN_BUCKETS,
)
DOCUMENT_PAGE_RENDER_SECONDS = Histogram(
    "kimi_vl_document_page_render_seconds",
    "Time PDFium took to render one page (its worker process's wall time).",
    buckets=_MEDIA_SECONDS_BUCKETS,
)
ENGINE_RESTARTS = Counter(
    "kimi_vl_engine_restarts",
    "Times the inference engine died and was restarted in-process.",
)
REJECTED_REQUESTS = Counter(
    "kimi_vl_rejected_requests",
    "Requests answered with an error, by error code.",
    ["reason"],
)
REQUESTS_IN_FLIGHT = Gauge(
    "kimi_vl_requests_in_flight",
    "Requests being handled (received, not yet fully answered).",
    multiprocess_mode="livesum",
)
QUEUED_REQUESTS = Gauge(
    "kimi_vl_queued_requests",
    "Requests admitted but waiting for the engine (counted against max_queued_requests).",
    multiprocess_mode="livesum",
)


def record_http_request(route: str, method: str, status: int, seconds: float) -> None:
    """`route` must be the route template (`/v1/chat/completions`), never the raw path."""
    HTTP_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
    HTTP_REQUEST_SECONDS.labels(route=route).observe(seconds)


def record_rejection(code: str) -> None:
    REJECTED_REQUESTS.labels(reason=code).inc()


def render_metrics(multiproc_dir: str | None = None) -> tuple[bytes, str]:
    """Exposition text of our and vLLM's metrics, and its content type.

    `multiproc_dir` is Settings.prometheus_multiproc_dir (PROMETHEUS_MULTIPROC_DIR).
    """
    if multiproc_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiproc_dir)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
