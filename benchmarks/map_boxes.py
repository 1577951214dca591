"""Boxes from the low-resolution maps on every dev map: how they are decided, how close the margin
is, and what the host's work costs, for both implementations of the rule.

    python benchmarks/map_boxes.py [--batch 16] [--passes 5]

EfficientNet-Lite0 on ONNX Runtime CPU, all dev images. For every map (5 per image):

* how the host decided its box (`camdeploy/runtime/map_boxes.py`): equal masks, a certificate, or
  left to the graph's own CAM head, by OpenCV and NumPy and by the C extension
  (`camdeploy/native/boxes.c`); and that every box either decides equals the host rule on the
  graph's CAMs;
* the largest disagreement, in units of ``u A`` (``u = 2**-24``, ``A`` the map's largest
  magnitude), between the exact (float64) bilinear upsampling, normalised, and the graph's
  normalised CAM scaled back by its span; and between each float32 host upsampling (OpenCV's, the
  C extension's) and the exact one; beside the margin ``E`` the host uses;
* the host's time per map, from the sum over batches of the fastest of several passes: boxes from
  the low-resolution maps (`map_boxes`) and from the graph's CAMs (`cam_boxes`), per
  implementation, on one thread and on two.

Writes benchmarks/results/MAP_BOXES.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-val")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    from camdeploy import _boxes
    from camdeploy.cache import cached_export
    from camdeploy.runtime.boxes import cam_boxes
    from camdeploy.runtime.images import load_image, prepare
    from camdeploy.runtime.inputs import list_images
    from camdeploy.runtime.map_boxes import UNIT, bracket, decision_margin, map_boxes
    from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from camdeploy.versions import machine_info

    model = cached_export("efficientnet_lite0")
    paths = list_images([str(args.data / "dev/images")])
    runner = OnnxRuntimeRunner(model, box_source="host")
    runner.open()
    size = (runner.spec.input_height, runner.spec.input_width)
    tau = runner.box_threshold
    counts = {"equal masks": 0, "certificate": 0, "left to the graph's head": 0}
    c_undecided = wrong = c_wrong = 0
    graph_worst = host_worst = c_worst = 0.0
    kinds = [(name, native, workers) for name, native in (("OpenCV", False), ("C", True)) for workers in (1, 2)]
    seconds = {(path, *kind): 0.0 for path in ("low", "full") for kind in kinds}
    maps_total = 0
    upsampled = np.empty(size, dtype=np.float32)
    for start in range(0, len(paths), args.batch):
        x = np.stack([prepare(load_image(path), runner.spec)[0] for path in paths[start:start + args.batch]])
        cams = runner.infer(x).cams
        maps = runner._run(x, False, "boxes")["maps"]  # what infer(outputs="boxes") boxes
        assert cams is not None
        reference = cam_boxes(cams, tau, native=False)
        boxes, decided = map_boxes(maps, size, tau, native=False)
        wrong += int((boxes[decided] != reference[decided]).any(axis=-1).sum())
        c_boxes, c_decided = map_boxes(maps, size, tau, native=True)
        c_wrong += int((c_boxes[c_decided] != reference[c_decided]).any(axis=-1).sum())
        c_undecided += int((~c_decided).sum())
        for name, native, workers in kinds:
            seconds["low", name, native, workers] += min(
                _seconds(partial(map_boxes, maps, size, tau, workers, native)) for _ in range(args.passes))
            seconds["full", name, native, workers] += min(
                _seconds(partial(cam_boxes, cams, tau, workers, native)) for _ in range(args.passes))
        for raw, cam, known in zip(maps.reshape(-1, *maps.shape[2:]), cams.reshape(-1, *size), decided.ravel(),
                                   strict=True):
            maps_total += 1
            masks = bracket(raw, size, tau)
            if not known:
                counts["left to the graph's head"] += 1
            elif masks is not None and cv2.countNonZero(masks[0]) == cv2.countNonZero(masks[1]):
                counts["equal masks"] += 1
            else:
                counts["certificate"] += 1
            amplitude = float(np.abs(raw).max())
            exact = cv2.resize(raw.astype(np.float64), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            span = float(exact.max() - exact.min())
            normalised = (exact - exact.min()) / span
            graph_worst = max(graph_worst, float(np.abs(normalised - cam).max()) * span / amplitude / UNIT)
            host = cv2.resize(raw, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            host_worst = max(host_worst, float(np.abs(host - exact).max()) / amplitude / UNIT)
            _boxes.upsample(np.ascontiguousarray(raw), *raw.shape, *size, upsampled)
            c_worst = max(c_worst, float(np.abs(upsampled - exact).max()) / amplitude / UNIT)
    margin = decision_margin(1.0, (7, 7), size, tau) / UNIT
    m: dict[str, Any] = machine_info(runner.threads)
    lines = ["# Boxes from the low-resolution maps, on every dev map", "",
             f"Generated by `python benchmarks/map_boxes.py --batch {args.batch} --passes {args.passes}` on "
             f"{m['cpu']} (ISA {m['isa']['isa']}); ONNX Runtime {m['versions']['onnxruntime']}, OpenCV "
             f"{m['versions']['opencv']}; EfficientNet-Lite0, {len(paths)} dev images, threshold {tau}.", "",
             "## How boxes were decided", "",
             "| how the box was decided | OpenCV and NumPy | C extension |", "|---|---:|---:|"]
    c_decided_total = maps_total - c_undecided
    head = counts["left to the graph's head"]

    def share(count: int) -> str:
        return f"{count} ({100 * count / maps_total:.1f} %)"

    lines += [f"| by the host: equal masks | {share(counts['equal masks'])} | |",
              f"| by the host: a certificate | {share(counts['certificate'])} | |",
              f"| by the host, in all | {share(maps_total - head)} | {share(c_decided_total)} |",
              f"| left to the graph's head | {share(head)} | {share(c_undecided)} |"]
    decided_total = maps_total - counts["left to the graph's head"]
    lines += ["", f"Boxes decided by the host that differ from the host rule on the graph's CAMs: OpenCV and NumPy "
              f"{wrong} of {decided_total}, C extension {c_wrong} of {c_decided_total}.", "",
              f"Largest disagreement with the exact upsampling, in u A: the graph's normalised CAM "
              f"{graph_worst:.1f}, OpenCV's float32 upsampling {host_worst:.1f}, the C extension's "
              f"{c_worst:.1f}; the margin E is {margin:.1f}.", "",
              "## Host time per map", "",
              f"Sum over batches of {args.batch} images of the fastest of {args.passes} passes, in us per map.", "",
              "| implementation | threads | from the low-resolution maps (upsampling included) | "
              "from the graph's CAMs (the graph upsampled them) |", "|---|---:|---:|---:|"]
    for name, native, workers in kinds:
        low = 1e6 * seconds["low", name, native, workers] / maps_total
        full = 1e6 * seconds["full", name, native, workers] / maps_total
        lines.append(f"| {name} | {workers} | {low:.1f} | {full:.1f} |")
    (args.out / "MAP_BOXES.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
