"""What `camdeploy units` costs against inference alone, and what it finds, on EfficientNet-Lite0 and
the 699 dev images (1280 units, 7x7 maps), with their ground-truth boxes as masks.

    python benchmarks/units.py [--data ../shared/data/imagenet-val] [--runs 3] [--no-variants]

Timed in turns, each run on the same images, with one ONNX Runtime session (the CPUs this process
may use), files to results:

* inference: the loader (read, decode, prepare, one batch ahead in a thread) and
  ``runner.infer(features=True, outputs="classes")``, the one pass any analysis needs;
* analysis: ``camdeploy units --boxes`` (both passes of :mod:`camdeploy.units.analysis`, then
  :func:`camdeploy.units.report.write_report`: 1280 montages, the HTML, JSON and CSV files).

The multiple is analysis / inference in the same run. Then the dissection with ``--min-images 3``
and ``--saturated include``, and the precision variants: INT8 (TensorRT target, the default)
calibrated on the even-indexed half of dev and FP16, compared by ``camdeploy units --compare
--saturated include`` on the odd-indexed half. Writes results/UNITS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from reproduce import HERE, REPO, run


def _inference(model: str, images: list[Path]) -> tuple[float, float, float]:
    from camdeploy.backends import RunnerOptions, make_runner
    from camdeploy.runtime.batches import BatchOptions, image_batches

    runner = make_runner("ort", model, RunnerOptions(outputs="classes"))
    with runner:
        start, cpu = time.perf_counter(), time.process_time()
        inside = 0.0
        for batch in image_batches(images, runner.spec, BatchOptions(batch_size=16), on_skip=lambda *_: None):
            began = time.perf_counter()
            runner.infer(batch.tensors, features=True, outputs="classes")
            inside += time.perf_counter() - began
        return time.perf_counter() - start, inside, time.process_time() - cpu


def _analysis(model: str, data: Path, out: Path) -> tuple[float, float, dict]:
    start, cpu = time.perf_counter(), time.process_time()
    run(["units", model, "--boxes", str(data), "--out", str(out), "--overwrite", "--no-progress",
         "--classes", "207,281,817"])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu_seconds, json.loads((out / "units.json").read_text())


def _half_csv(records: list[dict], dev: Path, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "class_index", "x0", "y0", "x1", "y1"])
        for record in records:
            for box in record["boxes"]:
                writer.writerow([str(dev / record["file"]), record["class_index"], *box])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-val")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-variants", action="store_true", help="skip the INT8 and FP16 comparison")
    parser.add_argument("--keep", type=Path, help="copy the reports here (to look at the montages)")
    args = parser.parse_args()
    from camdeploy.cache import cached_export
    from camdeploy.versions import machine_info

    model = str(cached_export("efficientnet_lite0"))
    dev = args.data / "dev"
    records = json.loads((dev / "annotations.json").read_text())["images"]
    images = [dev / r["file"] for r in records]
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        report_dir = Path(scratch) / "units"
        _inference(model, images[:32])  # warm-up: file cache, session
        for i in range(1, args.runs + 1):
            inference, model_only, inference_cpu = _inference(model, images)
            analysis, analysis_cpu, document = _analysis(model, dev, report_dir)
            rows.append({"run": i, "inference": inference, "model": model_only, "analysis": analysis,
                         "stages": document["seconds"], "multiple": analysis / inference,
                         "inference_cpu": inference_cpu, "analysis_cpu": analysis_cpu,
                         "cpu_multiple": analysis_cpu / inference_cpu})
        load_after = os.getloadavg()
        summary = document["summary"]
        units = document["units"]
        frequent = sorted((u for u in units if u["detector"] and u["label_images"] >= 3), key=lambda u: -u["iou"])
        extra = {}
        for name, options in (("strict", ["--min-images", "3"]), ("include", ["--saturated", "include"]),
                              ("include_strict", ["--saturated", "include", "--min-images", "3"])):
            folder = Path(scratch) / name
            run(["units", model, "--boxes", str(dev), "--out", str(folder), "--no-progress", "--classes", "207,281,817",
                 *(["--no-montages"] if name != "include" else []), *options])
            extra[name] = json.loads((folder / "units.json").read_text())
        strict = extra["strict"]["summary"]
        if args.keep:
            import shutil

            for name in ("units", "include"):
                shutil.copytree(Path(scratch) / name, args.keep / name, dirs_exist_ok=True)
        variants_lines: list[str] = []
        if not args.no_variants:
            variants_lines = _variants(model, records, dev, Path(scratch))
    machine = machine_info()
    command = f"python benchmarks/units.py --runs {args.runs}" + (" --no-variants" if args.no_variants else "")
    lines = ["# What the units see: cost and findings of `camdeploy units` (EfficientNet-Lite0, dev images)", "",
             f"Generated by `{command}` on {machine['cpu']} (ISA {machine['isa']['isa']}; /proc/cpuinfo flags "
             f"{', '.join(machine['cpuinfo_flags'])}), {machine['cpus']} CPUs, ONNX Runtime on all of them; "
             + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + f". Load average before "
             f"{load_before[0]:.1f}, after {load_after[0]:.1f} (a shared machine: compare within a run).", "",
             f"{len(images)} images, {summary['units']} units of a 7x7 map, box masks at 112x112, top-10 images, "
             "threshold: the exact top 0.5 % of positions; files to results in both columns.", "",
             "| run | inference (s) | of which model (s) | whole analysis (s) | features pass | tally | report "
             "| multiple | inference CPU (s) | analysis CPU (s) | CPU multiple |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        stages = row["stages"]
        report_s = row["analysis"] - stages["features"] - stages["tally"]
        lines.append(f"| {row['run']} | {row['inference']:.1f} | {row['model']:.1f} | {row['analysis']:.1f} | "
                     f"{stages['features']:.1f} | {stages['tally']:.1f} | {report_s:.1f} | {row['multiple']:.2f}x | "
                     f"{row['inference_cpu']:.1f} | {row['analysis_cpu']:.1f} | {row['cpu_multiple']:.2f}x |")
    multiples = [r["multiple"] for r in rows]
    cpu_multiples = [r["cpu_multiple"] for r in rows]
    lines += ["", f"**The whole analysis takes {statistics.median(multiples):.2f}x the time of inference alone** "
              f"(median of {len(rows)} runs; {min(multiples):.2f}x to {max(multiples):.2f}x) in wall-clock time, and "
              f"{statistics.median(cpu_multiples):.2f}x in process CPU time ({min(cpu_multiples):.2f}x to "
              f"{max(cpu_multiples):.2f}x), which other processes on a shared machine disturb less. The features pass "
              "is inference plus the per-unit statistics and the spill file; the tally reads the spill and the box "
              "masks (in threads, one per CPU); the report is the command's start, 1280 montages and the files.", "",
              "## What it finds (box masks: ground-truth boxes of each image's class, not segmentation)", "",
              f"* {summary['sentence']} (`--min-images 1`, as NetDissect-Lite).",
              f"* {strict['sentence']} with `--min-images 3` (a class must occur in 3 dev images to label a unit).",
              f"* {document['saturated']['units']} of the 1280 units saturate: their threshold is their largest "
              "value, 6.0, the ceiling of the ReLU6 that ends Lite0's trunk (more than 0.5 % of their positions are "
              "at 6), so no position is > T and the reference's rule gives them empty masks and no label. With "
              f"`--saturated include` (>= T for those units): {extra['include']['summary']['sentence']}; with "
              f"`--min-images 3` as well: {extra['include_strict']['summary']['sentence']}.",
              "", "Dev has 1 to 5 images per class (349 of its 503 classes occur once), so most labels rest on one "
              "or two images: a unit that fires on a few images' boxes gets their class. The strongest detectors "
              "whose concept occurs in 3 or more images:", "", "| unit | concept | images | IoU |",
              "|---:|---|---:|---:|"]
    lines += [f"| {u['unit']} | {u['label']} | {u['label_images']} | {u['iou']:.3f} |" for u in frequent[:10]]
    lines += ["", "Class-specific units (largest W[c, k]) and their concepts (default rule; with "
              "`--saturated include`):", ""]
    included = {e["class"]: e for e in extra["include"]["classes"]}
    for entry in document["classes"]:
        described = ", ".join(
            f"{u['unit']} ({u['label']}, IoU {u['iou']:.3f}; {v['label']}, {v['iou']:.3f})"
            for u, v in zip(entry["units"], included[entry["class"]]["units"], strict=True))
        lines.append(f"* {entry['name']} (class {entry['class']}): {described}")
    lines += ["", *variants_lines]
    (args.out / "UNITS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _variants(model: str, records: list[dict], dev: Path, scratch: Path) -> list[str]:
    calibration, evaluation = records[::2], records[1::2]
    folder = scratch / "calibration"
    folder.mkdir()
    for record in calibration:
        (folder / Path(record["file"]).name).symlink_to(dev / record["file"])
    int8, fp16 = scratch / "lite0.int8.onnx", scratch / "lite0.fp16.onnx"
    run(["calibrate", model, "--images", str(folder), "--count", "300", "--output", str(int8), "--no-progress"])
    run(["convert", model, "--fp16", "--output", str(fp16)])
    half = scratch / "odd.csv"
    _half_csv(evaluation, dev, half)
    out = scratch / "compare"
    run(["units", model, "--boxes", str(half), "--out", str(out), "--no-progress", "--no-montages",
         "--saturated", "include", "--compare", str(int8), str(fp16)])
    document = json.loads((out / "units.json").read_text())
    lines = ["## Precision variants (`--compare`)", "",
             f"INT8: `camdeploy calibrate --count 300` (TensorRT target, run here as simulated int8) on images drawn "
             f"from the {len(calibration)} even-indexed dev images; FP16: `camdeploy convert --fp16`. Compared on the "
             f"{len(evaluation)} odd-indexed ones with `--saturated include` (else the 572 saturated units would keep "
             f"their empty label trivially): {document['summary']['sentence']} for fp32. Each model has its own "
             "thresholds and tally; IoU drift is the variant's IoU of the fp32 label minus fp32's, threshold drift is "
             "relative to the fp32 threshold, top-10 overlap the share of fp32's top images among the variant's.", "",
             "| variant | execution | detectors (fp32 / variant) | detectors keeping their label | units keeping "
             "their label | median abs IoU drift | p90 | median abs relative threshold drift | p90 | top-10 "
             "overlap |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in document["compare"]:
        cells = [s["variant"].split(".")[1], s["execution"], f"{s['detectors']} / {s['variant_detectors']}",
                 str(s["detectors_kept"]), f"{s['labels_kept']} of {s['units']}",
                 f"{s['iou_drift']['median_abs']:.4f}", f"{s['iou_drift']['p90_abs']:.4f}",
                 f"{s['relative_threshold_drift']['median_abs']:.4f}",
                 f"{s['relative_threshold_drift']['p90_abs']:.4f}",
                 f"{s['top_overlap_mean']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
