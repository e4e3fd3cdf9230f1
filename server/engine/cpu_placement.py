"""On a CPU engine, keep the front end off the cores the model workers are bound to.

vLLM's CPU backend binds each model worker's OpenMP threads to its own cores and leaves the
rest ("reserved" cores) for everything else; but nothing keeps the API server's threads (HTTP,
media decoding, tokenizer, vLLM's renderer and output handler) or vLLM's engine-core process
off the workers' cores, so the kernel scheduler puts them there whenever the worker cores look
less busy, and every such slice stalls a forward pass. Measured on 2 cores (worker on core 0),
96 concurrent image requests per round, 3 rounds each: 15.2-16.2 req/s and TTFT p50 161-200 ms
with the front end free, 15.9-17.2 req/s and 151-178 ms with it on core 1.

This runs once, after the engine has started its workers: the worker processes are the
descendants whose CPU affinity is narrower than ours; every thread of this process and of the
other descendants (the engine core) moves to the remaining cores. Threads started later inherit
the mask from the thread that starts them. Nothing changes when the workers cover every core
(e.g. TP=2 on 2 cores) or none is bound.
"""

from __future__ import annotations

import contextlib
import logging
import os

logger = logging.getLogger(__name__)


def keep_off_worker_cores(root_pid: int | None = None) -> set[int] | None:
    """Move the front end (this process tree minus the workers) off the workers' cores.

    Returns the cores the front end now runs on, or None when there was nothing to do.
    """
    import psutil

    root = psutil.Process(root_pid or os.getpid())
    allowed = set(root.cpu_affinity())
    workers: set[int] = set()
    others = [root]
    for proc in root.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            cores = set(proc.cpu_affinity())
            if cores < allowed:
                workers |= cores
            else:
                others.append(proc)
    rest = allowed - workers
    if not workers or not rest:
        return None
    for proc in others:
        with contextlib.suppress(psutil.NoSuchProcess):
            for thread in proc.threads():
                with contextlib.suppress(OSError):  # a thread may exit meanwhile
                    os.sched_setaffinity(thread.id, rest)
    logger.info(
        "CPU placement: model workers on cores %s; front end and engine core moved to %s",
        _cores(workers),
        _cores(rest),
    )
    return rest


def _cores(cores: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))
