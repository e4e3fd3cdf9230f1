"""Fail fast, naming the file, on corrupt or truncated safetensors shards.

vLLM reads shards lazily and safetensors' own errors name neither the file nor the problem
in words ("incomplete metadata, file not fully covered"). Checking each header against the
file size costs one small read per shard.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

MAX_HEADER_BYTES = 100 * 1024 * 1024


class CorruptCheckpointError(ValueError):
    """A safetensors shard cannot be read as written."""


def validate_shard(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise CorruptCheckpointError(
                f"{path}: truncated safetensors file ({size} bytes, no header)"
            )
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise CorruptCheckpointError(
                f"{path}: corrupt or truncated safetensors header (declares {header_len} bytes, file has {size})"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptCheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise CorruptCheckpointError(
            f"{path}: truncated safetensors file: tensors need {8 + header_len + end} bytes, file has {size}"
        )


def validate_checkpoint_dir(model_dir: str | Path) -> None:
    """Check every shard the index names (or every *.safetensors) in a local checkpoint folder."""
    root = Path(model_dir)
    if not root.is_dir():
        return  # a hub id: vLLM resolved and downloaded it; its own checks apply
    index = root / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        for name in names:
            if not (root / name).is_file():
                raise CorruptCheckpointError(f"{root / name}: listed in {index.name} but missing")
        shards = [root / n for n in names]
    else:
        shards = sorted(root.glob("*.safetensors"))
    for shard in shards:
        validate_shard(shard)


SUPPORTED = {
    "model_type": "kimi_vl",
    "text": ("deepseek_v3", "deepseek_v2"),
    "vision": ("moonvit",),
}
TOKENIZER_FILES = ("tiktoken.model", "tokenizer_config.json")


class UnsupportedCheckpointError(ValueError):
    """The folder is not a Kimi-VL checkpoint this server can serve."""


def check_model_dir(model_dir: str | Path) -> None:
    """Before an engine starts: config.json is a Kimi-VL config and the tokenizer files exist.

    vLLM's own messages for these cases are misleading (an unknown model_type surfaces as
    "contains custom code which must be executed"); this names the file and the problem.
    """
    root = Path(model_dir)
    if not root.is_dir():
        return
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise UnsupportedCheckpointError(
            f"{cfg_path}: missing; not a Hugging Face checkpoint folder"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnsupportedCheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
    mt = cfg.get("model_type")
    if mt != SUPPORTED["model_type"]:
        raise UnsupportedCheckpointError(
            f"{cfg_path}: model_type {mt!r} is not supported; this server serves Kimi-VL ('kimi_vl') checkpoints"
        )
    for key, allowed in (
        ("text_config", SUPPORTED["text"]),
        ("vision_config", SUPPORTED["vision"]),
    ):
        sub = (cfg.get(key) or {}).get("model_type")
        if sub not in allowed:
            raise UnsupportedCheckpointError(
                f"{cfg_path}: {key}.model_type {sub!r} is not supported (expected one of {allowed})"
            )
    for name in TOKENIZER_FILES:
        if not (root / name).is_file():
            raise UnsupportedCheckpointError(f"{root / name}: missing tokenizer file")
