"""``camdeploy bench``: latency of every backend, side by side with the PyTorch reference.

Scopes:

* ``model``: a preprocessed batch ``[B, 3, S, S]`` in, outputs out (``Runner.infer``). For each
  backend (the first model) the rows are: every output, boxes included (the backend's own row);
  ``[no maps]``: classes, scores and boxes without the 1 MB of maps per image (what ``run``
  asks for); ``[classes only]``: the classifier without the CAM head, so that the difference is
  what CAMs and boxes cost; ``[no maps, full-res]``: ``[no maps]`` with host boxes found on the
  graph's full-resolution CAMs instead of the low-resolution maps (ONNX Runtime: what the
  low-resolution path saves); ``[graph boxes]`` / ``[host boxes]``: the other box source, when the
  model has both; ``[device clock]``: the backend's own clock (CUDA events), when it has one.
  Rows of one batch size take turns repeat by repeat, so that their ratios survive a noisy machine,
  in an order shuffled from repeat to repeat, with a pause after each PyTorch call (its threads
  keep spinning after it returns; see :func:`camdeploy.bench.timing.time_interleaved`).
* ``end-to-end``: image files in, ``results.jsonl`` out (``camdeploy run``'s path: read, resize,
  normalise, infer, boxes, write); latency per image is the run's time divided by its images.

Every backend is driven through the runner interface (:mod:`camdeploy.backends`); a new backend
needs no change here. Each measurement warms up, then repeats; rows report the minimum, median,
p90 and p99 of the wall-clock time and the median process CPU time, and their ratios to the
PyTorch reference at the same scope and batch size, like with like (median with median, minimum
with minimum, CPU time with CPU time). The load average before and after is recorded: a loaded
machine shows in it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from camdeploy.atomic import write_checked
from camdeploy.backends import BACKENDS, RunnerOptions, make_runner
from camdeploy.bench.timing import LatencyStats, time_calls, time_interleaved
from camdeploy.errors import CamdeployError
from camdeploy.metadata import read_spec
from camdeploy.runtime.batches import BatchOptions, image_batches
from camdeploy.runtime.cams import upsample_and_normalize
from camdeploy.runtime.onnxruntime_runner import usable_cpus
from camdeploy.runtime.pipeline import RunOptions, run_files
from camdeploy.runtime.runner import Runner
from camdeploy.versions import machine_info

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
    backends: tuple[str, ...] = ("ort",)
    """Backends measured against the PyTorch reference (``ort``, ``tensorrt``)."""
    runner: RunnerOptions = field(default_factory=RunnerOptions)
    """Options of every runner (threads, INT8 execution, TensorRT module...)."""
    torchcam: bool = True
    """Add torchcam's hook-based CAM on the same model as a peer row, when it is installed."""
    variants: bool = True
    """Add the ``[no maps]``, ``[classes only]`` and other-box-source rows."""


@dataclass
class BenchRow:
    backend: str
    scope: str
    stats: LatencyStats
    execution: str = ""
    """How the backend ran the model (``fp32``, ``simulated int8``, ``int8 kernels (U8S8)``, ...)."""
    box_source: str = ""
    speedup: float | None = None
    """Reference median / this median, same scope and batch."""
    speedup_min: float | None = None
    """Reference minimum / this minimum."""
    speedup_cpu: float | None = None
    """Reference CPU time / this CPU time."""

    def as_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "scope": self.scope, "execution": self.execution,
                "box_source": self.box_source, **self.stats.as_dict(), "speedup_vs_torch": self.speedup,
                "speedup_min_vs_torch": self.speedup_min, "speedup_cpu_vs_torch": self.speedup_cpu}


@dataclass
class BenchReport:
    rows: list[BenchRow]
    machine: dict[str, object]
    options: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"machine": self.machine, "options": self.options, "rows": [r.as_dict() for r in self.rows]}

    def row(self, backend: str, scope: str, batch: int) -> BenchRow | None:
        return next((r for r in self.rows if (r.backend, r.scope, r.stats.batch) == (backend, scope, batch)), None)


def _torchcam_call(reference: Any, topk: int, threshold: float, size: tuple[int, int]
                   ) -> Callable[[np.ndarray], object] | None:
    """torchcam's CAM on the reference's own model: hooks on its feature module, maps of the top
    classes, then camdeploy's upsampling, normalisation and boxes (the same for every row)."""
    try:
        import torch
        from torchcam.methods import CAM
    except ImportError:
        return None
    from camdeploy.export.contract import global_pool
    from camdeploy.runtime.boxes import cam_boxes

    cam_model = reference.cam_model

    class Classifier(torch.nn.Module):  # the model as torchcam sees it: features -> pool -> linear
        def __init__(self) -> None:
            super().__init__()
            self.features, self.linear = cam_model.features, cam_model.linear

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(global_pool(self.features(x), cam_model.pooling))

    classifier = Classifier().eval()
    try:
        extractor = CAM(classifier, target_layer=classifier.features, fc_layer=classifier.linear)
    except Exception:  # a model torchcam cannot hook: leave the peer row out
        return None

    def call(x: np.ndarray) -> object:
        with torch.inference_mode():
            logits = classifier(reference.to_device(x))
            top = logits.softmax(1).topk(topk, 1).indices
            maps = torch.stack([extractor(top[:, t].tolist(), logits)[0] for t in range(topk)], 1)
        return cam_boxes(upsample_and_normalize(maps.cpu().numpy(), size), threshold)

    return call


