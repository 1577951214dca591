"""INT8 agreement with fp32 on the CPU this runs on: camdeploy's sessions against ONNX Runtime's defaults.

    python benchmarks/int8_isa.py FP32.onnx INT8.onnx... --images DIR --count 100 --json OUT.json
    qemu-x86_64 -cpu Haswell .venv/bin/python benchmarks/int8_isa.py ...   # an AVX2 CPU without VNNI

For each INT8 model, the top-1 class and top-1 box of the first ``--count`` images (sorted) are
compared with the fp32 model's, twice: with the session camdeploy's runner builds (its INT8 plan,
:mod:`camdeploy.runtime.int8`) and with ONNX Runtime's default session options (fused U8S8 kernels,
which saturate on x86-64 CPUs without VNNI). The CPU is read from CPUID, as ONNX Runtime reads it,
so under qemu the figures are those of the emulated CPU. Only accuracy is meaningful under qemu:
emulated timings say nothing about a real AVX2 CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from camdeploy.eval.metrics import paired_iou
from camdeploy.runtime.boxes import cam_boxes
from camdeploy.runtime.cpu import cpu_features
from camdeploy.runtime.images import load_image, prepare
from camdeploy.runtime.inputs import list_images
from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner


def _plain(path: str, x: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 classes and boxes from a session with ONNX Runtime's default options."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    classes, boxes = [], []
    for start in range(0, len(x), 16):
        top, cams = session.run(["classes", "cams"], {"images": x[start:start + 16]})
        classes.append(top[:, 0])
        boxes.append(cam_boxes(cams[:, :1], tau)[:, 0])
    return np.concatenate(classes), np.concatenate(boxes)


def _camdeploy(path: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    with OnnxRuntimeRunner(path) as runner:
        results = [runner.infer(x[start:start + 16]) for start in range(0, len(x), 16)]
        execution = runner.execution
    return (np.concatenate([r.classes[:, 0] for r in results]), np.concatenate([r.boxes[:, 0] for r in results]),
            execution)


def _agreement(base: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    same = base[0] == other[0]
    ious = paired_iou(base[1][same], other[1][same])
    return {"top1_agreement": float(same.mean()), "mean_top1_box_iou": float(ious.mean()) if ious.size else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fp32")
    parser.add_argument("int8", nargs="+")
    parser.add_argument("--images", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    with OnnxRuntimeRunner(args.fp32) as runner:
        spec = runner.spec
    paths = list_images([args.images])[: args.count]
    x = np.stack([prepare(load_image(p), spec)[0] for p in paths])
    base = _camdeploy(args.fp32, x)[:2]
    out: dict[str, object] = {"cpu": cpu_features().as_dict(), "images": len(paths), "models": {}}
    for path in args.int8:
        classes, boxes, execution = _camdeploy(path, x)
        out["models"][Path(path).name] = {  # type: ignore[index]
            "camdeploy": {"execution": execution, **_agreement(base, (classes, boxes))},
            "onnxruntime_defaults": _agreement(base, _plain(path, x, spec.box_threshold)),
        }
        print(Path(path).name, json.dumps(out["models"][Path(path).name]), flush=True)  # type: ignore[index]
    args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
