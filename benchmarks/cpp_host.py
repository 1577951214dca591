"""The C++ host (examples/cpp) beside `camdeploy run`: files-to-results throughput and agreement.

    python benchmarks/cpp_host.py [--data ../shared/data/imagenet-val] [--repeats 5] [--threads N]

Scope: image files to results, each command a fresh process, as a user runs it (start-up, model
load, decoding, preprocessing, inference, boxes, JSON): `camdeploy-host MODEL DIR > results.jsonl`
and `camdeploy run MODEL DIR --out OUT`, on the same images (the dev images), with the same threads
and batch size, in turns (the order alternates from repeat to repeat), after one warm-up run of
each. Each repeat also runs both on a single image; (N - 1) / (median time for N - median time for
1) estimates the throughput once loaded. The model is EfficientNet-Lite0 as `camdeploy demo`
exports it (boxes in the graph; camdeploy run boxes on the host on CPU, camdeploy-host takes the
graph's).

Agreement, from the warm-up outputs: top-1 and top-T classes, boxes within 1 px, scores, lines
identical byte for byte; the same for the file without box outputs (the export with its box nodes
cut, as camdeploy run loads it for host boxes), where the C++ host boxes every map itself; and what
each side decodes and prepares (examples/cpp's camdeploy-host-inputs against camdeploy's Python).
Writes benchmarks/results/CPP_HOST.md. The host is built with examples/cpp/build.sh when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUILD = REPO / "examples" / "cpp" / "build"


def timed(command: list[str], stdout: Path | None = None) -> float:
    """Wall seconds of one run of ``command``; fails loudly when it fails."""
    with open(stdout or os.devnull, "wb") as sink:
        start = time.perf_counter()
        done = subprocess.run(command, stdout=sink, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return elapsed


def agreement(host_lines: list[str], python_lines: list[str]) -> dict[str, float]:
    """Per-image and per-map agreement of two results.jsonl files over the same images."""
    ours = [json.loads(line) for line in host_lines]
    theirs = [json.loads(line) for line in python_lines]
    if [r["file"] for r in ours] != [r["file"] for r in theirs]:
        raise SystemExit("the two commands did not write the same files in the same order")
    top1 = top_t = maps = within = 0
    box_diff = score_diff = 0.0
    for a, b in zip(ours, theirs, strict=True):
        top1 += a["classes"][0] == b["classes"][0]
        top_t += a["classes"] == b["classes"]
        for t, label in enumerate(b["classes"]):
            maps += 1
            if a["classes"][t] == label:
                diff = float(np.abs(np.subtract(a["boxes"][t], b["boxes"][t])).max())
                within += diff <= 1.0
                box_diff = max(box_diff, diff)
                score_diff = max(score_diff, abs(a["scores"][t] - b["scores"][t]))
    return {"images": len(theirs), "top1": top1, "top_t": top_t, "maps": maps, "within_1px": within,
            "max_box_diff": box_diff, "max_score_diff": score_diff,
            "identical_lines": sum(x == y for x, y in zip(host_lines, python_lines, strict=True))}


def decode_differences(inputs_tool: Path, model: Path, files: list[Path], work: Path) -> dict[str, float]:
    """What camdeploy-host decodes and prepares against camdeploy's Python, file by file."""
    from camdeploy.metadata import read_spec
    from camdeploy.runtime.images import load_image, prepare

    spec = read_spec(str(model))
    work.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([str(inputs_tool), str(model), str(work), *map(str, files)], capture_output=True,
                          text=True, check=True)
    worst = worst_input = 0.0
    differing_images = differing_values = values = 0
    for line in done.stdout.splitlines():
        k, name = line.split("\t")[:2]
        decoded = np.load(work / f"{k}.decoded.npy")
        expected = load_image(name)
        diff = np.abs(decoded.astype(np.int32) - expected.astype(np.int32))
        worst = max(worst, float(diff.max()))
        differing_images += bool(diff.any())
        differing_values += int(np.count_nonzero(diff))
        values += diff.size
        prepared = np.load(work / f"{k}.input.npy")
        worst_input = max(worst_input, float(np.abs(prepared - prepare(expected, spec)[0]).max()))
        (work / f"{k}.decoded.npy").unlink()
        (work / f"{k}.input.npy").unlink()
    return {"images": len(done.stdout.splitlines()), "max_pixel_diff": worst, "differing_images": differing_images,
            "differing_values": differing_values, "values": values, "max_input_diff": worst_input}


