"""``camdeploy bench``: latency of every backend, side by side with the PyTorch reference.

Scopes:

* ``model``: a preprocessed batch ``[B, 3, S, S]`` in, every output including boxes out
  (``Runner.infer``). ``ort`` computes boxes on the host (OpenCV), ``ort-graph-boxes`` takes them
  from the graph (when the file has them); ``ort-backbone`` is the same graph cut at ``logits``
  (no CAM head, no boxes), to show what CAM and boxes cost. Model-scope rows of one batch size
  take turns repeat by repeat, so that their ratios survive a noisy machine.
* ``end-to-end``: image files in, ``results.jsonl`` out (``camdeploy run``'s path: read, resize,
  normalise, infer, boxes, write); latency per image is the run's time divided by its images.

Each measurement warms up, then repeats; rows report the median, p90 and p99 of the repeats and
the speed-up of the median against the PyTorch reference at the same scope and batch size.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import camdeploy
from camdeploy.bench.timing import LatencyStats, time_calls, time_interleaved
from camdeploy.errors import CamdeployError
from camdeploy.runtime.images import load_image, prepare
from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner, usable_cpus
from camdeploy.runtime.pipeline import RunOptions, run_files
from camdeploy.runtime.runner import Runner

SCOPES = ("model", "end-to-end")
REFERENCE = "torch"


@dataclass(frozen=True)
class BenchOptions:
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    scopes: tuple[str, ...] = SCOPES
    warmup: int = 3
    repeats: int = 20
    e2e_images: int = 32
    """Images per end-to-end run (cycled from the given files)."""
    e2e_repeats: int = 5
    threads: int | None = None
    torchcam: bool = True
    """Add torchcam's hook-based CAM on the same model as a peer row, when it is installed."""
    tensorrt: bool = False
    """Add the TensorRT runner (needs an NVIDIA GPU): rows ``tensorrt`` (host clock, with copies and
    boxes) and ``tensorrt-engine`` (CUDA events around the engine alone)."""
    rtx: bool = False
    """With ``tensorrt``: TensorRT for RTX."""
    int8: str = "auto"
    """How ONNX Runtime runs INT8 models (:mod:`camdeploy.runtime.int8`)."""


@dataclass
class BenchRow:
    backend: str
    scope: str
    stats: LatencyStats
    speedup: float | None = None
    """Reference median / this median, same scope and batch."""
    execution: str = ""
    """How the backend ran the model (``fp32``, ``simulated int8``, ``int8 kernels (U8S8)``, ...)."""

    def as_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "scope": self.scope, "execution": self.execution, **self.stats.as_dict(),
                "speedup_vs_torch": self.speedup}


