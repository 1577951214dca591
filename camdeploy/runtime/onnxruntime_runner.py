"""ONNX Runtime backend."""

from __future__ import annotations

import os

import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec, read_spec
from camdeploy.runtime.runner import Runner

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_OUTPUTS = ["logits", "classes", "scores", "cams"]


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


class OnnxRuntimeRunner(Runner):
    """Runs an exported camdeploy graph on ONNX Runtime.

    Args:
        path: the ``.onnx`` file; its metadata gives preprocessing, T and the box threshold.
        provider: ``cpu`` (default), ``cuda`` or ``tensorrt``. If ONNX Runtime does not actually
            activate the provider asked for, :meth:`open` raises instead of silently falling back
            to the CPU.
        threads: intra-op threads; default: the CPUs this process may use.
        box_threshold: overrides the threshold stored in the model.
        spec: the model's :class:`ModelSpec`, if already read.
    """

    name = "ort"

    def __init__(self, path: str | os.PathLike[str], provider: str = "cpu", threads: int | None = None,
                 box_threshold: float | None = None, spec: ModelSpec | None = None):
        self.path = str(path)
        super().__init__(spec or read_spec(self.path), box_threshold)
        if provider not in PROVIDERS:
            raise CamdeployError(f"--provider {provider!r}: expected one of {', '.join(PROVIDERS)}")
        if threads is not None and threads < 1:
            raise CamdeployError(f"--threads {threads}: expected a positive number")
        self.provider = provider
        self.threads = threads
        self._session = None

    def open(self) -> None:
        import onnxruntime as ort

        wanted = PROVIDERS[self.provider]
        if wanted not in ort.get_available_providers():
            raise CamdeployError(
                f"--provider {self.provider}: ONNX Runtime {ort.__version__} here offers only "
                f"{', '.join(ort.get_available_providers())}; install the 'gpu' extra "
                "(onnxruntime-gpu) on a machine with an NVIDIA GPU, or use --provider cpu"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.threads or usable_cpus()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(self.path, sess_options=options, providers=providers)
        except Exception as exc:
            raise CamdeployError(f"MODEL {self.path}: ONNX Runtime cannot load it ({exc})") from exc
        if wanted not in session.get_providers():
            raise CamdeployError(
                f"--provider {self.provider}: ONNX Runtime fell back to "
                f"{', '.join(session.get_providers())} (is a GPU and its CUDA libraries present?)"
            )
        self._session = session
        self.is_open = True

    def close(self) -> None:
        self._session = None
        self.is_open = False

    @property
    def active_providers(self) -> list[str]:
        return list(self._session.get_providers()) if self._session else []

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        assert self._session is not None  # guarded by infer()
        logits, classes, scores, cams = self._session.run(_OUTPUTS, {"images": images})
        return logits, classes, scores, cams
