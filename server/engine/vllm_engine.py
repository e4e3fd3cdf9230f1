"""The vLLM AsyncLLM adapter: the one module in `server/` that talks to vLLM's engine.

Settings -> AsyncEngineArgs -> AsyncLLM (built in a worker thread so the HTTP server answers
/health while the model loads) -> one warm-up generation -> ready. Each request becomes
`AsyncLLM.generate({"prompt_token_ids", "multi_modal_data"}, SamplingParams(...), id)` (DELTA
outputs, or FINAL_ONLY for `final_only` requests) and every RequestOutput is re-shaped into
per-choice `GenerateOutput` steps (server/engine/contract.py).
Closing the generator early (client gone) makes vLLM abort the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import AsyncGenerator
from typing import Any

from server.engine.checkpoint import resolve_model
from server.engine.contract import (
    EngineDeadError,
    FinishReason,
    GenerateOutput,
    GenerateRequest,
    ModelInfo,
    RequestRejectedError,
    SamplingOptions,
    Tokenizer,
    TokenLogprob,
    TopLogprob,
)
from server.model.checkpoint import check_model_dir
from server.settings import Settings

logger = logging.getLogger(__name__)

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "error": "error",
}
_WARMUP_PROMPT = "Hello"


def wants_reasoning(settings: Settings, model: str) -> bool:
    """Split ◁think▷ output: the setting (presets set it), else guess from the model name."""
    if settings.enable_reasoning is not None:
        return settings.enable_reasoning
    return "thinking" in model.lower()


def engine_args(settings: Settings, model: str) -> Any:
    """AsyncEngineArgs for `model` from Settings (config flows one way: Settings -> vLLM)."""
    from vllm.config import StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and settings.pipeline_parallel_size > 1 and settings.enforce_eager:
        # vLLM 0.32's CPU model runner allocates the buffer that carries activations between
        # pipeline stages only in its compile warm-up: eager, a later stage fails its first step.
        raise ValueError(
            "--pipeline-parallel-size > 1 on CPU needs vLLM's compilation (vLLM 0.32's CPU "
            "runner sets up the buffer between pipeline stages only while compiling): run "
            "without --enforce-eager (KIMI_VL_ENFORCE_EAGER=false, or `enforce_eager: false` "
            "in the preset)"
        )
    kwargs: dict[str, Any] = {
        "model": model,
        "served_model_name": settings.model_names,
        "dtype": settings.dtype,
        "enforce_eager": settings.enforce_eager,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "pipeline_parallel_size": settings.pipeline_parallel_size,
        "data_parallel_size": settings.data_parallel_size,
        "distributed_executor_backend": settings.distributed_executor_backend,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "limit_mm_per_prompt": {
            # document pages reach the engine as images
            "image": settings.limit_images_per_request + settings.max_document_pages,
            "video": settings.limit_videos_per_request,
        },
        "seed": 0,
        # vLLM keeps processed images (pixel tensors) of past requests to skip re-processing
        # repeated ones; its default, 4 GiB in every API and engine-core process, made the
        # engine core grow by ~13 MiB/s under traffic of distinct pictures until it was full.
        "mm_processor_cache_gb": settings.mm_processor_cache_gb,
        # Constrained JSON without free whitespace, as OpenAI's: a weak model cannot pad it
        # with spaces until max_tokens (--json-whitespace allows it again).
        "structured_outputs_config": StructuredOutputsConfig(
            backend="xgrammar", disable_any_whitespace=not settings.json_whitespace
        ),
        # Prometheus `vllm:*` metrics come from the stat loggers, which need log_stats.
        "disable_log_stats": False,
        "enable_log_requests": False,
    }
    if settings.max_model_len is not None:
        kwargs["max_model_len"] = settings.max_model_len
    if settings.max_num_seqs is not None:
        kwargs["max_num_seqs"] = settings.max_num_seqs
    if settings.enable_prefix_caching is not None:
        kwargs["enable_prefix_caching"] = settings.enable_prefix_caching
    kwargs["scheduling_policy"] = settings.scheduling_policy
    return AsyncEngineArgs(**kwargs)


def configure_cpu_environment(settings: Settings) -> None:
    """vLLM's CPU backend sizes its KV cache from VLLM_CPU_KVCACHE_SPACE (whole GiB).

    Writing (never reading) the environment for vLLM is this adapter's job; it must happen
    before the engine processes start.
    """
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and settings.kv_cache_space_gib is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(settings.kv_cache_space_gib)))
    if current_platform.is_cpu() and settings.cpu_malloc_mmap_threshold:
        # On CPU, tensors come from glibc malloc. Its mmap threshold grows with every freed
        # large block, so activations of ever-changing image sizes end up fragmenting the heap
        # and the model worker's memory creeps up under traffic (~0.3 MiB/s in the soak);
        # a fixed threshold gives large blocks back to the system when freed. Read by each
        # engine process as it starts.
        os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(settings.cpu_malloc_mmap_threshold))


def sampling_params(options: SamplingOptions, stop_ids: list[int], final_only: bool = False) -> Any:
    """SamplingParams for one request (the mapping vLLM's own OpenAI server does, including
    FINAL_ONLY outputs for requests nobody streams: no per-token output objects)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    structured = None
    if options.constraint is not None:
        kind, value = options.constraint.kind, options.constraint.value
        if kind in ("json", "structural_tag") and not isinstance(value, str):
            value = dict(value) if kind == "json" else json.dumps(value)
        elif kind == "choice":
            value = list(value)
        structured = StructuredOutputsParams(**{kind: value})
    return SamplingParams(
        n=options.n,
        max_tokens=options.max_tokens,
        min_tokens=options.min_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        min_p=options.min_p,
        seed=options.seed,
        stop=list(options.stop),
        # ignore_eos: the turn-end ids are this model's EOS, so they are ignored too.
        stop_token_ids=list(
            dict.fromkeys([*options.stop_token_ids, *([] if options.ignore_eos else stop_ids)])
        ),
        ignore_eos=options.ignore_eos,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        repetition_penalty=options.repetition_penalty,
        logprobs=options.top_logprobs if options.logprobs else None,
        logit_bias=dict(options.logit_bias) if options.logit_bias else None,
        structured_outputs=structured,
        skip_special_tokens=options.skip_special_tokens,
        spaces_between_special_tokens=options.spaces_between_special_tokens,
        include_stop_str_in_output=options.include_stop_str_in_output,
        output_kind=RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.DELTA,
    )


