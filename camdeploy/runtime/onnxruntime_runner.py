"""ONNX Runtime backend."""

from __future__ import annotations

import os

import numpy as np
import onnx

from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec, read_spec
from camdeploy.runtime.int8 import INT8_MODES, plan_for
from camdeploy.runtime.runner import Runner, resolve_box_path

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_OUTPUTS = ["logits", "classes", "scores", "cams"]
GRAPH_BOXES_FASTER = {"cpu": False, "cuda": True, "tensorrt": True}
"""Default box path per provider (``--box-path auto``). CPU: measured by ``camdeploy bench``
(benchmarks/results/RESULTS.md, GRAPH_BOXES.md): about the same cost at batch 16, the OpenCV
rule cheaper at small batches; on a GPU the graph's boxes avoid copying every CAM back to the
host."""


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _gpu_install_hint() -> str:
    """How to get GPU providers; ``onnxruntime`` and ``onnxruntime-gpu`` installed together clash."""
    from importlib import metadata

    installed = set()
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(name)
            installed.add(name)
        except metadata.PackageNotFoundError:
            pass
    if installed == {"onnxruntime", "onnxruntime-gpu"}:
        return ("both onnxruntime and onnxruntime-gpu are installed and the CPU build shadows the GPU one: "
                "`pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu`")
    return ("install the 'gpu' extra on a machine with an NVIDIA GPU, replacing the CPU build: "
            "`pip uninstall -y onnxruntime && pip install onnxruntime-gpu`")


