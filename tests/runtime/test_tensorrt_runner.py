"""The TensorRT runner: engine building and caching (TensorRT for RTX builds without a GPU), the
errors without a GPU, and, on a machine with one, results equal to ONNX Runtime's."""

from __future__ import annotations

import numpy as np
import pytest

from camdeploy.cli import main
from camdeploy.errors import CamdeployError
from camdeploy.runtime import cuda as cuda_module
from camdeploy.runtime.cuda import NO_GPU, gpu_descriptor
from camdeploy.runtime.tensorrt_engine import EngineOptions, build_engine, engine_key
from camdeploy.runtime.tensorrt_runner import TensorRTRunner

SIZE = (32, 32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import TorchvisionStyle, seeded

    from camdeploy.export.exporter import ExportOptions, export_onnx

    path = tmp_path_factory.mktemp("trt-runner") / "tiny.onnx"
    export_onnx(seeded(TorchvisionStyle()), path, ExportOptions(input_size=SIZE, topk=3, source_model="tiny"))
    return path


def test_engine_key_depends_on_everything_that_changes_the_engine():
    base = engine_key(b"onnx", "tensorrt", "10.9", "GPU A (sm_89)", EngineOptions())
    assert base == engine_key(b"onnx", "tensorrt", "10.9", "GPU A (sm_89)", EngineOptions())
    others = [engine_key(b"onnx2", "tensorrt", "10.9", "GPU A (sm_89)", EngineOptions()),
              engine_key(b"onnx", "tensorrt_rtx", "10.9", "GPU A (sm_89)", EngineOptions()),
              engine_key(b"onnx", "tensorrt", "11.0", "GPU A (sm_89)", EngineOptions()),
              engine_key(b"onnx", "tensorrt", "10.9", "GPU B (sm_90)", EngineOptions()),
              engine_key(b"onnx", "tensorrt", "10.9", "GPU A (sm_89)", EngineOptions(batch=(1, 4, 8))),
              engine_key(b"onnx", "tensorrt", "10.9", "GPU A (sm_89)", EngineOptions(tf32=True))]
    assert len({base, *others}) == 7


@pytest.mark.parametrize(("options", "message"), [
    (EngineOptions(batch=(4, 2, 8)), r"--batch 4,2,8: expected min <= opt <= max"),
    (EngineOptions(batch=(0, 1, 1)), r"--batch 0,1,1"),
    (EngineOptions(module="trt"), r"module 'trt': expected tensorrt or tensorrt_rtx"),
])
def test_engine_options_are_checked(options, message):
    with pytest.raises(CamdeployError, match=message):
        options.validate()


@pytest.mark.tensorrt
def test_build_caches_and_copies_the_engine(tiny, tmp_path):
    cache = tmp_path / "cache"
    first = build_engine(tiny, EngineOptions(batch=(1, 2, 4)), cache_folder=cache)
    assert not first.cached and first.path.parent == cache and first.path.stat().st_size > 0
    again = build_engine(tiny, EngineOptions(batch=(1, 2, 4)), output=tmp_path / "tiny.plan", cache_folder=cache)
    assert again.cached and again.path == tmp_path / "tiny.plan"
    assert again.path.read_bytes() == first.path.read_bytes()
    other = build_engine(tiny, EngineOptions(batch=(1, 4, 8)), cache_folder=cache)
    assert not other.cached and other.path != first.path
    assert sorted(p.suffix for p in cache.iterdir()) == [".plan", ".plan"], "no partial files"
    assert first.gpu == gpu_descriptor()


@pytest.mark.tensorrt
def test_a_graph_tensorrt_rejects_names_the_node_and_leaves_nothing(tmp_path):
    from tiny_models import write_rejected_by_tensorrt

    path = write_rejected_by_tensorrt(tmp_path / "bad.onnx")
    cache = tmp_path / "cache"
    with pytest.raises(CamdeployError, match=r"cannot build .*bad.onnx: node bias_dq \(DequantizeLinear\)"):
        build_engine(path, cache_folder=cache, output=tmp_path / "bad.plan")
    assert not (tmp_path / "bad.plan").exists()
    assert not cache.exists() or not list(cache.iterdir())


@pytest.mark.tensorrt
def test_build_command(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CAMDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["build", str(tiny), "--output", str(tmp_path / "tiny.plan"), "--rtx", "--batch", "1,2,4"]) == 0
    out = capsys.readouterr().out
    assert "tensorrt_rtx" in out and "built in" in out and "batch profile 1,2,4" in out
    assert (tmp_path / "tiny.plan").stat().st_size > 0
    assert main(["build", str(tiny), "--rtx", "--batch", "1,2,4"]) == 0
    assert "from the engine cache" in capsys.readouterr().out
    assert main(["build", str(tiny), "--batch", "2,1,4"]) == 1
    assert "expected min <= opt <= max" in capsys.readouterr().err


def _no_gpu() -> bool:
    try:
        return gpu_descriptor() == NO_GPU
    except CamdeployError:
        return True


@pytest.mark.skipif(not _no_gpu(), reason="this machine has a GPU: the no-GPU error cannot happen here")
def test_without_a_gpu_the_runner_says_so(tiny, tmp_path):
    runner = TensorRTRunner(tiny)
    with pytest.raises(CamdeployError, match=r"needs (an NVIDIA GPU|cuda-python)"):
        runner.open()
    assert not runner.is_open
    code = main(["run", str(tiny), str(tmp_path), "--out", str(tmp_path / "out"), "--backend", "tensorrt"])
    assert code == 1


def test_tensorrt_options_belong_to_the_tensorrt_backend(tiny, tmp_path, capsys):
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    assert main(["run", str(tiny), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--rtx"]) == 1
    assert "--plan and --rtx are options of --backend tensorrt" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.tensorrt
@pytest.mark.parametrize("box_source", ["graph", "host"])
def test_tensorrt_equals_onnx_runtime(tiny, box_source):
    from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

    x = np.random.default_rng(0).normal(size=(5, 3, *SIZE)).astype(np.float32)
    with TensorRTRunner(tiny, EngineOptions(batch=(1, 4, 8)), box_source=box_source) as trt_runner, \
            OnnxRuntimeRunner(tiny, box_source="host") as ort_runner:
        a, b = trt_runner.infer(x), ort_runner.infer(x)
        assert trt_runner.box_source == box_source
        samples = trt_runner.time_device(x, repeats=3, warmup=1)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_allclose(a.cams, b.cams, atol=1e-3)
    same = (a.boxes == b.boxes).all(axis=-1).mean()
    assert same >= 0.9, "boxes differ only where the CAMs differ by rounding at the threshold"
    assert len(samples) == 3 and all(s > 0 for s in samples)


@pytest.mark.cuda
@pytest.mark.tensorrt
def test_tensorrt_refuses_a_batch_outside_its_profile(tiny):
    with TensorRTRunner(tiny, EngineOptions(batch=(1, 2, 2))) as runner, \
            pytest.raises(CamdeployError, match="profile takes 1 to 2 images"):
        runner.infer(np.zeros((3, 3, *SIZE), np.float32))


class _FakeCuda:
    """cuda-python's runtime API, over host memory: lets the runner's own logic (buffers, shapes,
    copies, stream, events) run on a machine without a GPU. It proves nothing about TensorRT."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = "h2d"
        cudaMemcpyDeviceToHost = "d2h"

    def __init__(self):
        self.memory: dict[int, bytearray] = {}
        self.calls: list[str] = []
        self._next = 1 << 20

    def _new(self, size: int) -> int:
        self._next += 1 << 20
        self.memory[self._next] = bytearray(size)
        return self._next

    def cudaGetDeviceCount(self):
        return 0, 1

    def cudaGetDeviceProperties(self, device):
        from types import SimpleNamespace

        return 0, SimpleNamespace(name=b"Fake GPU", major=8, minor=9)

    def cudaGetErrorString(self, error):
        return 0, b"fake error"

    def cudaSetDevice(self, device):
        return (0,)

    def cudaStreamCreate(self):
        return 0, 7

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaStreamSynchronize(self, stream):
        self.calls.append("sync")
        return (0,)

    def cudaMalloc(self, size):
        return 0, self._new(size)

    def cudaFree(self, pointer):
        del self.memory[pointer]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        import ctypes

        self.calls.append(kind)
        if kind == "h2d":
            self.memory[dst][:count] = ctypes.string_at(src, count)
        else:
            ctypes.memmove(dst, bytes(self.memory[src][:count]), count)
        return (0,)

    def cudaEventCreate(self):
        return 0, object()

    def cudaEventRecord(self, event, stream):
        return (0,)

    def cudaEventSynchronize(self, event):
        return (0,)

    def cudaEventElapsedTime(self, start, end):
        return 0, 1.5

    def cudaEventDestroy(self, event):
        return (0,)


def _fake_tensorrt(onnx_path, cuda):
    """A TensorRT module whose 'engine' runs the ONNX file on ONNX Runtime, reading and writing the
    fake device memory at the addresses the runner sets."""
    from types import SimpleNamespace

    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = ["images"] + [o.name for o in session.get_outputs()]
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}
    dtypes = {"images": np.float32} | {o.name: types[o.type] for o in session.get_outputs()}

    class Context:
        def __init__(self):
            self.addresses, self.shape, self.outputs = {}, None, {}

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)
            zeros = np.zeros(self.shape, np.float32)
            self.outputs = dict(zip(names[1:], session.run(None, {"images": zeros}), strict=True))
            return True

        def get_tensor_shape(self, name):
            return self.outputs[name].shape

        def set_tensor_address(self, name, pointer):
            self.addresses[name] = pointer

        def execute_async_v3(self, stream):
            count = int(np.prod(self.shape)) * 4
            images = np.frombuffer(bytes(cuda.memory[self.addresses["images"]][:count]), np.float32)
            for name, value in zip(names[1:], session.run(None, {"images": images.reshape(self.shape)}), strict=True):
                cuda.memory[self.addresses[name]][:value.nbytes] = value.tobytes()
            return True

    class Engine:
        num_io_tensors = len(names)

        def get_tensor_name(self, i):
            return names[i]

        def get_tensor_dtype(self, name):
            return dtypes[name]

        def get_tensor_profile_shape(self, name, profile):
            return [(1, 3, *SIZE), (4, 3, *SIZE), (8, 3, *SIZE)]

        def create_execution_context(self):
            return Context()

    class Logger:
        ERROR = 0

        def __init__(self, level=0):
            self.level = level

    return SimpleNamespace(
        __name__="tensorrt", __version__="fake", Logger=Logger,
        Runtime=lambda _: SimpleNamespace(deserialize_cuda_engine=lambda data: Engine()),
        nptype=lambda dtype: dtype)
_fake_tensorrt.__test__ = False  # type: ignore[attr-defined]


@pytest.mark.parametrize("box_source", ["graph", "host"])
def test_runner_logic_with_fake_cuda_and_engine(tiny, tmp_path, monkeypatch, box_source):
    from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

    cuda = _FakeCuda()
    fake = _fake_tensorrt(tiny, cuda)
    monkeypatch.setattr(cuda_module, "cudart", lambda: cuda)
    monkeypatch.setattr(EngineOptions, "tensorrt", lambda options: fake)
    plan = tmp_path / "fake.plan"
    plan.write_bytes(b"not an engine: the fake runtime ignores it")
    x = np.random.default_rng(2).normal(size=(6, 3, *SIZE)).astype(np.float32)
    runner = TensorRTRunner(tiny, EngineOptions(batch=(1, 4, 8)), plan=plan, box_source=box_source)
    with runner, OnnxRuntimeRunner(tiny, box_source="host") as reference:
        assert runner.gpu == "Fake GPU (sm_89)" and runner.box_source == box_source
        small, large = runner.infer(x[:2], features=True), runner.infer(x)  # buffers grow for the larger batch
        expected = reference.infer(x)
        with pytest.raises(CamdeployError, match="profile takes 1 to 8 images"):
            runner.infer(np.zeros((9, 3, *SIZE), np.float32))
        assert runner.time_device(x, repeats=2, warmup=1) == [0.0015, 0.0015]
    assert not cuda.memory, "close() frees every device buffer"
    np.testing.assert_array_equal(large.classes, expected.classes)
    np.testing.assert_allclose(large.cams, expected.cams, atol=1e-6)
    np.testing.assert_array_equal(large.boxes, expected.boxes)
    np.testing.assert_array_equal(small.boxes, expected.boxes[:2])
    assert small.features is not None and large.features is None
    assert cuda.calls[:2] == ["h2d", "d2h"] and cuda.calls.count("sync") >= 3


@pytest.mark.parametrize(("gpu", "runs"), [
    ("NVIDIA H200 (sm_90)", False), ("NVIDIA A100-SXM4-80GB (sm_80)", False), ("Tesla V100 (sm_70)", False),
    ("NVIDIA GeForce RTX 2080 Ti (sm_75)", True), ("NVIDIA GeForce RTX 3090 (sm_86)", True),
    ("NVIDIA GeForce RTX 4090 (sm_89)", True), ("NVIDIA GeForce RTX 5090 (sm_120)", True),
    ("NVIDIA GB10 (sm_121)", True), (NO_GPU, True),
])
def test_tensorrt_for_rtx_runs_only_on_the_gpus_it_supports(gpu, runs):
    from camdeploy.runtime.tensorrt_engine import rtx_supports

    assert rtx_supports(gpu) is runs


@pytest.mark.parametrize(("module", "message"), [
    (None, r"NVIDIA's tensorrt is not installed, and TensorRT for RTX does not run on NVIDIA H200 \(sm_90\): it "
           r"supports compute capabilities 7.5, 8.6, 8.9, 12.x only; install NVIDIA's tensorrt"),
    ("tensorrt_rtx", r"--rtx: TensorRT for RTX does not run on NVIDIA H200 \(sm_90\)"),
])
def test_tensorrt_for_rtx_is_refused_on_an_h200_never_used(tiny, tmp_path, monkeypatch, module, message):
    from types import SimpleNamespace

    rtx = SimpleNamespace(__name__="tensorrt_rtx", __version__="1.4")
    monkeypatch.setattr(EngineOptions, "tensorrt", lambda options: rtx)
    monkeypatch.setattr(cuda_module, "gpu_descriptor", lambda device=0: "NVIDIA H200 (sm_90)")
    monkeypatch.setattr(cuda_module, "require_gpu", lambda device=0: "NVIDIA H200 (sm_90)")
    monkeypatch.setattr(cuda_module, "cudart", lambda: SimpleNamespace(cudaSetDevice=lambda device: (0,)))
    with pytest.raises(CamdeployError, match=message):
        build_engine(tiny, EngineOptions(module=module), cache_folder=tmp_path / "cache")
    assert not (tmp_path / "cache").exists(), "nothing was built"
    runner = TensorRTRunner(tiny, EngineOptions(module=module))
    with pytest.raises(CamdeployError, match=message):
        runner.open()
    assert not runner.is_open


@pytest.mark.parametrize(("driver", "message"), [
    (False, r"needs an NVIDIA GPU: this machine has no NVIDIA driver \(libcuda cannot be loaded\), so no GPU; "),
    (True, r"needs an NVIDIA GPU: CUDA says 'fake error'; "),
])
def test_no_gpu_reason_names_a_missing_driver(monkeypatch, driver, message):
    cuda = _FakeCuda()
    monkeypatch.setattr(cuda, "cudaGetDeviceCount", lambda: (35, 0))  # cudaErrorInsufficientDriver
    monkeypatch.setattr(cuda_module, "cudart", lambda: cuda)
    monkeypatch.setattr(cuda_module, "has_driver", lambda: driver)
    with pytest.raises(CamdeployError, match=message):
        cuda_module.require_gpu()
