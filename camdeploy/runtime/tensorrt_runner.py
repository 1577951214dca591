"""TensorRT backend: build (and cache) an engine from the exported ONNX, run it on a CUDA stream.

Current API only (TensorRT 10/11 and TensorRT for RTX): networks are parsed from ONNX as
*strongly typed*, so precision comes from the graph itself: an FP16 ONNX for FP16, a Q/DQ ONNX
(``camdeploy calibrate``) for INT8; there are no builder precision flags or implicit calibrators.
TF32 is off unless asked for, so that an fp32 engine stays close to the fp32 reference.

Everything is imported lazily: ``tensorrt`` (or ``tensorrt_rtx``) and ``cuda-python`` (device
buffers, stream, events; no PyTorch needed), from the ``tensorrt`` / ``tensorrt-rtx`` extras.

Engines are cached under ``<cache>/tensorrt/``, keyed by the ONNX file's SHA-256, the TensorRT
module and version, the GPU (name and compute capability) and the build options; a plan is
written to a temporary name and renamed, so a crash never leaves a truncated engine behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.export.graph_boxes import has_box_outputs
from camdeploy.metadata import ModelSpec, read_spec
from camdeploy.onnxfile import write_checked
from camdeploy.runtime.onnxruntime_runner import proto_precision
from camdeploy.runtime.runner import Runner, resolve_box_path
from camdeploy.runtime.tensorrt_check import load_tensorrt

NO_GPU = "no GPU"


@dataclass(frozen=True)
class EngineOptions:
    """How to build an engine."""

    batch: tuple[int, int, int] = (1, 8, 32)
    """Optimization profile of the dynamic batch: min, opt, max."""
    module: str | None = None
    """``tensorrt``, ``tensorrt_rtx`` (TensorRT for RTX), or None: ``tensorrt`` if installed, else
    ``tensorrt_rtx``."""
    tf32: bool = False
    workspace_mib: int | None = None

    def validate(self) -> None:
        low, opt, high = self.batch
        if not 1 <= low <= opt <= high:
            raise CamdeployError(f"--batch {low},{opt},{high}: expected min <= opt <= max, all >= 1")
        if self.module not in (None, "tensorrt", "tensorrt_rtx"):
            raise CamdeployError(f"module {self.module!r}: expected tensorrt or tensorrt_rtx")


def _tensorrt(options: EngineOptions) -> ModuleType:
    if options.module:
        return load_tensorrt(options.module)
    try:
        return load_tensorrt("tensorrt")
    except CamdeployError:
        return load_tensorrt()


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python 12.6+
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError:
            raise CamdeployError("the TensorRT runner needs cuda-python for GPU memory: pip install "
                                 "'camdeploy[tensorrt]' (or the 'tensorrt-rtx' extra)") from None
    return cudart


def _check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(error, value...)`` tuple; raise with CUDA's message on error."""
    cudart = _cudart()
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        message = cudart.cudaGetErrorString(error)[1]
        message = message.decode() if isinstance(message, bytes) else str(message)
        raise CamdeployError(f"CUDA: {what} failed: {message}")
    return values[0] if len(values) == 1 else values


def gpu_descriptor(device: int = 0) -> str:
    """``name (compute capability)`` of the GPU, or :data:`NO_GPU` when CUDA (or cuda-python) sees none."""
    try:
        cudart = _cudart()
    except CamdeployError:
        return NO_GPU
    error, count = cudart.cudaGetDeviceCount()
    if int(error) != 0 or not count:
        return NO_GPU
    if device >= count:
        raise CamdeployError(f"--device {device}: CUDA sees {count} GPU(s)")
    props = _check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return f"{name.strip(chr(0))} (sm_{props.major}{props.minor})"


def require_gpu(device: int = 0) -> str:
    """The GPU descriptor, or a clear error saying why there is no usable GPU."""
    cudart = _cudart()
    error, count = cudart.cudaGetDeviceCount()
    if int(error) != 0 or not count:
        why = cudart.cudaGetErrorString(error)[1] if int(error) != 0 else b"no CUDA device"
        why = why.decode() if isinstance(why, bytes) else str(why)
        raise CamdeployError(f"the TensorRT runner needs an NVIDIA GPU: CUDA says {why!r}; engines can still be "
                             "built without one (`camdeploy build --rtx`), or use --backend ort")
    return gpu_descriptor(device)


def engine_key(onnx_bytes: bytes, module: str, version: str, gpu: str, options: EngineOptions) -> str:
    """Cache key: what makes two engines interchangeable."""
    fields = {"onnx": hashlib.sha256(onnx_bytes).hexdigest(), "module": module, "version": version, "gpu": gpu,
              "options": {k: v for k, v in asdict(options).items() if k != "module"}}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def _write_atomically(data: bytes, path: Path) -> None:
    def write(temporary: Path) -> None:
        temporary.write_bytes(data)

    write_checked(path, write, lambda temporary: None, label=f"engine {path}")


