"""`camdeploy run` latency, ONNX Runtime against the PyTorch reference, measured side by side.

Scope: end to end, image files -> results.jsonl (read, resize, normalise, infer, boxes, write),
as `camdeploy run` does it. Each backend runs the same files `--repeats` times, alternating, after
one warm-up pass; the script prints the median and spread of each and the speed-up ratio.

    python benchmarks/run_latency.py [--images ../shared/data/imagenet-val/dev/images] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import camdeploy
from camdeploy.demo import cached_export
from camdeploy.runtime import OnnxRuntimeRunner, RunOptions, TorchRunner, list_images, run_files
from camdeploy.runtime.onnxruntime_runner import usable_cpus

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(REPO.parent / "shared/data/imagenet-val/dev/images"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    model = cached_export("efficientnet_lite0")
    paths = list_images([args.images])
    threads = usable_cpus()
    print(f"camdeploy {camdeploy.__version__}, onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, "
          f"numpy {np.__version__}")
    print(f"machine: {platform.processor() or platform.machine()}, {threads} CPUs, {platform.platform()}")
    print(f"{len(paths)} images from {args.images}, batch {args.batch_size}, {args.repeats} repeats after a "
          "warm-up pass; scope: files -> results.jsonl")
    options = RunOptions(batch_size=args.batch_size, progress=False)
    with tempfile.TemporaryDirectory() as out, OnnxRuntimeRunner(model) as ort_runner, \
            TorchRunner("efficientnet_lite0", ort_runner.spec) as torch_runner:
        runners = {"ort": ort_runner, "torch": torch_runner}
        times: dict[str, list[float]] = {name: [] for name in runners}
        for repeat in range(args.repeats + 1):
            for name, runner in runners.items():
                summary = run_files(runner, paths, Path(out) / name, options)
                if repeat:  # the first pass warms up caches and allocators
                    times[name].append(1000 * summary.seconds / len(summary.records))
    print(f"{'backend':<8} {'median ms/img':>14} {'min':>8} {'max':>8}")
    for name, values in times.items():
        print(f"{name:<8} {statistics.median(values):>14.2f} {min(values):>8.2f} {max(values):>8.2f}")
    ratio = statistics.median(times["torch"]) / statistics.median(times["ort"])
    print(f"speed-up of ONNX Runtime over the PyTorch reference: {ratio:.2f}x")


if __name__ == "__main__":
    main()
