"""Which weights to serve: `settings.model`, the demo checkpoint shipped in the package (the
default), or the tiny random checkpoint written on first use (`--preset tiny`, for tests).

Two servers starting together must not both write the tiny checkpoint or read a half-written
one: the writer holds
an exclusive lock on `<dir>.lock`, writes into a temporary sibling folder and renames it into
place, so the folder either does not exist or is complete.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from server.model.demo import CHECKPOINT_DIR as DEMO_CHECKPOINT_DIR
from server.settings import Settings

logger = logging.getLogger(__name__)

# The last file write_checkpoint() produces; its presence marks a complete folder.
_COMPLETE_MARKER = "generation_config.json"


def resolve_model(settings: Settings) -> str:
    """The HF id or local folder vLLM loads. Blocking (may write the tiny checkpoint)."""
    if settings.model is not None:
        return settings.model
    if settings.builtin_checkpoint == "tiny":
        return str(ensure_tiny_checkpoint(settings.tiny_checkpoint_dir))
    return str(DEMO_CHECKPOINT_DIR)


def ensure_tiny_checkpoint(folder: Path, *, seed: int = 0) -> Path:
    """Write the tiny checkpoint into `folder` unless it is already there; return the folder."""
    folder = folder.expanduser()
    if (folder / _COMPLETE_MARKER).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_path = folder.with_name(folder.name + ".lock")
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second starter waits here for the first
        try:
            if (folder / _COMPLETE_MARKER).is_file():
                return folder
            from server.model.tiny import write_checkpoint  # torch + safetensors: only when needed

            logger.info("Writing the tiny Kimi-VL checkpoint to %s (first use)", folder)
            staging = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
            try:
                write_checkpoint(staging, seed=seed)
                if folder.exists():  # an incomplete leftover (e.g. an interrupted older writer)
                    shutil.rmtree(folder)
                os.rename(staging, folder)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            return folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
