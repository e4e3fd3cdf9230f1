#!/usr/bin/env bash
# The GPU checks of the Triton MoE kernels, for a machine with one Hopper GPU, torch and Triton,
# and neither vLLM nor a network (under 8 minutes on an H100/H200):
#   1. the kernel tests natively: the Triton cases, bf16 against the reference, CUDA-graph replay;
#   2. block-size tuning for the expert width of TP=1 (N=1408) and TP=2 (N=704), time-capped;
#      the config files land in kernels/fused_moe/configs/ (commit them);
#   3. the MoE benchmark against torch's grouped GEMM (`torch._grouped_mm`, no vLLM needed),
#      with achieved GB/s and TFLOP/s next to the measured copy bandwidth and bf16 matmul rate.
# Usage: scripts/gpu-check.sh [OUT_DIR]   (default: $OUT, else gpu-check-out/)
# Logs, the tuned configs and the benchmark JSON are copied to OUT_DIR. Exit status: the number
# of steps that failed (0: all passed).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check-out}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
tune_s="${GPU_CHECK_TUNE_SECONDS:-170}"  # per width: ~52 s tests + 2 x (tune + 60) + ~10 s bench < 8 min
# Triton compiles every candidate config per M, so the common decode/prefill sizes go first and the
# in-between ones fill whatever time is left under the cap.
ms=1,16,64,256,1024,4096,4,32,128,512,2048
failed=0

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to OUT/NAME.log, count a failure
  local name="$1" limit="$2"
  shift 2
  echo "== $name ($(date -u +%T), at most ${limit} s)"
  local started=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - started)) s"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__,
  "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())' || exit 1

# The kernel tests need only torch, Triton and pytest (no server conftest: no FastAPI there).
step tests 240 "$py" -m pytest -q --noconftest -p no:cacheprovider tests/kernels \
  -o addopts="" -W ignore::pytest.PytestConfigWarning
step tune-n1408 $((tune_s + 60)) "$py" -m kernels.fused_moe.tune --width 1408 --shared 2816 \
  --m "$ms" --time-limit "$tune_s"
step tune-n704 $((tune_s + 60)) "$py" -m kernels.fused_moe.tune --width 704 --shared 1408 \
  --m "$ms" --time-limit "$tune_s"
# Copied under names without "=" or "," (some artefact collectors refuse them). Reversing the
# tr is ambiguous ("device_name" has a "_"), so each copy's .name file holds its original name.
for f in kernels/fused_moe/configs/E=*.json; do
  [ -e "$f" ] || continue
  safe="$(basename "$f" | tr '=,' '__')"
  cp "$f" "$out/$safe" && basename "$f" > "$out/$safe.name"
done
step bench 180 "$py" -m benchmarks.fused_moe --dtype bf16 --peer grouped_mm \
  --m 1,8,32,64,256,1024,4096 --json "$out/fused_moe-gpu-bf16.json"

echo "gpu-check: $failed step(s) failed; logs and results in $out"
exit "$failed"