def shell(command: str) -> str:
    done = subprocess.run(command, shell=True, capture_output=True, text=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-val")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="threads of both (default: the CPUs this process may use)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from camdeploy.cache import cached_export
    from camdeploy.graph import without_boxes
    from camdeploy.runtime.inputs import list_images
    from camdeploy.runtime.onnxruntime_runner import usable_cpus
    from camdeploy.versions import machine_info

    threads = args.threads or usable_cpus()
    host = BUILD / "camdeploy-host"
    if not host.is_file():
        subprocess.run(["bash", str(REPO / "examples/cpp/build.sh")], check=True,
                       env={**os.environ, "PYTHON": sys.executable})
    images_dir = args.data / "dev" / "images"
    files = list_images([str(images_dir)])
    model = cached_export("efficientnet_lite0")
    camdeploy = [sys.executable, "-m", "camdeploy"]
    common = ["--threads", str(threads), "--batch-size", str(args.batch_size)]

    with tempfile.TemporaryDirectory(prefix="cpp-host-bench-") as tmp:
        work = Path(tmp)
        import onnx

        host_boxes_model = work / "lite0_host_boxes.onnx"
        onnx.save(without_boxes(onnx.load(str(model))), str(host_boxes_model))
        commands = {
            "host": lambda inputs, name: timed([str(host), str(model), *inputs, *common], work / f"{name}.jsonl"),
            "python": lambda inputs, name: timed([*camdeploy, "run", str(model), *inputs, "--out", str(work / name),
                                                  "--no-progress", "--overwrite", *common]),
        }
        # Warm-up (page cache, libraries), whose outputs give the agreement figures.
        commands["host"]([str(images_dir)], "host-all")
        commands["python"]([str(images_dir)], "python-all")
        one = [str(files[0])]
        times: dict[tuple[str, str], list[float]] = {(who, n): [] for who in commands for n in ("all", "one")}
        for repeat in range(args.repeats):
            order = list(commands) if repeat % 2 == 0 else list(commands)[::-1]
            for who in order:
                times[(who, "all")].append(commands[who]([str(images_dir)], f"{who}-timed"))
            for who in order:
                times[(who, "one")].append(commands[who](one, f"{who}-one"))
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{who} {times[(who, 'all')][-1]:.2f} s" for who in order), flush=True)

        graph_agreement = agreement((work / "host-all.jsonl").read_text().splitlines(),
                                    (work / "python-all" / "results.jsonl").read_text().splitlines())
        timed([str(host), str(host_boxes_model), str(images_dir), *common], work / "host-hostboxes.jsonl")
        timed([*camdeploy, "run", str(host_boxes_model), str(images_dir), "--out", str(work / "python-hostboxes"),
               "--no-progress", *common])
        host_rule_agreement = agreement((work / "host-hostboxes.jsonl").read_text().splitlines(),
                                        (work / "python-hostboxes" / "results.jsonl").read_text().splitlines())
        decoding = decode_differences(BUILD / "camdeploy-host-inputs", model, files, work / "inputs")

    n = len(files)
    rows = {}
    for who in commands:
        all_runs, one_runs = times[(who, "all")], times[(who, "one")]
        median, median_one = statistics.median(all_runs), statistics.median(one_runs)
        rows[who] = {"min": min(all_runs), "median": median, "one": median_one,
                     "rate": n / median, "steady": (n - 1) / (median - median_one)}
    h, p = rows["host"], rows["python"]
    machine = machine_info(threads)
    versions: dict[str, str] = machine["versions"]  # type: ignore[assignment]
    host_version = subprocess.run([str(host), "--version"], capture_output=True, text=True).stdout.strip()
    compiler = shell("c++ --version | head -1")
    libjpeg = shell("dpkg-query -W -f='${Version}' libjpeg62-turbo 2>/dev/null")
    import cv2

    wheel_jpeg = next((line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
                       if line.strip().startswith("JPEG:")), "?")
    isa = shell("grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni' /proc/cpuinfo | sort -u").split()
    command = "python benchmarks/cpp_host.py" + (f" --repeats {args.repeats}" if args.repeats != 5 else "") + \
        (f" --threads {args.threads}" if args.threads else "")

    def agreement_lines(a: dict[str, float], what: str) -> list[str]:
        return [f"| {what} | {a['images']} | {a['top1']} | {a['top_t']} | {a['within_1px']} / {a['maps']} "
                f"({100 * a['within_1px'] / a['maps']:.2f} %) | {a['max_box_diff']:.2f} | {a['max_score_diff']:.1e} | "
                f"{a['identical_lines']} |"]

    lines = [
        "# C++ host beside `camdeploy run`", "",
        f"Generated by `{command}`: {n} dev images, {threads} threads, batch {args.batch_size}, "
        f"{args.repeats} repeats in turns after one warm-up run of each; EfficientNet-Lite0 (224x224, top-5).", "",
        "## Throughput, files to results (each command a fresh process)", "",
        "| command | min s | median s | images/s | 1 image, median s | images/s once loaded |",
        "|---|---:|---:|---:|---:|---:|",
        f"| `camdeploy-host MODEL DIR > results.jsonl` | {h['min']:.2f} | {h['median']:.2f} | {h['rate']:.1f} | "
        f"{h['one']:.2f} | {h['steady']:.1f} |",
        f"| `camdeploy run MODEL DIR --out OUT` | {p['min']:.2f} | {p['median']:.2f} | {p['rate']:.1f} | "
        f"{p['one']:.2f} | {p['steady']:.1f} |",
        f"| C++ host / Python | | | **{h['rate'] / p['rate']:.2f}x** | | **{h['steady'] / p['steady']:.2f}x** |", "",
        "\"Once loaded\" is (N - 1) / (median for N images - median for 1 image): start-up and model load left "
        "out. Every run: " + ", ".join(f"{who} " + " ".join(f"{t:.2f}" for t in times[(who, 'all')])
                                       for who in commands) + " s.", "",
        "## Agreement (same files, same model, same ONNX Runtime library)", "",
        "| model file | images | top-1 identical | top-5 identical | boxes within 1 px (maps) | max box diff px | "
        "max score diff | identical lines |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *agreement_lines(graph_agreement, "boxes in the graph (C++ takes the graph's, Python boxes on the host)"),
        *agreement_lines(host_rule_agreement, "no box outputs (both box every map on the host)"), "",
        "Decoding and preparation (`camdeploy-host-inputs` against `camdeploy.runtime.images`): "
        f"{decoding['images']} images, largest pixel difference after decoding {decoding['max_pixel_diff']:.0f} "
        f"(0..255), {decoding['differing_images']} images and {decoding['differing_values']} of "
        f"{decoding['values']} decoded values differ; largest difference of the prepared model inputs "
        f"{decoding['max_input_diff']:.3g}. The host decodes with Debian's OpenCV (libjpeg-turbo {libjpeg}), "
        f"Python with the opencv-python wheel's ({wheel_jpeg}); other JPEG files or OpenCV builds may decode "
        "differently by a grey level or so.", "",
        "## Machine and versions", "",
        f"- CPU: {machine['cpu']}, {os.cpu_count()} CPUs, {threads} threads used; "
        f"`grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni' /proc/cpuinfo | sort -u`: {', '.join(isa) or 'none'}",
        f"- C++ host: {host_version}; {compiler}; {platform.platform()}",
        "- Python: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "", "The machine is a shared 2-core VM where other jobs run: compare the ratios of one run, not absolute "
        "times across runs.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "CPP_HOST.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out / 'CPP_HOST.md'}")


if __name__ == "__main__":
    main()
