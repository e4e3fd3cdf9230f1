# syntax=docker/dockerfile:1
# GPU image of kimi-vl-server: CUDA runtime, Python 3.12, the project with the `gpu` extra
# (vllm==0.32.0, pinned in pyproject.toml). CPU hosts: docker/Dockerfile.cpu.
#
#   docker build -t kimi-vl-server:0.1.0 .
#   docker run --gpus all --init --shm-size 8g -p 8000:8000 -v kimi-vl-models:/models \
#       -e KIMI_VL_API_KEYS=sk-change-me kimi-vl-server:0.1.0 --preset kimi-vl-a3b-thinking-2506
#
# `--init` (compose: `init: true`) runs tini as PID 1: it forwards SIGTERM and reaps the engine
# processes vLLM starts. Kubernetes has no such flag; docker/k8s/deployment.yaml shares the pod's
# process namespace so the pause container reaps instead.
# Stage `builder` makes /opt/venv; `runtime` copies it, so pip and build backends stay behind.
# vllm==0.32.0 pins torch 2.13 built for CUDA 13 (its wheels bundle the CUDA libraries), so the
# base is CUDA 13 and the host needs an NVIDIA driver that supports CUDA 13 (>= 580).
# Multi-node serving with Ray (docker/k8s/multinode-lws.yaml) needs Ray, which vLLM does not
# depend on:  docker build --build-arg RAY_VERSION=2.60.0 -t kimi-vl-server:0.1.0-ray .
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The pinned base tag fixes the Ubuntu release; apt pins would break whenever the archive drops
# a superseded security update, so package versions follow that release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM base AS builder
# DL3008: apt versions follow the release the pinned base tag fixes (see the base stage).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12-venv \
    && rm -rf /var/lib/apt/lists/*
# The project stays at /app (editable install): presets are read from /app/configs, beside the
# `server` package (server/settings.py CONFIGS_DIR), which a wheel install would not ship.
WORKDIR /app
COPY pyproject.toml ./
# Dependencies first, against empty packages (and README, which pyproject names): editing the
# sources or the docs does not reinstall vLLM.
RUN mkdir -p server kernels \
    && touch README.md server/__init__.py kernels/__init__.py \
    && python3.12 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -e ".[gpu]"
ARG RAY_VERSION=""
RUN if [ -n "$RAY_VERSION" ]; then \
        /opt/venv/bin/pip install --no-cache-dir "ray[cgraph]==${RAY_VERSION}"; \
    fi
COPY configs ./configs
COPY kernels ./kernels
COPY server ./server
RUN /opt/venv/bin/python -c "import server, kernels, vllm; print('vllm', vllm.__version__)"

FROM base AS runtime
# Not build tools for the image: Triton compiles its CUDA launcher with a C compiler against
# Python's headers the first time a kernel runs (triton/runtime/build.py), in this container.
# DL3008: apt versions follow the release the pinned base tag fixes (see the base stage).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev python3.12-dev \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/app --shell /usr/sbin/nologin app \
    && mkdir -p /models /state \
    && chown 10001:10001 /models /state
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
COPY docker/healthcheck.py /usr/local/bin/kimi-vl-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/app \
    HF_HOME=/models \
    VLLM_NO_USAGE_STATS=1 \
    KIMI_VL_HOST=0.0.0.0 \
    KIMI_VL_PORT=8000 \
    KIMI_VL_STATE_DIR=/state
# Hugging Face cache (weights are 32.8 GB): mount a volume so restarts do not download again.
# /state: uploaded files and batch jobs (SQLite + files), kept across restarts.
VOLUME ["/models", "/state"]
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# /health is 200 while the engine process lives, also during model load; /ready gates traffic.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/kimi-vl-healthcheck", "/health"]
ENTRYPOINT ["kimi-vl-serve"]
CMD ["--preset", "kimi-vl-a3b-instruct"]
