"""The vLLM plugin entry point: discoverable, cheap at import, idempotent."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

from tests.model.conftest import REPO


def test_entry_point_is_installed() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert eps.get("kimi_vl") == "server.model:register"


def test_import_is_cheap() -> None:
    """vLLM imports plugins in every process it starts: importing must not pull in vLLM or torch."""
    code = "import sys, server.model; print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_register_overrides_builtin_and_is_idempotent() -> None:
    code = (
        "from vllm import ModelRegistry\n"
        "from server.model import register\n"
        "register(); register()\n"
        "cls = ModelRegistry._try_load_model_cls('KimiVLForConditionalGeneration')\n"
        "print(cls.__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "server.model.kimi_vl"
