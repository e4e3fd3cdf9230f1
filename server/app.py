"""`create_app(settings, engine)`: the FastAPI app; `run(settings)`: serve it with uvicorn.

The lifespan starts the engine in the background (and restarts it if it dies), so the server
answers /health at once and /ready turns 200 when the model is loaded and warmed up; it stops
the engine on shutdown. Header limits and malformed HTTP are the HTTP protocol's
(server/api/http_protocol.py).
Middleware, outermost first: request context (id, metrics, access log) -> CORS (only when
configured) -> body limits -> API-key auth -> last-resort 500 -> routes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from types import FrameType
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel

from server.api import (
    batches,
    chat,
    completions,
    files,
    health,
    models,
    responses,
    tokenize,
    ui,
)
from server.api.auth import APIKeyMiddleware
from server.api.errors import install_error_handlers
from server.api.middleware import (
    BodySizeLimitMiddleware,
    RequestContextMiddleware,
)
from server.api.openapi import install_openapi
from server.engine.contract import Engine
from server.engine.supervisor import EngineSupervisor
from server.protocol.policy import IGNORED_HEADER
from server.serving.batches import BATCH_PRIORITY, Batches, Service
from server.serving.chat import ChatCompletions
from server.serving.completions import TextCompletions
from server.serving.context import ServingContext
from server.serving.response_store import ResponseStore
from server.serving.responses import Responses
from server.serving.tokenize import Tokenization
from server.settings import Settings
from server.store.batches import BatchStore

logger = logging.getLogger(__name__)

UPLOAD_OVERHEAD_BYTES = 64 * 1024  # multipart framing and form fields around an upload
# Response headers a browser app may read (CORS): ours, beside the standard ones.
EXPOSED_HEADERS = [
    "X-Request-Id",
    IGNORED_HEADER,
    "X-Video-Frames",
    "X-Video-Tokens",
    "Retry-After",
]


def create_app(
    settings: Settings, engine: Engine, *, on_engine_failure: Callable[[], None] | None = None
) -> FastAPI:
    """The HTTP app over `engine`. `on_engine_failure` runs if the engine cannot start, or
    dies once `settings.engine_restarts` restarts are spent (server/engine/supervisor.py)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        serving.drain.bind(asyncio.get_running_loop())
        supervisor = EngineSupervisor(
            engine, restarts=settings.engine_restarts, on_give_up=on_engine_failure
        )
        starting = asyncio.create_task(supervisor.run())
        batch_runner = asyncio.create_task(app.state.batches.run())
        try:
            yield
        finally:
            for task in (batch_runner, starting):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            await engine.stop()

    app = FastAPI(
        title="kimi-vl-server",
        summary="OpenAI-compatible API for Kimi-VL",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    serving = ServingContext(settings, engine)
    app.state.serving = serving
    app.state.chat = ChatCompletions(serving)
    app.state.completions = TextCompletions(serving)
    app.state.responses = Responses(
        serving, app.state.chat, ResponseStore(settings.responses_store_size)
    )
    app.state.tokenization = Tokenization(serving)
    app.state.files = serving.files
    app.state.batches = Batches(
        BatchStore(settings.state_dir),
        serving.files,
        batch_services(app.state.chat, app.state.completions, app.state.responses),
        concurrency=settings.batch_concurrency,
        has_free_slot=lambda: (
            engine.is_ready() and serving.gate.active < serving.model_info.max_num_seqs
        ),
        priority=BATCH_PRIORITY if settings.scheduling_policy == "priority" else 0,
    )
    routers = (
        chat.router,
        completions.router,
        responses.router,
        files.router,
        batches.router,
        tokenize.router,
        models.router,
        health.router,
    )
    for router in routers:
        app.include_router(router)
    if settings.ui:  # the playground at / (its files need no API key; the API still does)
        app.include_router(ui.router)

    install_openapi(app)
    install_error_handlers(app)  # innermost: the last-resort 500 middleware
    app.add_middleware(
        APIKeyMiddleware,
        keys=settings.api_keys,
        open_probes=settings.open_health_and_metrics,
        open_paths=ui.PUBLIC_PATHS if settings.ui else (),
    )
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_request_body_bytes,
        # uploads are streamed to disk (and checked there), not held here
        streamed={"/v1/files": settings.max_file_bytes + UPLOAD_OVERHEAD_BYTES},
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=settings.cors_allow_headers,
            expose_headers=EXPOSED_HEADERS,
        )
    app.add_middleware(RequestContextMiddleware)  # outermost
    return app


def batch_services(chat: Any, completions: Any, responses: Any) -> dict[str, Service]:
    """endpoint -> run one request in-process (prepare + complete, the admission seat freed)."""

    def runner(service: Any) -> Service:
        async def run(request: BaseModel, request_id: str) -> BaseModel:
            prepared = await service.prepare(request, request_id)
            try:
                result: BaseModel = await service.complete(prepared)
                return result
            finally:
                prepared.done()

        return run

    return {
        "/v1/chat/completions": runner(chat),
        "/v1/completions": runner(completions),
        "/v1/responses": runner(responses),
    }


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, drain (server/serving/drain.py), stop the engine and exit 0;
    exit 1 if the engine cannot start. Engine processes never outlive the server."""
    import uvicorn

    from server.engine.vllm_engine import VLLMEngine

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, starting our drain on the shutdown signal, and not re-raising the
        signal once shut down (uvicorn does, so the process would end "killed by SIGTERM",
        status -15, even after a clean drain)."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            drain.begin(settings.graceful_shutdown_seconds)
            super().handle_exit(sig, frame)

        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in _EXIT_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    configure_logging(settings.log_level)
    failed = False
    server: uvicorn.Server | None = None

    def stop_on_failure() -> None:
        nonlocal failed
        failed = True
        if server is not None:
            server.should_exit = True

    app = create_app(settings, VLLMEngine(settings), on_engine_failure=stop_on_failure)
    drain = app.state.serving.drain
    server = DrainingServer(uvicorn_config(app, settings))
    try:
        server.run()
    finally:
        stop_children()
    if failed:
        raise SystemExit(1)


_EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def uvicorn_config(app: FastAPI, settings: Settings) -> Any:  # uvicorn.Config
    """How uvicorn serves the app: our HTTP protocol (header limits, JSON errors for malformed
    HTTP), keep-alive, connection cap, the shutdown grace."""
    import uvicorn

    from server.api.http_protocol import limited_protocol

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=limited_protocol(settings.max_header_bytes, settings.max_header_count),
        log_level=settings.log_level,
        access_log=False,  # RequestContextMiddleware writes the access log
        timeout_graceful_shutdown=max(1, math.ceil(settings.graceful_shutdown_seconds)),
        timeout_keep_alive=max(1, math.ceil(settings.keep_alive_timeout)),
        limit_concurrency=settings.max_connections,
    )


def stop_children(grace_s: float = 5.0) -> None:
    """Terminate (then kill) every process this one started that is still running: the
    engine's, whatever phase the server ended in (also mid-load, when vLLM's own shutdown
    was never reached, and after a failed start)."""
    import psutil

    from server.engine.vllm_engine import child_processes

    children = child_processes()
    for child in children:
        with suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=grace_s)