def _token_logprobs(token_ids: Any, steps: Any, top_n: int) -> tuple[TokenLogprob, ...]:
    out = []
    for token_id, step in zip(token_ids, steps, strict=False):
        chosen = step.get(token_id)
        ranked = sorted(step.items(), key=lambda kv: kv[1].rank or 0)
        top = tuple(
            TopLogprob(token_id=tid, token=lp.decoded_token or "", logprob=lp.logprob)
            for tid, lp in ranked[:top_n]
        )
        out.append(
            TokenLogprob(
                token_id=token_id,
                token=(chosen.decoded_token or "") if chosen else "",
                logprob=chosen.logprob if chosen else float("-inf"),
                top=top,
            )
        )
    return tuple(out)


def child_processes() -> list[Any]:  # list[psutil.Process]
    """This process's descendants but Python's multiprocessing resource tracker, which ignores
    SIGTERM and exits by itself when this process does, after unlinking the shared memory the
    engine left (stopping it cost every shutdown 5 s of waiting and skipped that cleanup)."""
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "multiprocessing.resource_tracker" not in " ".join(child.cmdline()):
                out.append(child)
    return out


def _child_pids() -> set[int]:
    return {p.pid for p in child_processes()}


def _stop_processes(pids: set[int], grace_s: float = 5.0) -> None:
    import psutil

    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            process.terminate()
            alive.append(process)
    _, left = psutil.wait_procs(alive, timeout=grace_s)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()


