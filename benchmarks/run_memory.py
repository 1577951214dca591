"""Peak memory and throughput of `camdeploy run`: 10,000 images, and huge images.

    python benchmarks/run_memory.py [--count 10000]

Every case is a fresh `camdeploy run` process (EfficientNet-Lite0, ONNX Runtime CPU, batch 8 unless
said); its peak resident memory is the kernel's own figure for it (``ru_maxrss`` from
``os.wait4``). Cases:

* a soak of ``--count`` files (links to the 699 dev images, cycled): throughput, and the resident
  memory sampled as the results grow (it must not grow with the number of images);
* one 12000x12000 JPEG, then 8 of them in one batch, then the 8 with ``--overlays``: such a JPEG is
  decoded at 1/8 of its size by libjpeg (see camdeploy/runtime/images.py);
* one 12000x12000 PNG (no reduced decoding for PNG): left out under the default ``--max-pixels``,
  then decoded whole with the limit raised.

The huge images are a dev photo scaled up with mild noise. The script also measures what reduced
decoding changes: the prepared tensor against a whole decode of the same JPEG (in pixel levels), and
the model's classes and boxes. It fails (exit 1) when a bound below is exceeded, and writes
benchmarks/results/RUN_MEMORY.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIDE = 12000
BOUND_OVER_SMALL_MIB = {"one huge JPEG": 150, "8 huge JPEGs": 250, "8 huge JPEGs, overlays": 300,
                        "huge PNG, left out": 150}
"""Peak RSS allowed above the run of one small image, in MiB. A whole 12000x12000 RGB image alone
is 412 MiB: these bounds hold only if nothing that large is ever decoded."""


# The run's peak RSS is read by a small go-between process: a child forked from this (large) script
# would count this script's pages in its own high-water mark until it execs.
GO_BETWEEN = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
              "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
              "open(sys.argv[1], 'w').write(str(peak)); sys.exit(code)")


def _child_rss_mib(parent: int) -> float | None:
    try:
        child = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()[0]
        text = Path(f"/proc/{child}/status").read_text()
        return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS:")) / 1024
    except (OSError, IndexError, StopIteration):
        return None


def run(model: Path, inputs: list[str], out: Path, *options: str, sample: Path | None = None
        ) -> tuple[int, float, float, list[tuple[int, float]]]:
    """(exit status, seconds, peak RSS MiB, [(results written, RSS MiB)] when ``sample``)."""
    command = [sys.executable, "-m", "camdeploy", "run", str(model), *inputs, "--out", str(out), "--no-progress",
               "--overwrite", *options]
    peak_file = out.parent / "peak-rss.txt"
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", GO_BETWEEN, str(peak_file), *command], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples: list[tuple[int, float]] = []
    while sample is not None and process.poll() is None:
        rss = _child_rss_mib(process.pid)
        if rss is not None:
            samples.append((sample.read_bytes().count(b"\n") if sample.is_file() else 0, rss))
        time.sleep(0.2)
    _, err = process.communicate()
    seconds = time.perf_counter() - start
    if process.returncode not in (0, 1, 3):  # 1: the huge PNG left out, nothing else to do
        print(err.decode(), file=sys.stderr)
    return process.returncode, seconds, int(peak_file.read_text()) / 1024, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-val")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--count", type=int, default=10000)
    args = parser.parse_args()
    from camdeploy.cache import cached_export
    from camdeploy.metadata import read_spec
    from camdeploy.runtime.images import DecodeOptions, decode, prepare_loaded
    from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from camdeploy.versions import machine_info

    model = cached_export("efficientnet_lite0")
    spec = read_spec(model)
    sources = sorted((args.data / "dev" / "images").iterdir())
    failures: list[str] = []
    lines = ["# `camdeploy run`: memory and throughput", ""]
    with tempfile.TemporaryDirectory(prefix="camdeploy-memory-") as scratch:
        work = Path(scratch)
        # Soak.
        soak = work / "soak"
        soak.mkdir()
        for i in range(args.count):
            (soak / f"{i:06d}.jpg").symlink_to(sources[i % len(sources)])
        code, seconds, peak, samples = run(model, [str(soak)], work / "soak-out", sample=work / "soak-out" /
                                           "results.jsonl")
        marks = {}
        for mark in (1000, args.count // 2, args.count - 500):
            marks[mark] = next((rss for done, rss in samples if done >= mark), float("nan"))
        growth = marks[args.count - 500] / marks[1000] - 1
        lines += ["## Many images", "",
                  f"{args.count} files (links to the 699 dev images, cycled), batch 8: exit status {code}, "
                  f"{seconds:.1f} s with start-up, {args.count / seconds:.1f} images/s; peak RSS {peak:.0f} MiB; "
                  f"RSS after {', '.join(f'{k} results {v:.0f} MiB' for k, v in marks.items())} "
                  f"({100 * growth:+.1f} % from the first mark to the last).", ""]
        if code != 0 or growth >= 0.05:
            failures.append(f"soak: exit {code}, RSS growth {100 * growth:+.1f} % (bound +5 %)")

        # Huge images.
        photo = cv2.imread(str(sources[0]))
        rng = np.random.default_rng(0)
        big = cv2.resize(photo, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
        big = np.clip(big.astype(np.int16) + rng.integers(-6, 7, big.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        jpeg, png = work / "huge.jpg", work / "huge.png"
        cv2.imwrite(str(jpeg), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(str(png), big, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        del big
        eight = work / "eight"
        eight.mkdir()
        for i in range(8):
            (eight / f"huge{i}.jpg").symlink_to(jpeg)
        small = work / "small"
        small.mkdir()
        (small / "one.jpg").symlink_to(sources[0])
        cases = {"one small image": ([str(small)], ()),
                 "one huge JPEG": ([str(jpeg)], ()),
                 "8 huge JPEGs": ([str(eight)], ()),
                 "8 huge JPEGs, overlays": ([str(eight)], ("--overlays",)),
                 "huge PNG, left out": ([str(png)], ()),
                 "huge PNG, --max-pixels 200000000": ([str(png)], ("--max-pixels", "200000000"))}
        measured = {}
        for name, (inputs, options) in cases.items():
            code, seconds, peak, _ = run(model, inputs, work / "out", *options)
            measured[name] = (code, seconds, peak)
        floor = measured["one small image"][2]
        lines += ["## Huge images", "",
                  f"A {SIDE}x{SIDE} photo (a dev image scaled up, mild noise): JPEG {jpeg.stat().st_size / 2**20:.0f} "
                  f"MiB, PNG {png.stat().st_size / 2**20:.0f} MiB; a whole decode of it is "
                  f"{SIDE * SIDE * 3 / 2**20:.0f} MiB of pixels.", "",
                  "| case | exit status | seconds | peak RSS MiB | over one small image | bound |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, (code, seconds, peak) in measured.items():
            bound = BOUND_OVER_SMALL_MIB.get(name)
            lines.append(f"| {name} | {code} | {seconds:.1f} | {peak:.0f} | {peak - floor:+.0f} | "
                         f"{'-' if bound is None else f'+{bound}'} |")
            if bound is not None and peak - floor > bound:
                failures.append(f"{name}: peak RSS {peak - floor:+.0f} MiB over one small image (bound +{bound})")

        # What reduced decoding changes.
        data = jpeg.read_bytes()
        reduced = decode(data, "huge", DecodeOptions(target=(spec.input_height, spec.input_width)))
        whole = decode(data, "huge", DecodeOptions(max_pixels=SIDE * SIDE))
        x_reduced, frame_reduced = prepare_loaded(reduced, spec)
        x_whole, frame_whole = prepare_loaded(whole, spec)
        del whole
        levels = np.abs(x_reduced - x_whole) / np.asarray(spec.normalization.scale, np.float32)[:, None, None]
        with OnnxRuntimeRunner(model) as runner:
            a = runner.infer_images(x_reduced[None], [frame_reduced], outputs="boxes")
            b = runner.infer_images(x_whole[None], [frame_whole], outputs="boxes")
        from camdeploy.eval.metrics import paired_iou

        ious = paired_iou(a.boxes[0], b.boxes[0])  # type: ignore[index]
        lines += ["", "## What reduced decoding changes", "",
                  f"The {spec.input_height}x{spec.input_width} input prepared from the JPEG decoded at "
                  f"1/{whole_factor(reduced)} against a whole decode: largest difference {levels.max():.1f} pixel "
                  f"levels (of 255), mean {levels.mean():.2f}. Lite0's top-5 classes "
                  f"{'identical' if (a.classes == b.classes).all() else 'different'} "
                  f"({a.classes[0].tolist()} against {b.classes[0].tolist()}); box IoU per class "
                  f"{', '.join(f'{v:.3f}' for v in ious)} (boxes in the {SIDE}x{SIDE} frame).", ""]
    machine: dict = machine_info()
    lines[1:1] = [f"Generated by `python benchmarks/run_memory.py --count {args.count}` on {machine['cpu']} "
                  f"(ISA {machine['isa']['isa']}; flags {', '.join(machine['cpuinfo_flags'])}), "
                  f"{machine['cpus']} CPUs; "
                  + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
                  + ". Peak RSS is the kernel's maximum resident set of each `camdeploy run` process.", ""]
    lines += ["Bounds checked: " + ("all met." if not failures else "; ".join(failures))]
    (args.out / "RUN_MEMORY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


def whole_factor(loaded) -> int:
    return round(loaded.width / loaded.pixels.shape[1])


if __name__ == "__main__":
    sys.exit(main())