@dataclass
class BuiltEngine:
    path: Path
    cached: bool
    """True when the engine came from the cache instead of being built now."""
    module: str
    version: str
    gpu: str


def build_engine(onnx_path: str | os.PathLike[str], options: EngineOptions = EngineOptions(),
                 output: str | os.PathLike[str] | None = None, cache_folder: Path | None = None,
                 device: int = 0) -> BuiltEngine:
    """Build a serialized engine for ``onnx_path`` (or take it from the cache) and return its path;
    with ``output``, also write a copy there. Works without a GPU with TensorRT for RTX."""
    from camdeploy.cache import cache_dir
    from camdeploy.runtime.tensorrt_check import check_tensorrt

    options.validate()
    source = Path(onnx_path)
    try:
        onnx_bytes = source.read_bytes()
    except OSError as exc:
        raise CamdeployError(f"MODEL {source}: cannot read it ({exc.strerror or exc})") from exc
    trt = _tensorrt(options)
    gpu = gpu_descriptor(device)
    if gpu != NO_GPU:  # TensorRT builds for the current device: make it the one named in the key
        _check(_cudart().cudaSetDevice(device), "cudaSetDevice")
    key = engine_key(onnx_bytes, trt.__name__, trt.__version__, gpu, options)
    cached = (cache_folder or cache_dir() / "tensorrt") / f"{source.stem}-{key}.plan"
    hit = cached.is_file()
    if not hit:
        plan = _build(trt, source, options)
        if plan is None:  # say why: the parser's or the builder's complaint
            report = check_tensorrt(source, batch=options.batch, module=trt.__name__)
            problems = "; ".join(f"node {i.node} ({i.operator}): {i.description}" for i in report.issues)
            raise CamdeployError(f"TensorRT ({trt.__name__} {trt.__version__}) cannot build {source}: "
                                 f"{problems or report.build_error or 'the builder returned no engine'}")
        _write_atomically(plan, cached)
    if output is not None:
        _write_atomically(cached.read_bytes(), Path(output))
    return BuiltEngine(Path(output) if output is not None else cached, hit, trt.__name__, trt.__version__, gpu)


def _build(trt: ModuleType, source: Path, options: EngineOptions) -> bytes | None:
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # the only mode in TensorRT 11
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        return None
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "TF32"):
        (config.set_flag if options.tf32 else config.clear_flag)(trt.BuilderFlag.TF32)
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        profile.set_shape(tensor.name, *[tuple(b if d == -1 else d for d in dims) for b in options.batch])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    return None if plan is None else bytes(plan)


class _DeviceBuffer:
    """One cudaMalloc'd block, grown on demand."""

    def __init__(self) -> None:
        self.pointer = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.pointer = int(_check(_cudart().cudaMalloc(nbytes), "cudaMalloc"))
            self.nbytes = nbytes
        return self.pointer

    def free(self) -> None:
        if self.pointer:
            _check(_cudart().cudaFree(self.pointer), "cudaFree")
        self.pointer, self.nbytes = 0, 0


