"""ONNX Runtime backend."""

from __future__ import annotations

import contextlib
import os
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx

from camdeploy import graph
from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec, read_spec
from camdeploy.runtime.int8 import INT8_MODES, plan_for
from camdeploy.runtime.runner import OUTPUT_SETS, Runner, resolve_box_source

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
CUDA_OPTIONS = {"use_tf32": "0"}
"""Options of ONNX Runtime's CUDA provider: no TensorFloat-32, so that fp32 stays fp32 as on the CPU."""
BOX_MAPS = ("low", "full")
"""Which maps host boxes come from when no CAMs are asked for (``OnnxRuntimeRunner(box_maps=...)``)."""
GRAPH_BOXES_FASTER = {"cpu": False, "cuda": True, "tensorrt": True}
"""Default box source per provider (``--box-source auto``). CPU: measured by ``camdeploy bench``
(benchmarks/results/): the host rule is cheaper; on a GPU the graph's boxes avoid copying every CAM
back to the host."""


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or a one-line error naming the extras that bring it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise CamdeployError("ONNX Runtime is not installed: install camdeploy with the 'cpu' extra (onnxruntime) "
                             "or, on an NVIDIA GPU machine, the 'gpu' extra (onnxruntime-gpu)") from exc
    return onnxruntime


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


_PRELOADED: list[bool] = []


def _preload_cuda_libraries(ort: ModuleType) -> None:
    """Load the CUDA and cuDNN libraries of the nvidia-* pip packages (where they are installed)
    before the first GPU session: onnxruntime-gpu's providers find them only this way or through
    the system's library path. Once per process; a failure here shows later as the provider not
    becoming active, which :meth:`OnnxRuntimeRunner._session` reports."""
    if _PRELOADED or not hasattr(ort, "preload_dlls"):
        return
    _PRELOADED.append(True)
    with contextlib.suppress(Exception):
        ort.preload_dlls()


