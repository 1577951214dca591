"""The one place that turns a backend name and options into a :class:`~camdeploy.runtime.runner.Runner`.

``run``, ``eval`` and ``bench`` (and Python users) name a backend and get a runner; everything
after that goes through the runner interface. Each backend is imported only when asked for, so the
ONNX Runtime path never imports torch or TensorRT.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec, read_spec
from camdeploy.runtime.runner import Runner

BACKENDS = ("ort", "torch", "tensorrt")
"""``ort``: the exported graph on ONNX Runtime; ``torch``: the PyTorch reference (the model the
file was exported from, with preprocessing, T and threshold from the file); ``tensorrt``: a
TensorRT engine built from the file (needs an NVIDIA GPU)."""


@dataclass(frozen=True)
class RunnerOptions:
    """Options of :func:`make_runner`; those of one backend are refused for the others."""

    threads: int | None = None
    box_threshold: float | None = None
    box_source: str = "auto"
    provider: str = "cpu"
    """ONNX Runtime's execution provider: ``cpu``, ``cuda`` or ``tensorrt``."""
    int8: str = "auto"
    """How ONNX Runtime runs INT8 graphs (:mod:`camdeploy.runtime.int8`)."""
    outputs: str = "all"
    """The output set most calls will ask for (ONNX Runtime loads its graph first, others when
    first asked for): ``run`` and the services ask for ``boxes``."""
    box_maps: str = "low"
    """Which maps ONNX Runtime's host boxes come from when no CAMs are asked for: ``low`` (the raw
    low-resolution maps) or ``full`` (the graph's CAMs); see :class:`OnnxRuntimeRunner`."""
    batch: tuple[int, int, int] = (1, 8, 32)
    """Batch profile (min, opt, max) of TensorRT engines."""
    engine: Path | None = None
    """A prebuilt TensorRT engine instead of the engine cache."""
    rtx: bool = False
    """Build TensorRT engines with TensorRT for RTX."""
    torch_model: object = None
    """The PyTorch model of the reference: a ``--model`` string or an ``nn.Module`` (default: the
    model the file was exported from)."""
    feature_module: str | None = None
    linear_module: str | None = None
    device: str | None = None
    """Where the model runs: ``cpu`` or ``cuda[:N]`` for the PyTorch reference (default ``cpu``),
    ``cuda[:N]`` for TensorRT (default ``cuda:0``); ONNX Runtime takes ``--provider`` instead."""

    def for_backend(self, backend: str) -> RunnerOptions:
        """These options without those of the PyTorch reference, unless ``backend`` is it: for
        commands that run several backends with one set of options (``eval --compare``, ``bench``)."""
        if backend == "torch":
            return self
        device = self.device if backend == "tensorrt" else None
        return dataclasses.replace(self, torch_model=None, feature_module=None, linear_module=None, device=device)


def cuda_index(device: str | None) -> int:
    """The CUDA device index of a TensorRT ``--device`` (``cuda`` or ``cuda:N``; default 0)."""
    if device is None or device == "cuda":
        return 0
    kind, _, index = device.partition(":")
    if kind == "cuda" and index.isdigit():
        return int(index)
    raise CamdeployError(f"--device {device!r}: TensorRT runs on an NVIDIA GPU; expected cuda or cuda:N")


def _refuse(backend: str, options: RunnerOptions) -> None:
    if backend != "torch" and (options.torch_model or options.feature_module or options.linear_module):
        raise CamdeployError("--model, --feature-module and --linear-module describe the PyTorch model for "
                             f"--backend torch; with --backend {backend} the graph in MODEL.onnx is run")
    if backend != "ort" and options.provider != "cpu":
        runs = "runs on the CPU (use --backend ort)" if backend == "torch" else "runs TensorRT itself"
        raise CamdeployError(f"--provider {options.provider} selects an ONNX Runtime provider; --backend {backend} "
                             f"{runs}")
    if backend != "ort" and options.box_maps != "low":
        raise CamdeployError(f"box_maps {options.box_maps!r} is an option of --backend ort")
    if backend == "ort" and options.device not in (None, "cpu"):
        raise CamdeployError(f"--device {options.device}: ONNX Runtime chooses its device with --provider "
                             "(cpu, cuda or tensorrt); --device is for --backend torch and tensorrt")
    if backend != "tensorrt" and (options.engine or options.rtx):
        raise CamdeployError("--plan and --rtx are options of --backend tensorrt")


def make_runner(backend: str, model: str | os.PathLike[str], options: RunnerOptions = RunnerOptions(),
                spec: ModelSpec | None = None) -> Runner:
    """A (closed) runner of ``backend`` for the exported file ``model``."""
    if backend not in BACKENDS:
        raise CamdeployError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    _refuse(backend, options)
    spec = spec or read_spec(model)
    if backend == "torch":
        try:
            from camdeploy.export.reference import TorchRunner
        except ImportError as exc:
            raise CamdeployError("--backend torch needs PyTorch: install the 'export' extra "
                                 "(pip install 'camdeploy[export]')") from exc
        return TorchRunner(options.torch_model or spec.source_model, spec, options.box_threshold,
                           options.feature_module, options.linear_module, options.threads,
                           options.device or "cpu")
    if backend == "tensorrt":
        from camdeploy.runtime.tensorrt_engine import EngineOptions
        from camdeploy.runtime.tensorrt_runner import TensorRTRunner

        engine = EngineOptions(batch=options.batch, module="tensorrt_rtx" if options.rtx else None)
        return TensorRTRunner(model, engine, options.box_threshold, spec, options.engine, options.box_source,
                              cuda_index(options.device))
    from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(model, options.provider, options.threads, options.box_threshold, spec,
                             options.box_source, trt_batch=options.batch, int8=options.int8,
                             box_maps=options.box_maps, outputs=options.outputs)
