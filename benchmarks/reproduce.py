"""Regenerate benchmarks/results/: latency (bench) and localization (eval) of EfficientNet-Lite0.

    python benchmarks/reproduce.py [--data ../shared/data/imagenet-val] [--quick]

Everything is measured in this one run, on this machine: `camdeploy bench` on the dev images
(the PyTorch reference, ONNX Runtime with and without the CAM head, torchcam when installed),
`camdeploy eval --compare torch ort` on dev in both box modes, and the same evaluation on the
holdout images, which are only reported, never used to choose anything. The script writes the
JSON and PNG files of each command and RESULTS.md, whose tables the README quotes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

from camdeploy.cli import main as camdeploy

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
METRICS = [("top1_cls_err", "top-1 cls err"), ("top5_cls_err", "top-5 cls err"), ("top1_loc_err", "top-1 loc err"),
           ("top5_loc_err", "top-5 loc err"), ("gt_known_loc_tau", "GT-known loc (tau {tau})"),
           ("maxboxacc_v2_camdeploy", "MaxBoxAccV2 (camdeploy)")]
"""The default protocol's metrics (``camdeploy eval``), with the labels of camdeploy's table."""


def run(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = camdeploy(args)
    print(out.getvalue())
    if code:
        raise SystemExit(f"camdeploy {' '.join(args)} failed with {code}")
    return out.getvalue()


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value else "-"


def bench_tables(report: dict) -> list[str]:
    """Every row, then the targets of issue #14, each from like figures (minimum, median, CPU time)."""
    rows = report["rows"]
    lines = ["| backend | scope | batch | min ms | median ms | p90 ms | CPU ms/image | images/s | vs torch: median | "
             "min | CPU |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cpu = "-" if r["cpu_ms_per_image"] is None else f"{r['cpu_ms_per_image']:.2f}"
        lines.append(f"| {r['backend']} | {r['scope']} | {r['batch']} | {r['min_ms']:.1f} | {r['median_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {cpu} | {r['images_per_second']:.1f} | {_ratio(r['speedup_vs_torch'])} | "
                     f"{_ratio(r['speedup_min_vs_torch'])} | {_ratio(r['speedup_cpu_vs_torch'])} |")
    find = {(r["backend"], r["scope"], r["batch"]): r for r in rows}
    lines += ["", "| target (issue #14) | batch | from minimums | from medians | from CPU time | met (all three) |",
              "|---|---:|---:|---:|---:|---|"]
    for batch in sorted({r["batch"] for r in rows}):
        full, base = find.get(("ort", "model", batch)), find.get(("ort [classes only]", "model", batch))
        run_path, e2e = find.get(("ort [no maps]", "model", batch)), find.get(("ort", "end-to-end", batch))
        if full:
            speedups = [full["speedup_min_vs_torch"], full["speedup_vs_torch"], full["speedup_cpu_vs_torch"]]
            lines.append(f"| ONNX Runtime model scope >= 5x the PyTorch reference | {batch} | "
                         + " | ".join(_ratio(v) for v in speedups)
                         + f" | {'yes' if all(v and v >= 5 for v in speedups) else 'no'} |")
        for path, what in ((full, "`ort`: every output"), (run_path, "`ort [no maps]`: run's path")):
            if path and base:
                costs = [path[k] / base[k] - 1 for k in ("min_ms", "median_ms", "cpu_ms")]
                bound = 0.15 if batch == 1 else 0.10
                lines.append(f"| CAMs + boxes <= +{100 * bound:.0f} % over the classifier alone ({what}, over "
                             f"`ort [classes only]`) | {batch} | " + " | ".join(f"{100 * c:+.1f} %" for c in costs)
                             + f" | {'yes' if all(c <= bound for c in costs) else 'no'} |")
        if run_path and e2e:
            shares = [run_path[k] / e2e[k] for k in ("min_ms", "median_ms")]
            shares.append(run_path["cpu_ms"] / e2e["cpu_ms"] if e2e["cpu_ms"] else float("nan"))
            lines.append(f"| files to results >= 85 % of model-scope throughput (`ort [no maps]`) | {batch} | "
                         + " | ".join(f"{100 * v:.0f} %" for v in shares)
                         + f" | {'yes' if all(v >= 0.85 for v in shares) else 'no'} |")
    return lines


def graph_box_lines(data: Path, model: str, limit: int | None) -> list[str]:
    """The graph's own boxes (raw output, no host fallback) against the host rule on the graph's CAMs."""
    import numpy as np

    from camdeploy.eval.metrics import paired_iou
    from camdeploy.metadata import read_spec
    from camdeploy.runtime.boxes import cam_boxes
    from camdeploy.runtime.images import load_image, prepare
    from camdeploy.runtime.inputs import list_images
    from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

    spec = read_spec(model)
    lines = ["| split | images | maps | boxes equal | top-1 boxes equal | top-1 IoU >= 0.99 | flagged not exact |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for split in ("dev", "holdout"):
        paths = list_images([str(data / split / "images")])[:limit]
        equal = top1 = iou_ok = flagged = maps = 0
        with OnnxRuntimeRunner(model, box_source="graph") as runner:
            for start in range(0, len(paths), 32):
                x = np.stack([prepare(load_image(p), spec)[0] for p in paths[start:start + 32]])
                raw = runner.run_outputs(["cams", "boxes", "boxes_exact"], x)
                cams, boxes, exact = raw["cams"], raw["boxes"], raw["boxes_exact"]
                host = cam_boxes(cams, spec.box_threshold)
                same = (boxes == host).all(axis=-1)
                equal, top1, flagged, maps = (equal + int(same.sum()), top1 + int(same[:, 0].sum()),
                                              flagged + int((~exact).sum()), maps + same.size)
                iou_ok += int((paired_iou(boxes[:, 0], host[:, 0]) >= 0.99).sum())
        lines.append(f"| {split} | {len(paths)} | {maps} | {equal} ({100 * equal / maps:.2f} %) | {top1} | "
                     f"{100 * iou_ok / len(paths):.2f} % | {flagged} |")
    return lines


def engine_lines(model: str, out: Path) -> list[str]:
    """Build the TensorRT(-RTX) engine of the exported graph (with its box nodes), without a GPU."""
    import time

    from camdeploy.runtime.tensorrt_runner import EngineOptions, build_engine

    start = time.perf_counter()
    built = build_engine(model, EngineOptions(batch=(1, 8, 32)), cache_folder=out / "engines")
    seconds = time.perf_counter() - start
    size = built.path.stat().st_size / 2**20
    built.path.unlink()  # the plan is not a result to keep
    return [f"- `camdeploy build` of the exported Lite0 (boxes in the graph) with {built.module} {built.version}, "
            f"batch profile 1,8,32: engine of {size:.1f} MiB built in {seconds:.1f} s; GPU at build time: {built.gpu}."]


def eval_table(reports: dict[str, dict]) -> list[str]:
    names = list(reports)
    lines = ["| metric (%) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    taus = "/".join(sorted({f"{r['metrics']['box_threshold']:g}" for r in reports.values()}))
    for key, label in METRICS:
        label = label.format(tau=taus)
        cells = []
        for name in names:
            value = reports[name]["metrics"][key]
            cells.append("-" if value is None else f"{100 * value:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def agreement_lines(report: dict) -> list[str]:
    lines = []
    for name, a in report["agreement"].items():
        box = a["top1_box_iou"]
        if not box["n"]:
            lines.append(f"- {name} against {report['metrics']['backend']}: top-1 never identical")
            continue
        deltas = ", ".join(f"{k} {100 * v:+.3f}" for k, v in a["metric_deltas"].items() if v is not None)
        lines.append(f"- {name} against {report['metrics']['backend']}: top-1 identical on "
                     f"{100 * a['top1_identical']:.2f} % of images, top-5 sets identical on "
                     f"{100 * a['top5_identical']:.2f} %, CAM max |diff| {a['cam_max_abs_diff']:.1e} "
                     f"(mean {a['cam_mean_abs_diff']:.1e}), top-1 box IoU >= 0.99 on "
                     f"{100 * box['fraction_ge_0.99']:.2f} % (min {box['min']:.4f}); metric deltas in points: {deltas}")
    return lines


PRECISION_VARIANTS = {f"int8-{target}-{method}": ["--target", target, "--method", method]
                      for target in ("tensorrt", "cpu") for method in ("minmax", "entropy", "percentile")}
PRECISION_VARIANTS["int8-cpu-minmax-7bit"] = ["--target", "cpu", "--method", "minmax", "--reduce-range"]
TIMED_VARIANTS = ("int8-tensorrt-minmax", "int8-cpu-minmax", "int8-cpu-minmax-7bit", "fp16")
ISA_VARIANTS = ("int8-tensorrt-minmax", "int8-cpu-minmax", "int8-cpu-minmax-7bit")


def precision(data: Path, model: str, out: Path, quick: bool) -> list[str]:
    """INT8 (both targets, three methods, and 7-bit weights) and FP16 against fp32: calibrate on the
    even-indexed half of dev, evaluate on the odd-indexed half, time the graphs side by side, and
    check the agreement of INT8 with fp32 on this CPU and, through qemu, on an AVX2 CPU without VNNI."""
    import csv
    import shutil
    import subprocess
    import sys
    import tempfile

    from camdeploy.runtime.cpu import cpu_features, cpuinfo_flags

    records = json.loads((data / "dev/annotations.json").read_text())["images"]
    calibration, evaluation = records[::2], records[1::2]
    if quick:
        evaluation = evaluation[:64]
    variants = {name: out / f"lite0.{name}.onnx" for name in (*PRECISION_VARIANTS, "fp16")}
    isa_runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        listing, held_out = Path(scratch) / "calibration", Path(scratch) / "evaluation"
        for folder, chosen in ((listing, calibration), (held_out, evaluation)):
            folder.mkdir()
            for record in chosen:
                (folder / Path(record["file"]).name).symlink_to(data / "dev" / record["file"])
        eval_csv = Path(scratch) / "eval.csv"
        with open(eval_csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "class_index", "x0", "y0", "x1", "y1"])
            for record in evaluation:
                for box in record["boxes"]:
                    writer.writerow([str(data / "dev" / record["file"]), record["class_index"], *box])
        verified = {}
        for name, options in PRECISION_VARIANTS.items():
            printed = run(["calibrate", model, "--images", str(listing), "--count", "300", "--output",
                           str(variants[name]), *options, "--no-progress"])
            verified[name] = next(line for line in printed.splitlines() if line.startswith("verified:"))
        run(["convert", model, "--fp16", "--output", str(variants["fp16"])])
        run(["eval", "--data", str(eval_csv), "--onnx", model, "--compare", "torch", "ort",
             *map(str, variants.values()), "--json", str(out / "eval_dev_precision.json"), "--no-progress"])
        run(["bench", model, *(str(variants[v]) for v in TIMED_VARIANTS), "--images", str(data / "dev/images"),
             "--batch-sizes", "1,16", "--scopes", "model", "--no-torchcam",
             *(["--repeats", "5"] if quick else ["--repeats", "20"]), "--json", str(out / "bench_precision.json")])
        isa_command = [sys.executable, str(HERE / "int8_isa.py"), model, *(str(variants[v]) for v in ISA_VARIANTS),
                       "--images", str(held_out), "--count", "24" if quick else "100"]
        subprocess.run([*isa_command, "--json", str(out / "int8_isa_native.json")], check=True, cwd=REPO)
        isa_runs["native"] = json.loads((out / "int8_isa_native.json").read_text())
        qemu = shutil.which("qemu-x86_64")
        if qemu:
            subprocess.run([qemu, "-cpu", "Haswell", *isa_command, "--json", str(out / "int8_isa_qemu_haswell.json")],
                           check=True, cwd=REPO, stderr=subprocess.DEVNULL)
            isa_runs["qemu -cpu Haswell"] = json.loads((out / "int8_isa_qemu_haswell.json").read_text())
    for path in variants.values():
        path.unlink()
    report = json.loads((out / "eval_dev_precision.json").read_text())
    bench = json.loads((out / "bench_precision.json").read_text())
    m = bench["machine"]
    features = cpu_features()
    lines = [f"Generated by `python benchmarks/reproduce.py --only precision{' --quick' if quick else ''}` on "
             f"{m['cpu']} ({m['threads']} threads); CPU flags in /proc/cpuinfo: {', '.join(cpuinfo_flags()) or '-'}; "
             f"ISA read from CPUID: {features.isa} (VNNI: {'yes' if features.avx512_vnni else 'no'}); "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".", "",
             f"## Accuracy (dev: calibrated on images drawn from the {len(calibration)} even-indexed ones, "
             f"evaluated on {report['metrics']['n_images']} odd-indexed ones)", "",
             "Each INT8 variant is `camdeploy calibrate --count 300` (300 requested; 280 for ranges and 70 "
             "held back for its verification, as the draw holds back at most a fifth) with the options in its "
             "name; `7bit` is `--reduce-range`. On this CPU, every backend ran as listed under *execution*.", "",
             f"| variant | execution | top-1 cls err | GT-known loc (tau {report['metrics']['box_threshold']:g}) | "
             "MaxBoxAccV2 (camdeploy) | "
             "delta top-1 cls err | delta GT-known | delta MaxBoxAccV2 | within bounds |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    base = report["backends"]["ort"]
    for name, backend in report["backends"].items():
        deltas = [backend[k] - base[k] for k in ("top1_cls_err", "gt_known_loc_tau", "maxboxacc_v2_camdeploy")]
        ok = deltas[0] <= 0.01 and deltas[1] >= -0.01 and deltas[2] >= -0.01
        lines.append(f"| {name.removeprefix('lite0.').removesuffix('.onnx')} | {backend['execution']} | "
                     f"{100 * backend['top1_cls_err']:.2f} | {100 * backend['gt_known_loc_tau']:.2f} | "
                     f"{100 * backend['maxboxacc_v2_camdeploy']:.2f} | {100 * deltas[0]:+.2f} | "
                     f"{100 * deltas[1]:+.2f} | {100 * deltas[2]:+.2f} | {'yes' if ok else 'NO'} |")
    lines += ["", "Bounds (against fp32 `ort`): top-1 classification error at most 1 point worse, GT-known "
              "localization and MaxBoxAccV2 at most 1 point worse.", "", "Verification printed by `calibrate`:", ""]
    lines += [f"- {name}: {line.removeprefix('verified: ')}" for name, line in verified.items()]
    lines += ["", *agreement_lines(report), "",
              "## INT8 on CPUs without VNNI", "",
              "`benchmarks/int8_isa.py` compares each INT8 model with fp32 (top-1 class, and top-1 box where the "
              "classes agree) on the first images of the evaluation half, once with the session camdeploy builds "
              "and once with ONNX Runtime's default session options. Under `qemu-x86_64 -cpu Haswell` ONNX Runtime "
              "sees an AVX2 CPU without AVX512 or VNNI and picks its kernels for it; only accuracy is meaningful "
              "there, not speed.", "",
              "| CPU | model | camdeploy execution | top-1 agreement | mean top-1 box IoU | ONNX Runtime defaults: "
              "top-1 agreement | box IoU |", "|---|---|---|---:|---:|---:|---:|"]
    for where, run_ in isa_runs.items():
        for name, entry in run_["models"].items():
            mine, plain = entry["camdeploy"], entry["onnxruntime_defaults"]
            lines.append(f"| {where} ({run_['cpu']['isa']}, {run_['images']} images) | "
                         f"{name.removeprefix('lite0.').removesuffix('.onnx')} | {mine['execution']} | "
                         f"{100 * mine['top1_agreement']:.1f} % | {mine['mean_top1_box_iou']:.3f} | "
                         f"{100 * plain['top1_agreement']:.1f} % | {plain['mean_top1_box_iou']:.3f} |")
    if len(isa_runs) == 1:
        lines.append("| AVX2 (qemu) | - | not measured: qemu-x86_64 is not installed | | | | |")
    lines += ["", f"## Speed on this CPU ({features.isa})", "",
              f"`camdeploy bench`, model scope (graph plus host boxes), ONNX Runtime CPU, {m['threads']} threads, "
              "rows timed in turns; ratios are of medians and of minimums measured in the same run. They hold for "
              f"{features.isa} only: on a CPU without VNNI, 8-bit CPU-target models run U8U8 kernels (exact, slower) "
              "and 7-bit ones U8S8; neither could be timed here.", "",
              "| graph | execution | batch | ms/image (median) | vs fp32 (median) | vs fp32 (min) |",
              "|---|---|---:|---:|---:|---:|"]
    fp32 = "ort:" + Path(model).name
    medians = {r["batch"]: r["median_ms"] for r in bench["rows"] if r["backend"] == fp32}
    minimums = {r["batch"]: r["min_ms"] for r in bench["rows"] if r["backend"] == fp32}
    for r in bench["rows"]:
        if r["backend"].startswith("ort:"):
            lines.append(f"| {r['backend'][4:].removeprefix('lite0.').removesuffix('.onnx')} | {r['execution']} | "
                         f"{r['batch']} | {r['ms_per_image']:.2f} | {medians[r['batch']] / r['median_ms']:.2f}x | "
                         f"{minimums[r['batch']] / r['min_ms']:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-val")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and 64 images: a smoke run")
    parser.add_argument("--only", choices=("precision",), help="regenerate only this part (PRECISION.md)")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    from camdeploy.cache import cached_export

    model = str(cached_export("efficientnet_lite0"))
    if args.only == "precision":
        lines = precision(args.data, model, out, args.quick)
        (out / "PRECISION.md").write_text("\n".join(["# camdeploy precision variants", "", *lines]) + "\n")
        print(f"wrote {out / 'PRECISION.md'}")
        return
    limit = ["--limit", "64"] if args.quick else []
    repeats = ["--repeats", "5", "--e2e-repeats", "2"] if args.quick else ["--repeats", "20", "--e2e-repeats", "5"]
    run(["bench", model, "--images", str(args.data / "dev/images"), "--batch-sizes", "1,16", *repeats,
         "--e2e-images", "96", "--json", str(out / "bench.json"), "--plot", str(out / "bench.png")])
    evals = {}
    for split in ("dev", "holdout"):
        for mode in ("paper", "ilsvrc"):
            name = f"eval_{split}_{mode}"
            # the box-accuracy curve does not depend on the localization rule: one plot per split
            plot = ["--plot", str(out / f"eval_{split}.png")] if mode == "paper" else []
            run(["eval", "--data", str(args.data / split), "--onnx", model, "--compare", "torch", "ort",
                 "--loc-rule", mode, "--json", str(out / f"{name}.json"), *plot, "--no-progress", *limit])
            evals[name] = json.loads((out / f"{name}.json").read_text())

    boxes = graph_box_lines(args.data, model, 64 if args.quick else None)
    try:
        engines = engine_lines(model, out)
    except Exception as exc:  # no TensorRT module installed: say so in the results
        engines = [f"- no engine built: {exc}"]
    bench = json.loads((out / "bench.json").read_text())
    m = bench["machine"]
    lines = ["# camdeploy results", "",
             f"Generated by `python benchmarks/reproduce.py{' --quick' if args.quick else ''}` on {m['cpu']} "
             f"(ISA {m['isa']['isa']}; /proc/cpuinfo flags {', '.join(m['cpuinfo_flags'])}), {m['threads']} threads, "
             f"{m['platform']}; load average before {bench['options']['load_average_before']}, after "
             f"{bench['options']['load_average_after']}; versions: "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".", "",
             "## Latency (EfficientNet-Lite0, 224x224, dev images)", "", *bench_tables(bench), "",
             "Scopes: `model` = a preprocessed batch to the outputs; `end-to-end` = image files to results.jsonl "
             "(96 files per run). `ort` = every output, boxes by the host rule (the CPU default); `ort [no maps]` = "
             "classes, scores and boxes without the maps (what `camdeploy run` asks for: the graph stops at the "
             "low-resolution maps and the host boxes them); `ort [no maps, full-res]` = the same boxes found on "
             "the graph's full-resolution CAMs; `ort [classes only]` = "
             "the graph cut before the CAM head; `ort [graph boxes]` = boxes from the graph. Model-scope rows of one "
             "batch size were timed in turns, repeat by repeat. `python benchmarks/box_cost.py` repeats the cost "
             "comparison several times (BOX_COST.md): trust its spread over one run's figures.", "",
             "## Boxes in the graph against the host rule", "", *boxes, "",
             "Raw graph output (`boxes`, `boxes_exact`) against `cam_boxes` on the same run's CAMs, all T=5 maps "
             "per image; the runtime would box any flagged map on the host.", "",
             "## TensorRT", "", *engines, ""]
    for split in ("dev", "holdout"):
        lines += [f"## Localization on {split} ({evals[f'eval_{split}_paper']['metrics']['n_images']} images)", ""]
        table = {f"{mode} / {b}": {"metrics": evals[f"eval_{split}_{mode}"]["backends"][b]}
                 for mode in ("paper", "ilsvrc") for b in ("torch", "ort")}
        lines += [*eval_table(table), ""]
        lines += [*agreement_lines(evals[f"eval_{split}_paper"]), ""]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