def _label(backend: str, model: Path, models: Sequence[Path]) -> str:
    return backend if len(models) == 1 else f"{backend}:{model.name}"


def _stats_ratio(reference: float | None, value: float | None) -> float | None:
    return reference / value if reference and value else None


def run_bench(models: Sequence[Path], image_paths: Sequence[Path], options: BenchOptions = BenchOptions(),
              clock: Callable[[], float] | None = None, cpu_clock: Callable[[], float] | None = None,
              say: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> BenchReport:
    """Measure the PyTorch reference and each backend on each model, side by side."""
    import time

    clock = clock or time.perf_counter
    cpu_clock = cpu_clock or time.process_time
    for scope in options.scopes:
        if scope not in SCOPES:
            raise CamdeployError(f"--scopes {scope!r}: expected {', '.join(SCOPES)}")
    for backend in options.backends:
        if backend not in BACKENDS or backend == REFERENCE:
            measured = ", ".join(b for b in BACKENDS if b != REFERENCE)
            raise CamdeployError(f"--backend {backend!r}: expected one of {measured} (the PyTorch reference is "
                                 "always measured)")
    if not models:
        raise CamdeployError("bench: give at least one MODEL.onnx")
    if not image_paths:
        raise CamdeployError("bench: give at least one image (--images)")
    if any(b < 1 for b in options.batch_sizes):
        raise CamdeployError(f"--batch-sizes {','.join(map(str, options.batch_sizes))}: expected positive numbers")
    threads = options.runner.threads or usable_cpus()
    runner_options = dataclasses.replace(options.runner, threads=threads)
    models = [Path(m) for m in models]
    spec = read_spec(models[0])
    main: dict[str, Runner] = {REFERENCE: make_runner(REFERENCE, models[0], runner_options, spec)}
    for backend in options.backends:
        for model in models if backend == "ort" else models[:1]:
            main[_label(backend, model, models)] = make_runner(backend, model, runner_options.for_backend(backend),
                                                               spec)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows: list[BenchRow] = []
    opened: list[Runner] = []
    with tempfile.TemporaryDirectory() as scratch:
        try:
            for runner in main.values():
                runner.open()
                opened.append(runner)
            others: dict[str, Runner] = {}  # the other box source of each backend's first model
            if options.variants:
                for backend in options.backends:
                    label = _label(backend, models[0], models)
                    first = main[label]
                    if first.uses_low_res_maps:
                        full = make_runner(backend, models[0], dataclasses.replace(
                            runner_options.for_backend(backend), box_maps="full"), spec)
                        full.open()
                        opened.append(full)
                        others[f"{label} [no maps, full-res]"] = full
                    for source in first.box_sources():
                        if source != first.box_source:
                            other = make_runner(backend, models[0], dataclasses.replace(
                                runner_options.for_backend(backend), box_source=source), spec)
                            other.open()
                            opened.append(other)
                            others[f"{label} [{source} boxes]"] = other
            prepared = next(image_batches(image_paths[: max(options.batch_sizes)], spec,
                                          BatchOptions(batch_size=max(options.batch_sizes), prefetch=0),
                                          on_skip=lambda path, reason: say(f"skipped {reason}"))).tensors
            peer = None
            if options.torchcam and "model" in options.scopes:
                peer = _torchcam_call(main[REFERENCE], spec.topk, spec.box_threshold,
                                      (spec.input_height, spec.input_width))
                if peer is None:
                    say("torchcam is not installed (the 'bench' extra) or cannot hook this model: no peer row")
            for batch in options.batch_sizes:
                x = np.stack([prepared[i % len(prepared)] for i in range(batch)])
                if "model" in options.scopes:
                    rows += _model_rows(main, others, peer, x, batch, options, models, clock, cpu_clock, say)
                if "end-to-end" in options.scopes:
                    files = [image_paths[i % len(image_paths)] for i in range(options.e2e_images)]
                    run_options = RunOptions(batch_size=batch, progress=False, overwrite=True)
                    for name, runner in main.items():
                        say(f"end-to-end scope, batch {batch}: {name}")
                        out = Path(scratch) / "e2e" / str(len(rows))
                        call = partial(run_files, runner, files, out, run_options, lambda message: None, models[0])
                        timings = time_calls(call, warmup=1, repeats=options.e2e_repeats, clock=clock,
                                             cpu_clock=cpu_clock)
                        # Each call runs all the files; report the time per batch of `batch` images.
                        rows.append(BenchRow(name, "end-to-end", LatencyStats.from_timings(timings, batch,
                                                                                           batch / len(files)),
                                             runner.execution, runner.box_source))
        finally:
            for runner in opened:
                runner.close()
    for row in rows:
        ref = next((r for r in rows if r.backend == REFERENCE and r.scope == row.scope
                    and r.stats.batch == row.stats.batch), None)
        if ref is not None:
            row.speedup = _stats_ratio(ref.stats.median_ms, row.stats.median_ms)
            row.speedup_min = _stats_ratio(ref.stats.min_ms, row.stats.min_ms)
            row.speedup_cpu = _stats_ratio(ref.stats.cpu_ms, row.stats.cpu_ms)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    options_dict = {"batch_sizes": list(options.batch_sizes), "scopes": list(options.scopes),
                    "warmup": options.warmup, "repeats": options.repeats, "e2e_images": options.e2e_images,
                    "e2e_repeats": options.e2e_repeats, "models": [str(p) for p in models],
                    "images": len(image_paths), "backends": list(options.backends),
                    "load_average_before": load_before, "load_average_after": load_after}
    return BenchReport(rows, machine_info(threads), options_dict)


def _model_rows(main: dict[str, Runner], others: dict[str, Runner], peer: Callable[[np.ndarray], object] | None,
                x: np.ndarray, batch: int, options: BenchOptions, models: Sequence[Path],
                clock: Callable[[], float], cpu_clock: Callable[[], float], say: Callable[[str], None]
                ) -> list[BenchRow]:
    calls: dict[str, Callable[[], object]] = {}
    describe: dict[str, Runner] = {}
    first_labels = {_label(b, models[0], models) for b in options.backends}
    for name, runner in main.items():
        calls[name], describe[name] = partial(runner.infer, x), runner
        if options.variants and name in first_labels:
            calls[f"{name} [no maps]"] = partial(runner.infer, x, outputs="boxes")
            calls[f"{name} [classes only]"] = partial(runner.infer, x, outputs="classes")
            describe[f"{name} [no maps]"] = describe[f"{name} [classes only]"] = runner
    for name, runner in others.items():
        outputs = "boxes" if name.endswith("[no maps, full-res]") else "all"
        calls[name], describe[name] = partial(runner.infer, x, outputs=outputs), runner
    if peer is not None:
        calls["torchcam"] = partial(peer, x)
    say(f"model scope, batch {batch}: {', '.join(calls)}, taking turns")
    timed = time_interleaved(calls, warmup=options.warmup, repeats=options.repeats, clock=clock, cpu_clock=cpu_clock,
                             settle_after={REFERENCE, "torchcam"})
    rows = []
    for name, timings in timed.items():
        described = describe.get(name)
        rows.append(BenchRow(name, "model", LatencyStats.from_timings(timings, batch),
                             described.execution if described else "PyTorch eager, fp32 (torchcam hooks)",
                             described.box_source if described else "host"))
    for name, runner in main.items():
        samples = runner.time_device(x, options.repeats, options.warmup)
        if samples is not None:
            rows.append(BenchRow(f"{name} [device clock]", "model", LatencyStats.from_samples(samples, batch),
                                 runner.execution, runner.box_source))
    return rows


def format_table(report: BenchReport) -> str:
    lines = [f"{'backend':<30} {'scope':<11} {'batch':>5} {'min ms':>8} {'median':>8} {'p90':>8} {'ms/img':>7} "
             f"{'cpu/img':>7} {'img/s':>7} {'vs torch':>8} {'(min)':>6} {'(cpu)':>6}  execution"]
    for r in report.rows:
        s = r.stats

        def ratio(value: float | None) -> str:
            return f"{value:.2f}x" if value else "-"

        cpu = f"{s.cpu_ms_per_image:.2f}" if s.cpu_ms_per_image is not None else "-"
        lines.append(f"{r.backend:<30} {r.scope:<11} {s.batch:>5} {s.min_ms:>8.2f} {s.median_ms:>8.2f} "
                     f"{s.p90_ms:>8.2f} {s.ms_per_image:>7.2f} {cpu:>7} {s.images_per_second:>7.1f} "
                     f"{ratio(r.speedup):>8} {ratio(r.speedup_min):>6} {ratio(r.speedup_cpu):>6}  {r.execution}")
    m = report.machine
    features = m.get("isa")
    isa = features.get("isa", "?") if isinstance(features, dict) else "?"
    load = report.options.get("load_average_before"), report.options.get("load_average_after")
    lines.append(f"machine: {m['cpu']} ({isa}), {m['threads']} threads; load average before {load[0]}, after "
                 f"{load[1]}; {m['versions']}")
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
    fig, axes = plt.subplots(1, len(scopes), figsize=(7 * len(scopes), 4.5), squeeze=False)
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
        ax.legend(fontsize=7)
    fig.suptitle(f"camdeploy bench: {report.machine['cpu']}, {report.machine['threads']} threads", fontsize=9)
    fig.tight_layout()
    write_checked(path, lambda temporary: fig.savefig(temporary, dpi=110, format="png"), label=f"--plot {path}")
    plt.close(fig)
    return True
