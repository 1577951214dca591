"""Backends on an NVIDIA GPU against the CPU: the same results, and latency side by side.

    python benchmarks/gpu_compare.py MODEL.onnx --images DIR --count 100 --json OUT.json

Agreement, on ``--count`` images (every output, boxes included), pair by pair:

* the PyTorch reference on CUDA (``--backend torch --device cuda``, IEEE fp32) against the same
  reference on the CPU;
* ONNX Runtime's CUDA provider running the whole graph, boxes in the graph (``--provider cuda
  --box-source graph``), against ONNX Runtime on the CPU with the same graph and box source;
* ONNX Runtime CUDA against the PyTorch reference on CUDA.

Each pair reports top-1 and top-T classes equal, the largest logit, score and CAM differences and
the boxes equal, map by map.

Latency, at each ``--batch-sizes`` (default 1 and 32), rows taking turns in a shuffled order
(:func:`camdeploy.bench.timing.time_interleaved`): PyTorch eager on the CPU and on CUDA, ONNX
Runtime on the CPU and on CUDA, each one preprocessed batch to every output on the host
(``infer``, CAMs and boxes); plus ``[device clock]`` rows for PyTorch on CUDA, CUDA events around
the model and CAM head alone, with no copies. Reports median and minimum, and every row's ratio to
PyTorch on CUDA, the reference a GPU deployment is compared with.

A backend that cannot run here (no GPU for PyTorch, an ONNX Runtime without the CUDA provider) is
reported with the reason, never left out silently. Exit status 1 when a pair that ran disagrees on
a top-1 class.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from camdeploy.backends import RunnerOptions, make_runner
from camdeploy.bench.timing import LatencyStats, time_interleaved
from camdeploy.errors import CamdeployError
from camdeploy.metadata import read_spec
from camdeploy.runtime.batches import BatchOptions, image_batches
from camdeploy.runtime.inputs import list_images
from camdeploy.runtime.result import CamResult
from camdeploy.runtime.runner import Runner
from camdeploy.versions import machine_info

REFERENCE = "torch cuda"


def _runners(model: Path) -> tuple[dict[str, Runner], dict[str, str]]:
    """The runners that open here, and the reason for each that does not."""
    spec = read_spec(model)
    wanted = {
        "torch cpu": ("torch", RunnerOptions(device="cpu")),
        "torch cuda": ("torch", RunnerOptions(device="cuda")),
        "ort cpu": ("ort", RunnerOptions(box_source="graph")),
        "ort cuda": ("ort", RunnerOptions(provider="cuda", box_source="graph")),
    }
    runners: dict[str, Runner] = {}
    missing: dict[str, str] = {}
    for name, (backend, options) in wanted.items():
        runner = make_runner(backend, model, options, spec)
        try:
            runner.open()
        except CamdeployError as exc:
            missing[name] = str(exc)
            print(f"{name}: cannot run here: {exc}", file=sys.stderr)
            continue
        runners[name] = runner
    return runners, missing


def _concat(results: list[CamResult]) -> dict[str, np.ndarray]:
    fields = ("logits", "classes", "scores", "cams", "boxes")
    return {f: np.concatenate([getattr(r, f) for r in results]) for f in fields}


def _agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, object]:
    same_boxes = (a["boxes"] == b["boxes"]).all(axis=-1)
    return {"images": len(a["classes"]),
            "top1_equal": int((a["classes"][:, 0] == b["classes"][:, 0]).sum()),
            "topk_equal": int((a["classes"] == b["classes"]).all(axis=1).sum()),
            "max_logit_diff": float(np.abs(a["logits"] - b["logits"]).max()),
            "max_score_diff": float(np.abs(a["scores"] - b["scores"]).max()),
            "max_cam_diff": float(np.abs(a["cams"] - b["cams"]).max()),
            "maps": int(same_boxes.size), "boxes_equal": int(same_boxes.sum())}


def _torch_device_clock(runner: Any, x: np.ndarray, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of PyTorch's model and CAM head on CUDA, timed with CUDA events (no copies)."""
    import torch

    images = runner.to_device(x)
    cam_model = runner.cam_model
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start.record()
            cam_model(images)
            end.record()
            end.synchronize()
            if i >= warmup:
                samples.append(start.elapsed_time(end) / 1000.0)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--images", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=25, help="batch of the agreement pass (default 25)")
    parser.add_argument("--batch-sizes", default="1,32", help="batches timed (default 1,32)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    paths = list_images([args.images])[: args.count]
    runners, missing = _runners(args.model)
    if not runners:
        print("no backend runs here", file=sys.stderr)
        return 2
    spec = next(iter(runners.values())).spec
    tensors = [batch.tensors for batch in image_batches(paths, spec, BatchOptions(batch_size=args.batch_size),
                                                       on_skip=lambda p, why: print(f"skipped {why}"))]
    try:
        results = {name: _concat([r.infer(x) for x in tensors]) for name, r in runners.items()}
        pairs = [("torch cuda", "torch cpu"), ("ort cuda", "ort cpu"), ("ort cuda", "torch cuda"),
                 ("ort cpu", "torch cpu")]
        agreement = {f"{a} vs {b}": _agreement(results[a], results[b]) for a, b in pairs
                     if a in results and b in results}
        del results
        prepared = np.concatenate(tensors)
        latency: dict[str, dict[str, object]] = {}
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            x = np.stack([prepared[i % len(prepared)] for i in range(batch)])
            calls = {name: (lambda r=r, x=x: r.infer(x)) for name, r in runners.items()}
            timings = time_interleaved(calls, warmup=args.warmup, repeats=args.repeats,
                                       settle_after=[n for n in calls if n.startswith("torch")])
            rows = {name: LatencyStats.from_timings(t, batch).as_dict() for name, t in timings.items()}
            if "torch cuda" in runners:
                samples = _torch_device_clock(runners["torch cuda"], x, args.warmup, args.repeats)
                rows["torch cuda [device clock]"] = LatencyStats.from_samples(samples, batch).as_dict()
            reference = rows.get(REFERENCE)
            for row in rows.values():
                if reference:
                    row["vs_torch_cuda_median"] = float(reference["median_ms"]) / float(row["median_ms"])
                    row["vs_torch_cuda_min"] = float(reference["min_ms"]) / float(row["min_ms"])
            latency[str(batch)] = rows
    finally:
        for runner in runners.values():
            runner.close()
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.get_device_name(0)} (sm_{''.join(map(str, torch.cuda.get_device_capability(0)))})"
    except ImportError:
        pass
    report = {"model": str(args.model), "images": len(paths), "gpu": gpu, "cannot_run": missing,
              "execution": {name: r.execution for name, r in runners.items()}, "agreement": agreement,
              "latency": latency, "options": {"warmup": args.warmup, "repeats": args.repeats},
              "machine": machine_info(), "seconds": time.perf_counter() - started}
    args.json.write_text(json.dumps(report, indent=2))
    for pair, figures in agreement.items():
        print(f"{pair}: top-1 {figures['top1_equal']}/{figures['images']}, top-T {figures['topk_equal']}, "
              f"boxes {figures['boxes_equal']}/{figures['maps']}, max |logit| diff {figures['max_logit_diff']:.2e}, "
              f"max |cam| diff {figures['max_cam_diff']:.2e}")
    print(f"{'row':<28} {'batch':>5} {'min ms':>8} {'median':>8} {'ms/img':>7} {'vs torch cuda':>13}")
    for batch, rows in latency.items():
        for name, row in rows.items():
            ratio = row.get("vs_torch_cuda_median")
            print(f"{name:<28} {batch:>5} {row['min_ms']:>8.3f} {row['median_ms']:>8.3f} {row['ms_per_image']:>7.3f} "
                  f"{'' if ratio is None else f'{ratio:.2f}x':>13}")
    disagree = [pair for pair, figures in agreement.items() if figures["top1_equal"] != figures["images"]]
    if disagree:
        print(f"top-1 classes differ: {', '.join(disagree)}")
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main())