class VLLMEngine:
    """`Engine` (server/engine/contract.py) over vLLM's AsyncLLM."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._llm: Any = None
        self._stop_ids: list[int] = []
        self._processes: set[int] = set()  # the engine's processes (pids), once started
        self._ready = False
        self._failed = False
        self._info = ModelInfo(
            root=settings.model or settings.model_name,  # the real folder once started
            max_model_len=settings.max_model_len or 0,
            reasoning=wants_reasoning(settings, settings.model or ""),
        )

    # -- properties ------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        if self._llm is None:
            raise EngineDeadError("the engine has not started")
        tokenizer: Tokenizer = self._llm.tokenizer
        return tokenizer

    @property
    def model_info(self) -> ModelInfo:
        return self._info

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the model (in a worker thread), then warm up; /ready turns 200 afterwards.
        Also a restart after `stop()`."""
        self._failed = self._ready = False
        before = _child_pids()
        try:
            model = await asyncio.to_thread(resolve_model, self._settings)
            # vLLM's own message for a non-Kimi-VL folder is misleading ("contains custom
            # code"): name the file and the problem before the engine starts.
            check_model_dir(model)
            configure_cpu_environment(self._settings)
            args = engine_args(self._settings, model)
            started = time.perf_counter()
            from vllm.v1.engine.async_llm import AsyncLLM

            self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
            self._processes = _child_pids() - before
            self._place_frontend()
            self._info = await asyncio.to_thread(self._read_model_info, model)
            from server.model.tokenizer import stop_token_ids

            self._stop_ids = stop_token_ids(self._llm.tokenizer)
            logger.info("Engine started in %.1f s; warming up", time.perf_counter() - started)
            await self._warm_up()
        except BaseException:
            self._failed = True
            raise
        self._ready = True
        logger.info("Engine ready: %s (max_model_len %d)", model, self._info.max_model_len)

    def _place_frontend(self) -> None:
        from vllm.platforms import current_platform

        if current_platform.is_cpu() and self._settings.cpu_frontend_off_worker_cores:
            from server.engine.cpu_placement import keep_off_worker_cores

            keep_off_worker_cores()

    def _read_model_info(self, model: str) -> ModelInfo:
        from vllm.transformers_utils.config import get_hf_image_processor_config

        config = self._llm.model_config
        preprocessor = get_hf_image_processor_config(model, revision=config.revision) or {}
        return ModelInfo(
            root=model,
            max_model_len=int(config.max_model_len),
            reasoning=wants_reasoning(self._settings, model),
            max_num_seqs=int(self._llm.vllm_config.scheduler_config.max_num_seqs),
            preprocessor_config=dict(preprocessor),
            generation_defaults=dict(config.get_diff_sampling_param()),
        )

    async def _warm_up(self) -> None:
        """One tiny generation, so the first user request does not pay for lazy set-up."""
        request = GenerateRequest(
            request_id=f"warmup-{os.getpid()}",
            prompt_token_ids=self._llm.tokenizer.encode_text(_WARMUP_PROMPT),
            sampling=SamplingOptions(max_tokens=2, temperature=0.0),
        )
        async for _ in self.generate(request):
            pass

    async def stop(self) -> None:
        """Shut the engine down; processes of it that outlive vLLM's shutdown (a dead engine's
        workers) are terminated."""
        self._ready = False
        llm, self._llm = self._llm, None
        if llm is not None:
            # vLLM stops the engine core before its output handler, which then logs the core's
            # exit as an EngineDeadError at every shutdown; with nothing in flight, stop the
            # handler first (with requests in flight it must stay, to end them with the error).
            handler = getattr(llm, "output_handler", None)
            if handler is not None and not llm.get_num_unfinished_requests():
                handler.cancel()
                await asyncio.wait([handler])
            await asyncio.to_thread(llm.shutdown)
        processes, self._processes = self._processes, set()
        if processes:
            await asyncio.to_thread(_stop_processes, processes)

    def is_alive(self) -> bool:
        if self._failed:
            return False
        return self._llm is None or not self._llm.errored

    def is_ready(self) -> bool:
        return self._ready and self.is_alive()

    # -- requests ---------------------------------------------------------------------------
    def check(self, request: GenerateRequest) -> None:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

        try:
            params = sampling_params(request.sampling, self._stop_ids)
            validate_xgrammar_grammar(params)
        except (ValueError, VLLMClientError) as exc:
            raise RequestRejectedError(str(exc)) from exc
        if request.priority and self._settings.scheduling_policy != "priority":
            raise RequestRejectedError(
                "'priority' needs the server to run with --scheduling-policy priority",
                param="priority",
            )

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateOutput, None]:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDead

        llm = self._llm
        if llm is None or llm.errored:
            raise EngineDeadError("the engine is not running")
        try:
            params = sampling_params(request.sampling, self._stop_ids, request.final_only)
        except (ValueError, VLLMClientError) as exc:
            raise RequestRejectedError(str(exc)) from exc
        # A token prompt dict: vLLM runs the plugin's multimodal processor on it in a worker
        # thread (AsyncLLM logs once that raw prompts are "deprecated" in favour of its renderer;
        # 0.32 is pinned, and the renderer path would need the same processing off the loop).
        prompt: dict[str, Any] = {"prompt_token_ids": list(request.prompt_token_ids)}
        if request.multi_modal_data:
            prompt["multi_modal_data"] = dict(request.multi_modal_data)
        if request.cache_salt is not None:
            prompt["cache_salt"] = request.cache_salt
        produced: dict[int, int] = {}
        stream = llm.generate(prompt, params, request.request_id, priority=request.priority)
        try:
            async for out in stream:
                for step in self._steps(out, request, produced):
                    yield step
        except VLLMEngineDead as exc:
            self._failed = True
            raise EngineDeadError("the engine died") from exc
        except VLLMClientError as exc:
            raise RequestRejectedError(str(exc)) from exc
        finally:
            # Closed early (client gone): closing vLLM's generator aborts the request now
            # rather than whenever the garbage collector gets to it.
            await stream.aclose()

    def _steps(
        self, out: Any, request: GenerateRequest, produced: dict[int, int]
    ) -> list[GenerateOutput]:
        steps = []
        for comp in out.outputs:
            if not comp.token_ids and comp.finish_reason is None:
                continue
            produced[comp.index] = produced.get(comp.index, 0) + len(comp.token_ids)
            logprobs = None
            if request.sampling.logprobs and comp.logprobs is not None:
                logprobs = _token_logprobs(
                    comp.token_ids, comp.logprobs, request.sampling.top_logprobs
                )
            reason = comp.finish_reason
            first_token_time = None
            stats = getattr(out, "metrics", None)
            if request.final_only and stats is not None and stats.first_token_latency > 0:
                first_token_time = stats.arrival_time + stats.first_token_latency
            steps.append(
                GenerateOutput(
                    index=comp.index,
                    text_delta=comp.text,
                    token_ids=tuple(comp.token_ids),
                    num_prompt_tokens=len(out.prompt_token_ids or ()),
                    num_completion_tokens=produced[comp.index],
                    num_cached_tokens=out.num_cached_tokens or 0,
                    logprobs=logprobs,
                    finish_reason=None if reason is None else _FINISH_REASONS.get(reason, "stop"),
                    first_token_time=first_token_time,
                )
            )
        return steps
