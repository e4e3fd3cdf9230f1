"""Helpers every benchmark script shares: which device ran it, timing with device sync, the
JSON results file, and the work folder, checkpoint and environment of the processes it starts. torch is imported on first use, so the serving benchmark (an HTTP client)
does not pay for it."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo ("cpu" where there is none)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), "cpu")


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model with its core and torch thread counts."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock time covers it (no-op on CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of `fn` takes, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def write_json(path: str | os.PathLike[str], report: Any) -> None:
    """The run's figures as indented JSON (the `--json PATH` of every benchmark)."""
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (for a server a benchmark starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def workspace(prefix: str, model: Path | None) -> tuple[Path, Path, dict[str, str]]:
    """A fresh temporary folder, the checkpoint (`model`, or a fresh tiny one written into the
    folder), and the environment for the processes the benchmark starts: this one's without
    KIMI_VL_* settings, which would otherwise reach the servers under test."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=prefix))
    if model is None:
        from server.engine.checkpoint import ensure_tiny_checkpoint

        model = ensure_tiny_checkpoint(work / "tiny")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_VL_")}
    return work, model, env