class TensorRTRunner(Runner):
    """Runs an exported camdeploy graph as a TensorRT engine on an NVIDIA GPU.

    Args:
        path: the ``.onnx`` file (its metadata gives preprocessing, T and the box threshold);
            the engine is built from it on first use and cached.
        options: :class:`EngineOptions` (batch profile, module, TF32).
        plan: a prebuilt engine (``camdeploy build --output``) to load instead of the cache.
        box_path: ``graph``, ``host`` or ``auto`` (graph when the ONNX has boxes: on a GPU they
            save copying every CAM to the host).
        device: CUDA device index.
    """

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike[str], options: EngineOptions = EngineOptions(),
                 box_threshold: float | None = None, spec: ModelSpec | None = None,
                 plan: str | os.PathLike[str] | None = None, box_path: str = "auto", device: int = 0):
        self.path = str(path)
        super().__init__(spec or read_spec(self.path), box_threshold)
        options.validate()
        self.options = options
        self.plan = Path(plan) if plan is not None else None
        self.box_path_choice = box_path
        self.box_path = "host"
        self.device = device
        self.gpu = ""
        self._trt: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, _DeviceBuffer] = {}
        self._batch_range = (options.batch[0], options.batch[2])
        self._weight: np.ndarray | None = None

    def open(self) -> None:
        import onnx

        cudart = _cudart()
        self.gpu = require_gpu(self.device)
        _check(cudart.cudaSetDevice(self.device), "cudaSetDevice")
        proto = onnx.load(self.path, load_external_data=False)
        has_boxes = has_box_outputs(proto)
        self.precision = proto_precision(proto)
        self.execution = f"TensorRT {self.precision}"
        self.box_path = resolve_box_path(self.box_path_choice, has_boxes, True,
                                         self.box_threshold == self.spec.box_threshold, self.path)
        plan_path = self.plan or build_engine(self.path, self.options, device=self.device).path
        trt = _tensorrt(self.options)
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        try:
            engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
        except OSError as exc:
            raise CamdeployError(f"engine {plan_path}: cannot read it ({exc.strerror or exc})") from exc
        if engine is None:
            raise CamdeployError(f"engine {plan_path}: TensorRT {trt.__version__} cannot load it (built by another "
                                 "version or for another GPU? rebuild it with `camdeploy build`)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._trt = trt
        self._engine = engine
        # The batch range the engine really takes (a prebuilt plan may differ from self.options).
        low, _, high = (shape[0] for shape in engine.get_tensor_profile_shape("images", 0))
        self._batch_range = (int(low), int(high))
        self._context = engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers = {n: _DeviceBuffer() for n in names}
        self.is_open = True

    def close(self) -> None:
        buffers, stream = list(self._buffers.values()), self._stream
        self._buffers, self._stream = {}, None
        self._context = self._engine = None
        self.is_open = False
        try:  # release everything even if one CUDA call fails (after a sticky error, say)
            for buffer in buffers:
                buffer.free()
        finally:
            if stream is not None:
                _check(_cudart().cudaStreamDestroy(stream), "cudaStreamDestroy")

    def _enqueue(self, images: np.ndarray, wanted: list[str]) -> dict[str, np.ndarray]:
        """Copy ``images`` in, run, copy ``wanted`` outputs back; all on the stream, one sync."""
        cudart, trt, context = _cudart(), self._trt, self._context
        low, high = self._batch_range
        if not low <= len(images) <= high:
            raise CamdeployError(f"batch of {len(images)}: the engine's profile takes {low} to {high} images; "
                                 "rebuild with a wider --batch min,opt,max")
        if not context.set_input_shape("images", images.shape):
            raise CamdeployError(f"TensorRT refused input shape {images.shape}")
        host: dict[str, np.ndarray] = {}
        for name in self._buffers:
            if name == "images":
                pointer = self._buffers[name].ensure(images.nbytes)
            else:
                shape = tuple(context.get_tensor_shape(name))
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
                host[name] = np.empty(shape, dtype=dtype)
                pointer = self._buffers[name].ensure(max(host[name].nbytes, 1))
            context.set_tensor_address(name, pointer)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(self._buffers["images"].pointer, images.ctypes.data, images.nbytes, h2d,
                                      self._stream), "cudaMemcpyAsync")
        if not context.execute_async_v3(int(self._stream)):
            raise CamdeployError("TensorRT: execute_async_v3 failed (see TensorRT's messages)")
        for name in wanted:
            _check(cudart.cudaMemcpyAsync(host[name].ctypes.data, self._buffers[name].pointer, host[name].nbytes,
                                          d2h, self._stream), "cudaMemcpyAsync")
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {name: host[name] for name in wanted}

    def _run(self, images: np.ndarray, features: bool) -> dict[str, np.ndarray]:
        wanted = ["logits", "classes", "scores", "cams"] + (["features"] if features else [])
        if self.box_path == "graph":
            wanted += ["boxes", "boxes_exact"]
        return self._enqueue(images, wanted)

    def time_gpu(self, images: np.ndarray, repeats: int = 20, warmup: int = 3) -> list[float]:
        """Seconds per inference measured with CUDA events around the engine alone (no copies)."""
        cudart = _cudart()
        self._enqueue(images, [])
        start = _check(cudart.cudaEventCreate(), "cudaEventCreate")
        end = _check(cudart.cudaEventCreate(), "cudaEventCreate")
        samples = []
        try:
            for i in range(warmup + repeats):
                _check(cudart.cudaEventRecord(start, self._stream), "cudaEventRecord")
                if not self._context.execute_async_v3(int(self._stream)):
                    raise CamdeployError("TensorRT: execute_async_v3 failed (see TensorRT's messages)")
                _check(cudart.cudaEventRecord(end, self._stream), "cudaEventRecord")
                _check(cudart.cudaEventSynchronize(end), "cudaEventSynchronize")
                if i >= warmup:
                    samples.append(float(_check(cudart.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))
                                   / 1000.0)
        finally:
            _check(cudart.cudaEventDestroy(start), "cudaEventDestroy")
            _check(cudart.cudaEventDestroy(end), "cudaEventDestroy")
        return samples

    def class_weight(self) -> np.ndarray:
        if self._weight is None:
            from camdeploy.runtime.onnxruntime_runner import read_class_weight

            self._weight = read_class_weight(self.path, len(self.spec.class_names))
        return self._weight