@dataclass
class BenchReport:
    rows: list[BenchRow]
    machine: dict[str, object]
    options: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"machine": self.machine, "options": self.options, "rows": [r.as_dict() for r in self.rows]}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, object]:
    """CPU, threads and library versions, for every report."""
    import cv2
    import onnxruntime

    versions = {"camdeploy": camdeploy.__version__, "python": platform.python_version(),
                "numpy": np.__version__, "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__}
    if "torch" in sys.modules:
        versions["torch"] = sys.modules["torch"].__version__
    from camdeploy.runtime.cpu import cpu_features, cpuinfo_flags

    return {"cpu": _cpu_name(), "cpus": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "isa": cpu_features().as_dict(), "cpuinfo_flags": cpuinfo_flags(), "versions": versions}


def backbone_only(path: Path, out_dir: Path) -> Path:
    """The exported graph cut at ``logits``: the backbone without CAM head."""
    import onnx
    from onnx.utils import Extractor

    target = out_dir / f"{path.stem}.backbone.onnx"
    onnx.save(Extractor(onnx.load(str(path))).extract_model(["images"], ["logits"]), str(target))
    return target


def _torchcam_call(model: Any, topk: int, threshold: float, size: tuple[int, int]
                   ) -> Callable[[np.ndarray], object] | None:
    """torchcam's CAM pipeline on the same model: hooks, per-class maps, upsampling, our boxes."""
    try:
        import torch
        from torch.nn import functional as F
        from torchcam.methods import CAM
    except ImportError:
        return None
    from camdeploy.runtime.boxes import cam_boxes

    try:
        extractor = CAM(model, target_layer="_head_act", fc_layer="_fc")
    except Exception:  # a model torchcam cannot hook: leave the peer row out
        return None

    def call(x: np.ndarray) -> object:
        with torch.inference_mode():
            logits = model(torch.from_numpy(x))  # type: ignore[operator]
            top = logits.softmax(1).topk(topk, 1).indices
            maps = torch.stack([extractor(top[:, t].tolist(), logits)[0] for t in range(topk)], 1)
            up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
            low = up.amin((2, 3), keepdim=True)
            up = (up - low) / (up.amax((2, 3), keepdim=True) - low).clamp_min(1e-12)
        return cam_boxes(up.numpy(), threshold)

    return call


def _batch(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    return np.stack([images[i % len(images)] for i in range(size)])


def run_bench(onnx_paths: Sequence[Path], torch_model: object, image_paths: Sequence[Path],
              options: BenchOptions = BenchOptions(), clock: Callable[[], float] | None = None,
              say: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> BenchReport:
    """Measure the PyTorch reference and each ONNX file on ONNX Runtime, side by side."""
    import time

    clock = clock or time.perf_counter
    for scope in options.scopes:
        if scope not in SCOPES:
            raise CamdeployError(f"--scopes {scope!r}: expected {', '.join(SCOPES)}")
    if not onnx_paths:
        raise CamdeployError("bench: give at least one MODEL.onnx")
    if any(b < 1 for b in options.batch_sizes):
        raise CamdeployError(f"--batch-sizes {options.batch_sizes}: expected positive numbers")
    threads = options.threads or usable_cpus()
    import torch

    from camdeploy.runtime.torch_runner import TorchRunner

    torch.set_num_threads(threads)
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory() as scratch:
        runners: dict[str, Runner] = {}
        for path in onnx_paths:
            name = "ort" if len(onnx_paths) == 1 else f"ort:{Path(path).name}"
            runners[name] = OnnxRuntimeRunner(path, threads=threads, box_path="host", int8=options.int8)
        import onnx

        from camdeploy.export.graph_boxes import has_box_outputs

        if has_box_outputs(onnx.load(str(onnx_paths[0]), load_external_data=False)):
            runners["ort-graph-boxes"] = OnnxRuntimeRunner(onnx_paths[0], threads=threads, box_path="graph")
        spec = next(iter(runners.values())).spec
        runners = {REFERENCE: TorchRunner(torch_model, spec), **runners}
        if options.tensorrt:
            from camdeploy.runtime.tensorrt_runner import EngineOptions, TensorRTRunner

            largest = max(options.batch_sizes)
            engine = EngineOptions(batch=(1, largest, largest), module="tensorrt_rtx" if options.rtx else None)
            runners["tensorrt"] = TensorRTRunner(onnx_paths[0], engine, spec=spec)
        if "model" in options.scopes:
            runners["ort-backbone"] = OnnxRuntimeRunner(backbone_only(Path(onnx_paths[0]), Path(scratch)),
                                                        threads=threads, spec=spec)
        for runner in runners.values():
            runner.open()
        try:
            prepared = [prepare(load_image(p), spec)[0] for p in image_paths[: max(options.batch_sizes)]]
            peer = None
            if options.torchcam and "model" in options.scopes:
                module = runners[REFERENCE]._cam_model.features.model  # type: ignore[attr-defined]
                peer = _torchcam_call(module, spec.topk, spec.box_threshold, (spec.input_height, spec.input_width))
                if peer is None:
                    say("torchcam is not installed (the 'bench' extra) or cannot hook this model: no peer row")
            for batch in options.batch_sizes:
                x = _batch(prepared, batch)
                if "model" in options.scopes:
                    calls: dict[str, Callable[[], object]] = {
                        name: partial(runner.run_outputs, ["logits"], x)  # type: ignore[attr-defined]
                        if name == "ort-backbone" else partial(runner.infer, x)
                        for name, runner in runners.items()}
                    if peer is not None:
                        calls["torchcam"] = partial(peer, x)
                    say(f"model scope, batch {batch}: {', '.join(calls)}, taking turns")
                    timed = time_interleaved(calls, warmup=options.warmup, repeats=options.repeats, clock=clock)
                    for name, samples in timed.items():
                        execution = runners[name].execution if name in runners else "fp32"
                        rows.append(BenchRow(name, "model", LatencyStats.from_samples(samples, batch),
                                             execution=execution))
                    if "tensorrt" in runners:
                        samples = runners["tensorrt"].time_gpu(x, repeats=options.repeats,  # type: ignore[attr-defined]
                                                               warmup=options.warmup)
                        rows.append(BenchRow("tensorrt-engine", "model", LatencyStats.from_samples(samples, batch)))
                if "end-to-end" in options.scopes:
                    files = [image_paths[i % len(image_paths)] for i in range(options.e2e_images)]
                    run_options = RunOptions(batch_size=batch, progress=False)
                    for name, runner in runners.items():
                        if name == "ort-backbone":
                            continue
                        say(f"end-to-end scope, batch {batch}: {name}")
                        call = partial(run_files, runner, files, Path(scratch) / "e2e", run_options)
                        samples = time_calls(call, warmup=1, repeats=options.e2e_repeats, clock=clock)
                        # Each call runs all the files; report the time per batch of `batch` images.
                        per_batch = [t * batch / len(files) for t in samples]
                        rows.append(BenchRow(name, "end-to-end", LatencyStats.from_samples(per_batch, batch),
                                             execution=runner.execution))
        finally:
            for runner in runners.values():
                runner.close()
    reference = {(r.scope, r.stats.batch): r.stats.median_ms for r in rows if r.backend == REFERENCE}
    for row in rows:
        ref = reference.get((row.scope, row.stats.batch))
        row.speedup = ref / row.stats.median_ms if ref and row.stats.median_ms > 0 else None
    options_dict = {"batch_sizes": list(options.batch_sizes), "scopes": list(options.scopes),
                    "warmup": options.warmup, "repeats": options.repeats, "e2e_images": options.e2e_images,
                    "e2e_repeats": options.e2e_repeats, "models": [str(p) for p in onnx_paths],
                    "images": len(image_paths)}
    return BenchReport(rows, machine_info(threads), options_dict)


def format_table(report: BenchReport) -> str:
    lines = [f"{'backend':<22} {'scope':<11} {'batch':>5} {'median ms':>10} {'p90':>8} {'p99':>8} "
             f"{'ms/img':>8} {'img/s':>8} {'vs torch':>9}  execution"]
    for r in report.rows:
        s = r.stats
        speed = f"{r.speedup:.2f}x" if r.speedup else "-"
        lines.append(f"{r.backend:<22} {r.scope:<11} {s.batch:>5} {s.median_ms:>10.2f} {s.p90_ms:>8.2f} "
                     f"{s.p99_ms:>8.2f} {s.ms_per_image:>8.2f} {s.images_per_second:>8.1f} {speed:>9}  {r.execution}")
    m = report.machine
    features = m.get("isa")
    isa = features.get("isa", "?") if isinstance(features, dict) else "?"
    lines.append(f"machine: {m['cpu']} ({isa}), {m['threads']} threads; {m['versions']}")
    return "\n".join(lines)


def plot(report: BenchReport, path: Path) -> bool:
    """Latency bars (median per image) with p90 whiskers, one panel per scope; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scopes = [s for s in SCOPES if any(r.scope == s for r in report.rows)]
    fig, axes = plt.subplots(1, len(scopes), figsize=(6 * len(scopes), 4), squeeze=False)
    for ax, scope in zip(axes[0], scopes, strict=True):
        rows = [r for r in report.rows if r.scope == scope]
        backends = list(dict.fromkeys(r.backend for r in rows))
        batches = sorted({r.stats.batch for r in rows})
        width = 0.8 / len(backends)
        for k, backend in enumerate(backends):
            picked = {r.stats.batch: r.stats for r in rows if r.backend == backend}
            xs = [i + k * width for i, b in enumerate(batches) if b in picked]
            med = [picked[b].ms_per_image for b in batches if b in picked]
            err = [(picked[b].p90_ms - picked[b].median_ms) / b for b in batches if b in picked]
            ax.bar(xs, med, width, yerr=[[0] * len(err), err], capsize=3, label=backend)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(batches))], [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel("ms per image (median, whisker to p90)")
        ax.set_title(f"{scope} scope")
        ax.legend()
    fig.suptitle(f"camdeploy bench: {report.machine['cpu']}, {report.machine['threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