def _gpu_install_hint() -> str:
    """How to get GPU providers; ``onnxruntime`` and ``onnxruntime-gpu`` installed together clash."""
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
    return "install camdeploy's 'gpu' extra instead of its 'cpu' extra, on a machine with an NVIDIA GPU"


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
        box_source: ``graph`` (the graph's ``boxes`` output), ``host`` (OpenCV; the box nodes are
            then cut from the graph before loading, so that they cost nothing) or ``auto``
            (default): the faster of the two for the provider, :data:`GRAPH_BOXES_FASTER`.
        outputs: the output set (:data:`~camdeploy.runtime.runner.OUTPUT_SETS`) most calls will ask
            for: :meth:`open` loads the graph that computes it (``run`` asks for ``boxes``), and the
            graphs of other sets are loaded when first asked for (each session holds its own copy
            of the weights and its own memory arena).
        box_maps: with host boxes, which maps the ``boxes`` output set boxes: ``low`` (default):
            the raw low-resolution maps, so that the graph neither upsamples nor copies out
            full-resolution CAMs (exact: see :mod:`camdeploy.runtime.map_boxes`; a head this does not
            recognise, such as a float16 one, falls back to ``full``); ``full``: the graph's CAMs.
        trt_batch: ``(min, opt, max)`` batch of the TensorRT provider's optimization profile.
        int8: how a Q/DQ INT8 graph runs: ``simulate``, ``kernels`` or ``auto`` (default), see
            :mod:`camdeploy.runtime.int8`; :attr:`execution` says what was chosen.
    """

    name = "ort"
    model_path: Path

    def __init__(self, path: str | os.PathLike[str], provider: str = "cpu", threads: int | None = None,
                 box_threshold: float | None = None, spec: ModelSpec | None = None, box_source: str = "auto",
                 trt_batch: tuple[int, int, int] = (1, 8, 32), int8: str = "auto", box_maps: str = "low",
                 outputs: str = "all"):
        self.model_path = Path(path)
        super().__init__(spec or read_spec(self.model_path), box_threshold)
        if provider not in PROVIDERS:
            raise CamdeployError(f"--provider {provider!r}: expected one of {', '.join(PROVIDERS)}")
        if threads is not None and threads < 1:
            raise CamdeployError(f"--threads {threads}: expected a positive number")
        if int8 not in INT8_MODES:
            raise CamdeployError(f"--int8 {int8!r}: expected one of {', '.join(INT8_MODES)}")
        if box_maps not in BOX_MAPS:
            raise CamdeployError(f"box_maps {box_maps!r}: expected one of {', '.join(BOX_MAPS)}")
        if outputs not in OUTPUT_SETS:
            raise CamdeployError(f"outputs {outputs!r}: expected one of {', '.join(OUTPUT_SETS)}")
        self.provider = provider
        self.box_maps = box_maps
        self.outputs = outputs
        self._maps_name: str | None = None
        self._head: onnx.ModelProto | None = None
        self.threads = threads
        self.box_workers = threads or usable_cpus()
        self.box_source_choice = box_source
        self.trt_batch = trt_batch
        self.int8 = int8
        self._has_graph_boxes = False
        self._output_names: set[str] = set()
        self._config: dict[str, str] = {}
        self._sessions: dict[str, Any] = {}
        self._weight: np.ndarray | None = None

    @property
    def path(self) -> str:
        return str(self.model_path)

    def open(self) -> None:
        proto = graph.load(self.model_path)
        graph.check_contract(proto, self.spec, f"MODEL {self.model_path}")
        self.precision = self.execution = graph.precision(proto)
        plan = plan_for(proto, self.int8)
        self._config = plan.session_config if plan else {}
        if plan:
            self.execution = plan.label
        self._has_graph_boxes = graph.has_box_outputs(proto)
        self._output_names = {o.name for o in proto.graph.output}
        self.box_source = resolve_box_source(
            self.box_source_choice, has_graph_boxes=self._has_graph_boxes,
            prefer_graph=GRAPH_BOXES_FASTER[self.provider], own_threshold=self.box_threshold == self.spec.box_threshold,
            model=self.model_path)
        self._maps_name = graph.cam_head_maps(proto) if self.box_maps == "low" else None
        self._head = graph.cam_head(proto, self._maps_name) if self._maps_name is not None else None
        self._sessions = {}
        self._session_for(self._session_key(self.outputs), proto)  # a model ONNX Runtime refuses stops here
        self.is_open = True

    def _session_key(self, outputs: str) -> str:
        """Which session computes an output set (see :meth:`_session_for`)."""
        if outputs == "classes":
            return "classes"
        return "maps" if outputs == "boxes" and self.uses_low_res_maps else "main"

    def _session_for(self, key: str, proto: onnx.ModelProto | None = None) -> Any:
        """The session ``key``, made when first asked for, so that ONNX Runtime computes nothing
        else: ``main`` the whole graph (without its box nodes when boxes come from the host),
        ``classes`` the graph cut before the CAM head, ``maps`` cut at the raw low-resolution maps
        (both keep ``features``), ``head`` the CAM head alone."""
        if key in self._sessions:
            return self._sessions[key]
        if key == "head":  # cut at open(): a few kB, where reloading the file would take its weights
            if self._head is None:
                raise CamdeployError(f"MODEL {self.model_path}: no CAM head this runner can run alone")
            self._sessions[key] = self._session(self._head, light=True)
            return self._sessions[key]
        proto = proto or graph.load(self.model_path)
        if key == "main":
            model = graph.without_boxes(proto) if self._has_graph_boxes and self.box_source == "host" else proto
        else:
            maps = (self._maps_name,) if key == "maps" and self._maps_name is not None else ()
            features = ("features",) if "features" in self._output_names else ()
            model = graph.cut(proto, (*graph.CLASS_OUTPUTS, *maps, *features))
        self._sessions[key] = self._session(model)
        return self._sessions[key]

    def _session(self, model: onnx.ModelProto, light: bool = False) -> Any:
        """An ONNX Runtime session of ``model``; ``light``: one thread and no memory arena, for a
        small graph that runs rarely (each arena and thread pool costs memory for the whole run)."""
        ort = import_onnxruntime()
        wanted = PROVIDERS[self.provider]
        if wanted not in ort.get_available_providers():
            raise CamdeployError(
                f"--provider {self.provider}: ONNX Runtime {ort.__version__} here offers only "
                f"{', '.join(ort.get_available_providers())}; {_gpu_install_hint()}, or use --provider cpu"
            )
        if self.provider != "cpu":
            _preload_cuda_libraries(ort)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = 1 if light else self.threads or usable_cpus()
        options.inter_op_num_threads = 1
        if light:
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
        options.log_severity_level = 3
        # Idle threads stop spinning when a run ends: between runs they would take the CPU from the
        # image loader (which prepares the next batch meanwhile) and from other sessions.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        for key, value in self._config.items():
            options.add_session_config_entry(key, value)
        # TensorRT hands the nodes it cannot take to CUDA, then CPU, as ONNX Runtime recommends.
        providers = {"cpu": [wanted], "cuda": [wanted, "CPUExecutionProvider"],
                     "tensorrt": [wanted, "CUDAExecutionProvider", "CPUExecutionProvider"]}[self.provider]
        # CUDA computes in IEEE fp32: its provider enables TensorFloat-32 by default (use_tf32), which
        # moved Lite0's logits by up to 1.5e-2 and changed 27 of 500 boxes on an H200 (GPU.md).
        options_per_provider: list[dict[str, str]] = [CUDA_OPTIONS if name == PROVIDERS["cuda"] else {}
                                                      for name in providers]
        if self.provider == "tensorrt":
            options_per_provider[0] = self._tensorrt_options()
        try:
            session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=providers,
                                           provider_options=options_per_provider)
        except Exception as exc:
            raise CamdeployError(f"MODEL {self.model_path}: ONNX Runtime cannot load it ({exc})") from exc
        if wanted not in session.get_providers():
            raise CamdeployError(
                f"--provider {self.provider}: ONNX Runtime fell back to "
                f"{', '.join(session.get_providers())} (is a GPU and its CUDA libraries present?)"
            )
        return session

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
            "trt_profile_min_shapes": f"{graph.INPUT_NAME}:{low}x3x{h}x{w}",
            "trt_profile_opt_shapes": f"{graph.INPUT_NAME}:{opt}x3x{h}x{w}",
            "trt_profile_max_shapes": f"{graph.INPUT_NAME}:{high}x3x{h}x{w}",
        }

    def close(self) -> None:
        self._sessions = {}
        self.is_open = False

    @property
    def active_providers(self) -> list[str]:
        session = next(iter(self._sessions.values()), None)
        return list(session.get_providers()) if session else []

    def box_sources(self) -> tuple[str, ...]:
        has_boxes = self._has_graph_boxes if self.is_open else graph.has_box_outputs(
            graph.load(self.model_path, weights=False))
        return ("host", "graph") if has_boxes else ("host",)

    def run_outputs(self, names: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
        """The named graph outputs for a preprocessed batch, with no post-processing."""
        if not self.is_open:
            raise CamdeployError("ort runner: call open() or use `with runner:` first")
        return self._fetch(self._session_for("main"), names, images)

    def _fetch(self, session: Any, names: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
        """One ``session.run``: the named outputs of a preprocessed batch."""
        return dict(zip(names, session.run(names, {graph.INPUT_NAME: images}), strict=True))

    def _run(self, images: np.ndarray, features: bool, outputs: str) -> dict[str, np.ndarray]:
        if not self.is_open:
            raise CamdeployError("ort runner: call open() or use `with runner:` first")
        if features and "features" not in self._output_names:
            raise CamdeployError(f"MODEL {self.model_path}: has no features output, which evaluation needs "
                                 "(the CAMs of classes outside the top T); re-export it with `camdeploy export`")
        key = self._session_key(outputs)
        names = list(graph.CLASS_OUTPUTS)
        if key == "maps":  # the raw maps, boxed on the host
            names.append(str(self._maps_name))
        elif key == "main" and self.box_source == "graph":
            names += [*graph.BOX_OUTPUTS, *(["cams"] if outputs == "all" else [])]
        elif key == "main":
            names.append("cams")
        out = self._fetch(self._session_for(key), [*names, *(["features"] if features else [])], images)
        if self._maps_name in out:
            out["maps"] = out.pop(self._maps_name)
        return out

    @property
    def computes_on_cpu(self) -> bool:  # type: ignore[override]
        return self.provider == "cpu"

    @property
    def uses_low_res_maps(self) -> bool:  # type: ignore[override]
        """Whether ``outputs="boxes"`` boxes the raw low-resolution maps (once open)."""
        return self._maps_name is not None and self.box_source == "host"

    def _head_cams(self, maps: np.ndarray) -> np.ndarray:
        return self._session_for("head").run(["cams"], {self._maps_name: maps})[0]

    def class_weight(self) -> np.ndarray:
        """``W [K, C]``: the initializer the CAM head gathers class rows from (read when first asked)."""
        if self._weight is None:
            self._weight = graph.class_weight(graph.load(self.model_path), len(self.spec.class_names),
                                              f"MODEL {self.model_path}")
        return self._weight
