"""The graph's boxes on a TensorRT engine against the host rule on the same engine's CAMs.

    python benchmarks/tensorrt_boxes.py MODEL.onnx --images DIR --count 100 --json OUT.json

Runs the engine built from MODEL.onnx (``--backend tensorrt``, box source ``graph``), takes the raw
``boxes`` output and ``boxes_exact`` flags, and compares them with ``cam_boxes`` on the ``cams`` the
engine returned, map by map. Exit status 1 when a map flagged exact has another box. Needs an
NVIDIA GPU (it says so and exits 2 without one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from camdeploy.errors import CamdeployError
from camdeploy.runtime.batches import BatchOptions, image_batches
from camdeploy.runtime.boxes import cam_boxes
from camdeploy.runtime.inputs import list_images
from camdeploy.runtime.tensorrt_engine import EngineOptions
from camdeploy.runtime.tensorrt_runner import TensorRTRunner
from camdeploy.versions import machine_info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--images", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    paths = list_images([args.images])[: args.count]
    runner = TensorRTRunner(args.model, EngineOptions(batch=(1, args.batch_size, args.batch_size)), box_source="graph")
    try:
        runner.open()
    except CamdeployError as exc:
        print(f"tensorrt_boxes: skipped: {exc}", file=sys.stderr)
        return 2
    maps = equal = flagged = wrong = 0
    try:
        for batch in image_batches(paths, runner.spec, BatchOptions(batch_size=args.batch_size),
                                   on_skip=lambda path, reason: print(f"skipped {reason}", file=sys.stderr)):
            out = runner.run_outputs(["cams", "boxes", "boxes_exact"], batch.tensors)  # raw: no host fallback
            host = cam_boxes(out["cams"], runner.box_threshold)
            same = (out["boxes"] == host).all(axis=-1)
            exact = out["boxes_exact"].astype(bool)
            maps += same.size
            equal += int(same.sum())
            flagged += int((~exact).sum())
            wrong += int((~same & exact).sum())
    finally:
        runner.close()
    report = {"model": args.model, "images": len(paths), "maps": maps, "equal": equal, "flagged_not_exact": flagged,
              "exact_but_different": wrong, "engine": runner.execution, "gpu": runner.gpu,
              "machine": machine_info()}
    args.json.write_text(json.dumps(report, indent=2))
    print(f"{equal} of {maps} maps equal the host rule; {flagged} flagged not exact; {wrong} exact but different")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
