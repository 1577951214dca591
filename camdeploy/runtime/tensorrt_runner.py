"""TensorRT backend: run an engine built from the exported ONNX (:mod:`camdeploy.runtime.tensorrt_engine`)
on a CUDA stream, with cuda-python for device memory (no PyTorch needed).

Everything is imported lazily: ``tensorrt`` (or ``tensorrt_rtx``) and ``cuda-python``, from the
``tensorrt`` / ``tensorrt-rtx`` extras.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from camdeploy import graph
from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec, read_spec
from camdeploy.runtime import cuda
from camdeploy.runtime.runner import Runner, resolve_box_source
from camdeploy.runtime.tensorrt_engine import EngineOptions, build_engine, check_rtx_gpu


class TensorRTRunner(Runner):
    """Runs an exported camdeploy graph as a TensorRT engine on an NVIDIA GPU.

    Args:
        path: the ``.onnx`` file (its metadata gives preprocessing, T and the box threshold);
            the engine is built from it on first use and cached.
        options: :class:`EngineOptions` (batch profile, module, TF32).
        plan: a prebuilt engine (``camdeploy build --output``) to load instead of the cache.
        box_source: ``graph``, ``host`` or ``auto`` (graph when the ONNX has boxes: on a GPU they
            save copying every CAM to the host).
        device: CUDA device index.
    """

    name = "tensorrt"
    computes_on_cpu = False
    model_path: Path

    def __init__(self, path: str | os.PathLike[str], options: EngineOptions = EngineOptions(),
                 box_threshold: float | None = None, spec: ModelSpec | None = None,
                 plan: str | os.PathLike[str] | None = None, box_source: str = "auto", device: int = 0):
        self.model_path = Path(path)
        super().__init__(spec or read_spec(self.model_path), box_threshold)
        options.validate()
        self.options = options
        self.plan = Path(plan) if plan is not None else None
        self.box_source_choice = box_source
        self.device = device
        self.gpu = ""
        self._trt: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, cuda.DeviceBuffer] = {}
        self._has_graph_boxes = False
        self._batch_range = (options.batch[0], options.batch[2])
        self._weight: np.ndarray | None = None

    @property
    def path(self) -> str:
        return str(self.model_path)

    def open(self) -> None:
        cudart = cuda.cudart()
        self.gpu = cuda.require_gpu(self.device)
        cuda.check(cudart.cudaSetDevice(self.device), "cudaSetDevice")
        proto = graph.load(self.model_path)
        graph.check_contract(proto, self.spec, f"MODEL {self.model_path}")
        self._has_graph_boxes = graph.has_box_outputs(proto)
        self.precision = graph.precision(proto)
        self.execution = f"TensorRT {self.precision}"
        self.box_source = resolve_box_source(self.box_source_choice, has_graph_boxes=self._has_graph_boxes,
                                             prefer_graph=True,
                                             own_threshold=self.box_threshold == self.spec.box_threshold,
                                             model=self.model_path)
        trt = self.options.tensorrt()
        check_rtx_gpu(trt, self.gpu, self.options.module)
        plan_path = self.plan or build_engine(self.model_path, self.options, device=self.device).path
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        from camdeploy.graph import check_model_file

        check_model_file(plan_path, "--plan")
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
        self._stream = cuda.check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers = {n: cuda.DeviceBuffer() for n in names}
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
                cuda.check(cuda.cudart().cudaStreamDestroy(stream), "cudaStreamDestroy")

    def _enqueue(self, images: np.ndarray, wanted: list[str]) -> dict[str, np.ndarray]:
        """Copy ``images`` in, run, copy ``wanted`` outputs back; all on the stream, one sync."""
        cudart, trt, context = cuda.cudart(), self._trt, self._context
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
        cuda.check(cudart.cudaMemcpyAsync(self._buffers["images"].pointer, images.ctypes.data, images.nbytes, h2d,
                                      self._stream), "cudaMemcpyAsync")
        if not context.execute_async_v3(int(self._stream)):
            raise CamdeployError("TensorRT: execute_async_v3 failed (see TensorRT's messages)")
        for name in wanted:
            cuda.check(cudart.cudaMemcpyAsync(host[name].ctypes.data, self._buffers[name].pointer, host[name].nbytes,
                                          d2h, self._stream), "cudaMemcpyAsync")
        cuda.check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {name: host[name] for name in wanted}

    def run_outputs(self, names: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
        """The named engine outputs for a preprocessed batch, with no post-processing."""
        if not self.is_open:
            raise CamdeployError("tensorrt runner: call open() or use `with runner:` first")
        return self._enqueue(np.ascontiguousarray(images, dtype=np.float32), names)

    def box_sources(self) -> tuple[str, ...]:
        has_boxes = self._has_graph_boxes if self.is_open else graph.has_box_outputs(
            graph.load(self.model_path, weights=False))
        return ("host", "graph") if has_boxes else ("host",)

    def _run(self, images: np.ndarray, features: bool, outputs: str) -> dict[str, np.ndarray]:
        """The engine computes every output; only those asked for are copied back."""
        wanted = [*graph.CLASS_OUTPUTS, *(["features"] if features else [])]
        if outputs != "classes":
            if self.box_source == "graph":
                wanted += [*graph.BOX_OUTPUTS, *(["cams"] if outputs == "all" else [])]
            else:
                wanted.append("cams")
        return self._enqueue(images, wanted)

    def time_device(self, images: np.ndarray, repeats: int = 20, warmup: int = 3) -> list[float]:
        """Seconds per inference measured with CUDA events around the engine alone (no copies)."""
        cudart = cuda.cudart()
        self._enqueue(images, [])
        start = cuda.check(cudart.cudaEventCreate(), "cudaEventCreate")
        end = cuda.check(cudart.cudaEventCreate(), "cudaEventCreate")
        samples = []
        try:
            for i in range(warmup + repeats):
                cuda.check(cudart.cudaEventRecord(start, self._stream), "cudaEventRecord")
                if not self._context.execute_async_v3(int(self._stream)):
                    raise CamdeployError("TensorRT: execute_async_v3 failed (see TensorRT's messages)")
                cuda.check(cudart.cudaEventRecord(end, self._stream), "cudaEventRecord")
                cuda.check(cudart.cudaEventSynchronize(end), "cudaEventSynchronize")
                if i >= warmup:
                    samples.append(float(cuda.check(cudart.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))
                                   / 1000.0)
        finally:
            cuda.check(cudart.cudaEventDestroy(start), "cudaEventDestroy")
            cuda.check(cudart.cudaEventDestroy(end), "cudaEventDestroy")
        return samples

    def class_weight(self) -> np.ndarray:
        """``W [K, C]`` from the ONNX file (read when first asked)."""
        if self._weight is None:
            self._weight = graph.class_weight(graph.load(self.model_path), len(self.spec.class_names),
                                              f"MODEL {self.model_path}")
        return self._weight