def read_class_weight(path: str, num_classes: int) -> np.ndarray:
    """The linear head's weight ``[K, C]`` from an exported file: the data input of the Gather
    that selects the top classes' rows in the CAM head."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    initializers = {t.name: t for t in model.graph.initializer}
    casts = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast"}
    for node in model.graph.node:
        source = node.input[0] if node.op_type == "Gather" else ""
        source = casts.get(source, source)  # an fp16 variant casts the stored weight back to float32
        if source in initializers:
            tensor = initializers[source]
            if len(tensor.dims) == 2 and tensor.dims[0] == num_classes:
                return numpy_helper.to_array(tensor).astype(np.float32)
    raise CamdeployError(f"MODEL {path}: no [{num_classes}, C] class weight feeds a Gather; "
                         "re-export it with `camdeploy export`")


def proto_precision(model: onnx.ModelProto) -> str:
    """``int8`` for a Q/DQ graph, ``fp16`` when its weights are float16, else ``fp32``."""
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def graph_precision(path: str) -> str:
    """:func:`proto_precision` of an ``.onnx`` file."""
    return proto_precision(onnx.load(path))


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
        box_path: ``graph`` (the graph's ``boxes`` output), ``host`` (OpenCV; the box nodes are
            then cut from the graph before loading, so that they cost nothing) or ``auto``
            (default): the faster of the two for the provider, :data:`GRAPH_BOXES_FASTER`.
        trt_batch: ``(min, opt, max)`` batch of the TensorRT provider's optimization profile.
        int8: how a Q/DQ INT8 graph runs: ``simulate``, ``kernels`` or ``auto`` (default), see
            :mod:`camdeploy.runtime.int8`; :attr:`execution` says what was chosen.
    """

    name = "ort"

    def __init__(self, path: str | os.PathLike[str], provider: str = "cpu", threads: int | None = None,
                 box_threshold: float | None = None, spec: ModelSpec | None = None, box_path: str = "auto",
                 trt_batch: tuple[int, int, int] = (1, 8, 32), int8: str = "auto"):
        self.path = str(path)
        super().__init__(spec or read_spec(self.path), box_threshold)
        if provider not in PROVIDERS:
            raise CamdeployError(f"--provider {provider!r}: expected one of {', '.join(PROVIDERS)}")
        if threads is not None and threads < 1:
            raise CamdeployError(f"--threads {threads}: expected a positive number")
        if int8 not in INT8_MODES:
            raise CamdeployError(f"--int8 {int8!r}: expected one of {', '.join(INT8_MODES)}")
        self.provider = provider
        self.threads = threads
        self.box_path_choice = box_path
        self.box_path = "host"
        self.trt_batch = trt_batch
        self.int8 = int8
        self.precision = ""
        """``fp32``, ``fp16`` or ``int8``, known once open."""
        self.execution = ""
        """How the graph runs, once open: the precision, or for INT8 the label of its
        :class:`~camdeploy.runtime.int8.Int8Plan` (``simulated int8``, ``int8 kernels (U8S8)``...)."""
        self._session = None
        self._weight: np.ndarray | None = None

    def open(self) -> None:
        import onnxruntime as ort

        wanted = PROVIDERS[self.provider]
        if wanted not in ort.get_available_providers():
            raise CamdeployError(
                f"--provider {self.provider}: ONNX Runtime {ort.__version__} here offers only "
                f"{', '.join(ort.get_available_providers())}; {_gpu_install_hint()}, or use --provider cpu"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.threads or usable_cpus()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # TensorRT hands the nodes it cannot take to CUDA, then CPU, as ONNX Runtime recommends.
        providers = {"cpu": [wanted], "cuda": [wanted, "CPUExecutionProvider"],
                     "tensorrt": [wanted, "CUDAExecutionProvider", "CPUExecutionProvider"]}[self.provider]
        model, config = self._load_model()
        for key, value in config.items():
            options.add_session_config_entry(key, value)
        options_per_provider: list[dict[str, str]] = [{} for _ in providers]
        if self.provider == "tensorrt":
            options_per_provider[0] = self._tensorrt_options()
        try:
            session = ort.InferenceSession(model, sess_options=options, providers=providers,
                                           provider_options=options_per_provider)
        except Exception as exc:
            raise CamdeployError(f"MODEL {self.path}: ONNX Runtime cannot load it ({exc})") from exc
        if wanted not in session.get_providers():
            raise CamdeployError(
                f"--provider {self.provider}: ONNX Runtime fell back to "
                f"{', '.join(session.get_providers())} (is a GPU and its CUDA libraries present?)"
            )
        self._session = session
        self.is_open = True

    def _load_model(self) -> tuple[str | bytes, dict[str, str]]:
        """The path to load (or the serialized graph with the box nodes cut out for the host path),
        and the session options that the graph's precision calls for."""
        from camdeploy.export.graph_boxes import has_box_outputs, strip_graph_boxes

        try:
            proto = onnx.load(self.path)
        except Exception as exc:
            raise CamdeployError(f"MODEL {self.path}: not a readable ONNX file ({exc})") from exc
        self.precision = self.execution = proto_precision(proto)
        config: dict[str, str] = {}
        plan = plan_for(proto, self.int8)
        if plan is not None:
            config, self.execution = plan.session_config, plan.label
        has_boxes = has_box_outputs(proto)
        self.box_path = resolve_box_path(self.box_path_choice, has_boxes, GRAPH_BOXES_FASTER[self.provider],
                                         self.box_threshold == self.spec.box_threshold, self.path)
        if has_boxes and self.box_path == "host":
            return strip_graph_boxes(proto).SerializeToString(), config
        return self.path, config

    def _tensorrt_options(self) -> dict[str, str]:
        """ONNX Runtime's TensorRT provider: an engine cache beside our own, and a batch profile."""
        from camdeploy.cache import cache_dir

        folder = cache_dir() / "ort-tensorrt"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = self.spec.input_height, self.spec.input_width
        low, opt, high = self.trt_batch
        return {
            "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(folder),
            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(folder),
            "trt_profile_min_shapes": f"images:{low}x3x{h}x{w}",
            "trt_profile_opt_shapes": f"images:{opt}x3x{h}x{w}",
            "trt_profile_max_shapes": f"images:{high}x3x{h}x{w}",
        }

    def close(self) -> None:
        self._session = None
        self.is_open = False

    @property
    def active_providers(self) -> list[str]:
        return list(self._session.get_providers()) if self._session else []

    def run_outputs(self, names: list[str], images: np.ndarray) -> list[np.ndarray]:
        """The named graph outputs for a preprocessed batch, with no post-processing."""
        if self._session is None:
            raise CamdeployError("ort runner: call open() or use `with runner:` first")
        return list(self._session.run(names, {"images": images}))

    def _run(self, images: np.ndarray, features: bool) -> dict[str, np.ndarray]:
        names = [*_OUTPUTS, "features"] if features else list(_OUTPUTS)
        if self.box_path == "graph":
            names += ["boxes", "boxes_exact"]
        return dict(zip(names, self.run_outputs(names, images), strict=True))

    def class_weight(self) -> np.ndarray:
        """``W [K, C]``: the initializer the CAM head gathers class rows from."""
        if self._weight is None:
            self._weight = read_class_weight(self.path, len(self.spec.class_names))
        return self._weight
