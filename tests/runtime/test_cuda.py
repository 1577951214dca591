"""camdeploy's CUDA layer on a real GPU: :mod:`camdeploy.runtime.cuda` (device buffers, copies,
stream, events) and the TensorRT runner's buffer, stream and event logic, with a fake engine whose
execute step is a device-to-device copy. The fake-CUDA tests in test_tensorrt_runner.py only
simulate these calls over host memory; here every call goes to the GPU through cuda-python. They
need no TensorRT, and skip with CUDA's own reason without a GPU."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from camdeploy.errors import CamdeployError
from camdeploy.runtime import cuda
from camdeploy.runtime.tensorrt_engine import EngineOptions
from camdeploy.runtime.tensorrt_runner import TensorRTRunner

pytestmark = pytest.mark.cuda
SIZE = (32, 32)


def _free_bytes() -> int:
    free, _total = cuda.check(cuda.cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free)


def test_buffers_copies_stream_and_events_on_the_gpu():
    rt = cuda.cudart()
    assert "sm_" in cuda.require_gpu()
    kinds = rt.cudaMemcpyKind
    host = np.random.default_rng(0).normal(size=(64, 1024, 1024)).astype(np.float32)  # 256 MiB
    free_before = _free_bytes()
    a, b = cuda.DeviceBuffer(), cuda.DeviceBuffer()
    stream = cuda.check(rt.cudaStreamCreate(), "cudaStreamCreate")
    start, end = (cuda.check(rt.cudaEventCreate(), "cudaEventCreate") for _ in range(2))
    try:
        pointer = a.ensure(host.nbytes)
        assert pointer and a.nbytes == host.nbytes
        assert a.ensure(1024) == pointer and a.nbytes == host.nbytes, "a smaller request reuses the block"
        b.ensure(host.nbytes)
        assert _free_bytes() <= free_before - 2 * host.nbytes + (64 << 20), "the blocks are on the device"
        back = np.zeros_like(host)
        cuda.check(rt.cudaMemcpyAsync(a.pointer, host.ctypes.data, host.nbytes, kinds.cudaMemcpyHostToDevice,
                                      stream), "cudaMemcpyAsync")
        cuda.check(rt.cudaEventRecord(start, stream), "cudaEventRecord")
        cuda.check(rt.cudaMemcpyAsync(b.pointer, a.pointer, host.nbytes, kinds.cudaMemcpyDeviceToDevice, stream),
                   "cudaMemcpyAsync")
        cuda.check(rt.cudaEventRecord(end, stream), "cudaEventRecord")
        cuda.check(rt.cudaMemcpyAsync(back.ctypes.data, b.pointer, host.nbytes, kinds.cudaMemcpyDeviceToHost,
                                      stream), "cudaMemcpyAsync")
        cuda.check(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        np.testing.assert_array_equal(back, host)
        elapsed_ms = float(cuda.check(rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))
        assert 0 < elapsed_ms < 1000, "512 MiB moved on the device in well under a second"
        grown = a.ensure(2 * host.nbytes)
        assert a.nbytes == 2 * host.nbytes and grown
    finally:
        a.free()
        b.free()
        for event in (start, end):
            cuda.check(rt.cudaEventDestroy(event), "cudaEventDestroy")
        cuda.check(rt.cudaStreamDestroy(stream), "cudaStreamDestroy")
    assert a.pointer == 0 and a.nbytes == 0
    assert _free_bytes() >= free_before - (64 << 20), "free() gave the memory back"


def test_a_failing_cuda_call_is_one_clear_error():
    rt = cuda.cudart()
    with pytest.raises(CamdeployError, match=r"CUDA: cudaMalloc failed: "):
        cuda.check(rt.cudaMalloc(1 << 50), "cudaMalloc")  # 1 PiB: more than any GPU has


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import TorchvisionStyle, seeded

    from camdeploy.export.exporter import ExportOptions, export_onnx

    path = tmp_path_factory.mktemp("cuda-runner") / "tiny.onnx"
    export_onnx(seeded(TorchvisionStyle()), path, ExportOptions(input_size=SIZE, topk=3, source_model="tiny"))
    return path


def _copying_tensorrt(onnx_path, batches: list[np.ndarray]):
    """A TensorRT module whose engine holds, in device memory, the outputs ONNX Runtime computed for
    each of ``batches``; executing it copies the outputs of the batch of that size, device to
    device, to the addresses the runner set, and echoes the input into an ``echo`` output. Every
    copy, buffer, stream and event is real CUDA; only the network is canned."""
    import onnxruntime as ort

    rt = cuda.cudart()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    canned: dict[int, dict[str, cuda.DeviceBuffer]] = {}
    shapes: dict[int, dict[str, tuple[int, ...]]] = {}
    dtypes: dict[str, np.dtype] = {"images": np.dtype(np.float32), "echo": np.dtype(np.float32)}
    for x in batches:
        values = dict(zip(names, session.run(None, {"images": x}), strict=True))
        canned[len(x)], shapes[len(x)] = {}, {"echo": x.shape}
        for name, value in values.items():
            value = np.ascontiguousarray(value)
            buffer = cuda.DeviceBuffer()
            buffer.ensure(max(value.nbytes, 1))
            cuda.check(rt.cudaMemcpy(buffer.pointer, value.ctypes.data, value.nbytes,
                                     rt.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy")
            canned[len(x)][name], shapes[len(x)][name] = buffer, value.shape
            dtypes[name] = value.dtype
    tensors = ["images", *names, "echo"]
    executed: list[int] = []

    class Context:
        def __init__(self):
            self.addresses: dict[str, int] = {}
            self.shape: tuple[int, ...] = ()

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)
            return self.shape[0] in canned

        def get_tensor_shape(self, name):
            return shapes[self.shape[0]][name]

        def set_tensor_address(self, name, pointer):
            self.addresses[name] = int(pointer)

        def execute_async_v3(self, stream):
            d2d = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
            n = self.shape[0]
            for name in names:
                nbytes = int(np.prod(shapes[n][name])) * dtypes[name].itemsize
                cuda.check(rt.cudaMemcpyAsync(self.addresses[name], canned[n][name].pointer, nbytes, d2d, stream),
                           "cudaMemcpyAsync")
            nbytes = int(np.prod(self.shape)) * 4
            cuda.check(rt.cudaMemcpyAsync(self.addresses["echo"], self.addresses["images"], nbytes, d2d, stream),
                       "cudaMemcpyAsync")
            executed.append(n)
            return True

    class Engine:
        num_io_tensors = len(tensors)

        def get_tensor_name(self, i):
            return tensors[i]

        def get_tensor_dtype(self, name):
            return dtypes[name]

        def get_tensor_profile_shape(self, name, profile):
            return [(1, 3, *SIZE), (4, 3, *SIZE), (8, 3, *SIZE)]

        def create_execution_context(self):
            return Context()

    def free():
        for buffers in canned.values():
            for buffer in buffers.values():
                buffer.free()

    class Logger:
        ERROR = 0

        def __init__(self, level=0):
            self.level = level

    module = SimpleNamespace(__name__="tensorrt", __version__="canned", Logger=Logger,
                             Runtime=lambda _: SimpleNamespace(deserialize_cuda_engine=lambda data: Engine()),
                             nptype=lambda dtype: dtype)
    return module, executed, free


@pytest.mark.parametrize("box_source", ["graph", "host"])
def test_tensorrt_runner_buffers_stream_and_events_on_a_real_gpu(tiny, tmp_path, monkeypatch, box_source):
    from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

    x = np.random.default_rng(4).normal(size=(6, 3, *SIZE)).astype(np.float32)
    fake, executed, free = _copying_tensorrt(tiny, [x[:2], x])
    monkeypatch.setattr(EngineOptions, "tensorrt", lambda options: fake)
    plan = tmp_path / "canned.plan"
    plan.write_bytes(b"not an engine: the canned runtime ignores it")
    runner = TensorRTRunner(tiny, EngineOptions(batch=(1, 4, 8)), plan=plan, box_source=box_source)
    free_before = _free_bytes()
    try:
        with runner, OnnxRuntimeRunner(tiny, box_source="host") as reference:
            assert "sm_" in runner.gpu and runner.box_source == box_source
            small = runner.infer(x[:2], features=True)
            large = runner.infer(x)  # the buffers grow for the larger batch
            echo = runner.run_outputs(["echo"], x)["echo"]
            expected = reference.infer(x, features=True)
            samples = runner.time_device(x, repeats=5, warmup=2)
            assert {n: b.nbytes > 0 for n, b in runner._buffers.items()} == {n: True for n in runner._buffers}
        assert not runner._buffers and runner._stream is None, "close() releases buffers and stream"
        assert _free_bytes() >= free_before - (16 << 20)
    finally:
        free()
    np.testing.assert_array_equal(echo, x)
    np.testing.assert_array_equal(large.classes, expected.classes)
    np.testing.assert_array_equal(large.logits, expected.logits)
    np.testing.assert_allclose(large.cams, expected.cams, atol=1e-6)
    np.testing.assert_array_equal(large.boxes, expected.boxes)
    np.testing.assert_array_equal(small.boxes, expected.boxes[:2])
    np.testing.assert_array_equal(small.features, expected.features[:2])
    assert large.features is None
    assert len(samples) == 5 and all(0 < s < 1 for s in samples), "CUDA events time the execute step"
    assert executed[:3] == [2, 6, 6] and len(executed) >= 3 + 1 + 7, "infer, infer, echo, then time_device"
