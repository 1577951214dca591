#!/usr/bin/env bash
# One-shot GPU check, for the minutes a GPU machine is lent: on a fresh Linux machine with an NVIDIA
# GPU, the project and ../shared beside it, it installs the GPU extras, runs the GPU-marked tests,
# times TensorRT at batch 1 and 32 for fp32, FP16 and INT8, and checks the graph's boxes on the
# engine against the host rule on 100 dev images. Everything goes under one folder; the exit status
# is non-zero when any step fails. Without a GPU, the GPU steps are skipped with a message and the
# rest runs (which keeps the script honest on CPU machines).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#   WHEELS=dir   install from a folder of wheels (a machine without network), else from the index
#   PYTHON=...   the Python to make the virtual environment with (default python3)
#   SKIP_INSTALL=1  use the .venv that is there
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
data=${CAMDEPLOY_DATA:-../shared/data}/imagenet-val
export CAMDEPLOY_CACHE_DIR=${CAMDEPLOY_CACHE_DIR:-$out/cache}
failed=()
started=$(date +%s)

step() {  # step NAME COMMAND...: run it, log it, remember a failure
  local name=$1; shift
  echo "== $name ($(( $(date +%s) - started )) s)"
  if "$@" >"$out/$name.log" 2>&1; then echo "   ok"; else echo "   FAILED, see $out/$name.log"; failed+=("$name"); fi
}

gpu=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >"$out/gpu.txt" 2>&1; then
  gpu=1; cat "$out/gpu.txt"
else
  echo "no NVIDIA GPU here (nvidia-smi finds none): the GPU steps are skipped" | tee "$out/gpu.txt"
fi
grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' ' >"$out/cpu-flags.txt"

extras=cpu,export,test
[ "$gpu" = 1 ] && extras=gpu,export,tensorrt,test
install() {
  ${PYTHON:-python3} -m venv .venv || return 1
  if [ -n "${WHEELS:-}" ]; then
    .venv/bin/pip install -q --no-index --find-links "$WHEELS" -e ".[$extras]"
  else
    .venv/bin/pip install -q -c constraints.txt -e ".[$extras]"
  fi
}
if [ -z "${SKIP_INSTALL:-}" ]; then step install install; fi
py=.venv/bin/python

if [ "$gpu" = 1 ]; then
  step gpu-tests "$py" -m pytest -m "gpu or cuda" -ra --junitxml="$out/gpu-tests.xml" tests
else
  echo "== gpu-tests: skipped (no GPU); they are marked gpu/cuda and skip with their reason" | tee "$out/gpu-tests.log"
fi

# The models: fp32 exported here, FP16 converted, INT8 (TensorRT target) calibrated on dev images.
models=$out/models
mkdir -p "$models"
step export "$py" -m camdeploy export --output "$models/fp32.onnx"
step convert "$py" -m camdeploy convert "$models/fp32.onnx" --fp16 --output "$models/fp16.onnx"
step calibrate "$py" -m camdeploy calibrate "$models/fp32.onnx" --images "$data/dev/images" --count 100 \
  --verify-count 50 --output "$models/int8.onnx" --no-progress

if [ "$gpu" = 1 ]; then
  for precision in fp32 fp16 int8; do
    step "bench-$precision" "$py" -m camdeploy bench "$models/$precision.onnx" --backend tensorrt \
      --images "$data/dev/images" --batch-sizes 1,32 --scopes model --repeats 20 --no-torchcam \
      --json "$out/bench-$precision.json"
  done
  step tensorrt-boxes "$py" benchmarks/tensorrt_boxes.py "$models/fp32.onnx" --images "$data/dev/images" \
    --count 100 --json "$out/tensorrt-boxes.json"
else
  echo "== bench (TensorRT, batch 1 and 32, fp32/FP16/INT8): skipped (no GPU)" | tee "$out/bench.log"
  echo "== tensorrt-boxes (graph boxes on the engine = host rule): skipped (no GPU)" | tee "$out/tensorrt-boxes.log"
fi
rm -rf "$models" "$out/cache"

echo "done in $(( $(date +%s) - started )) s; logs and results in $out/"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
