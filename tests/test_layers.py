"""The layering rules of docs/architecture.md, checked on the source itself.

- HTTP stays in server/api: nothing outside it (and server/app.py, which assembles the app)
  imports `server.api`; `server/errors.py` and the services know nothing of FastAPI.
- One module talks to vLLM's engine: outside the model plugin (server/model/), only
  server/engine/vllm_engine.py imports vLLM at all, and the front end loads no vLLM at import.
- kernels/ imports neither vLLM nor FastAPI when imported.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "server"


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from … import` anywhere in the file names (lazy ones too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def importers(root: Path, prefix: str) -> set[str]:
    """Files under `root` (relative to the repository) importing `prefix` or a submodule."""
    return {
        str(path.relative_to(REPO))
        for path in root.rglob("*.py")
        if any(m == prefix or m.startswith(prefix + ".") for m in imported_modules(path))
    }


def test_the_scan_sees_imports() -> None:
    assert "server/app.py" in importers(SERVER, "server.api")
    assert "server/engine/vllm_engine.py" in importers(SERVER, "vllm")


def test_only_the_http_layer_imports_server_api() -> None:
    outside = {f for f in importers(SERVER, "server.api") if not f.startswith("server/api/")}
    assert outside == {"server/app.py"}


def test_fastapi_stays_in_the_http_layer() -> None:
    users = importers(SERVER, "fastapi") | importers(SERVER, "starlette")
    assert users, "the scan found no FastAPI import at all"
    assert {f for f in users if not f.startswith("server/api/")} <= {"server/app.py"}


def test_one_module_talks_to_vllm() -> None:
    users = {f for f in importers(SERVER, "vllm") if not f.startswith("server/model/")}
    assert users == {"server/engine/vllm_engine.py"}
    engine_users = importers(SERVER, "vllm.v1.engine") | importers(SERVER, "vllm.engine")
    assert engine_users == {"server/engine/vllm_engine.py"}


def _modules_loaded_by(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_front_end_imports_no_vllm() -> None:
    loaded = _modules_loaded_by(
        "import server.app, server.cli, server.serving.chat, server.serving.completions"
    )
    assert "server.serving.chat" in loaded
    assert not [m for m in loaded if m == "vllm" or m.startswith("vllm.")]


def test_kernels_import_neither_vllm_nor_fastapi() -> None:
    loaded = _modules_loaded_by(
        "import importlib, pkgutil, kernels\n"
        "for m in pkgutil.walk_packages(kernels.__path__, 'kernels.'):\n"
        "    if not m.name.startswith('kernels.bench'):\n"
        "        importlib.import_module(m.name)"
    )
    assert "kernels.fused_moe.triton_moe" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("vllm", "fastapi", "starlette")]
