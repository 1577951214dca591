"""ONNX Runtime and the PyTorch reference behind one interface, on a tiny exported model."""


import numpy as np
import onnxruntime as ort
import pytest
from tiny_models import TorchvisionStyle, seeded

from camdeploy.errors import CamdeployError
from camdeploy.export.exporter import ExportOptions, export_onnx
from camdeploy.export.reference import TorchRunner
from camdeploy.runtime.boxes import cam_boxes
from camdeploy.runtime.images import Frame
from camdeploy.runtime.onnxruntime_runner import GRAPH_BOXES_FASTER, OnnxRuntimeRunner

SIZE = (32, 32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = seeded(TorchvisionStyle())
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    report = export_onnx(model, path, ExportOptions(input_size=SIZE, topk=3, source_model="tiny"))
    return model, path, report.spec


def batch(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, *SIZE)).astype(np.float32)


def test_backends_return_the_same_result(tiny):
    model, path, spec = tiny
    x = batch(5)
    with OnnxRuntimeRunner(path) as onnx_runner, TorchRunner(model, spec) as torch_runner:
        a, b = onnx_runner.infer(x), torch_runner.infer(x)
    assert len(a) == len(b) == 5
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_allclose(a.cams, b.cams, atol=1e-4)
    assert a.boxes.shape == (5, 3, 4) and a.boxes.dtype == np.float32
    np.testing.assert_array_equal(a.boxes, cam_boxes(a.cams, spec.box_threshold))


def test_box_threshold_override_changes_boxes(tiny):
    _, path, _ = tiny
    x = batch(4, seed=3)
    with OnnxRuntimeRunner(path) as loose, OnnxRuntimeRunner(path, box_threshold=0.9) as tight:
        a, b = loose.infer(x), tight.infer(x)
    np.testing.assert_array_equal(b.boxes, cam_boxes(b.cams, 0.9))
    areas = lambda r: (r.boxes[..., 2] - r.boxes[..., 0]) * (r.boxes[..., 3] - r.boxes[..., 1])  # noqa: E731
    assert np.all(areas(b) <= areas(a)) and np.any(areas(b) < areas(a))


def test_box_sources_give_the_same_boxes(tiny):
    _, path, _ = tiny
    x = batch(6, seed=5)
    with OnnxRuntimeRunner(path, box_source="graph") as graph, OnnxRuntimeRunner(path, box_source="host") as host:
        a, b = graph.infer(x), host.infer(x)
        assert (graph.box_source, host.box_source) == ("graph", "host")
        assert "boxes" not in [o.name for o in host._sessions["main"].get_outputs()], "host path cuts the box nodes"
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.cams, b.cams)


def test_auto_box_source_per_provider_and_threshold(tiny):
    _, path, _ = tiny
    with OnnxRuntimeRunner(path) as cpu, OnnxRuntimeRunner(path, box_threshold=0.5) as override:
        assert cpu.box_source == ("graph" if GRAPH_BOXES_FASTER["cpu"] else "host")
        assert override.box_source == "host", "the graph's boxes are for the model's own threshold"
    assert GRAPH_BOXES_FASTER["tensorrt"] and GRAPH_BOXES_FASTER["cuda"]


def test_graph_box_source_errors(tiny, tmp_path):
    _, path, _ = tiny
    with pytest.raises(CamdeployError, match="--box-source graph: the graph's boxes use the model's own threshold"):
        OnnxRuntimeRunner(path, box_threshold=0.5, box_source="graph").open()
    host_only = tmp_path / "host.onnx"
    export_onnx(seeded(TorchvisionStyle()), host_only, ExportOptions(input_size=SIZE, topk=3, graph_boxes="off"))
    with pytest.raises(CamdeployError, match="has no boxes output; re-export it with `camdeploy export --graph-boxes"):
        OnnxRuntimeRunner(host_only, box_source="graph").open()
    with pytest.raises(CamdeployError, match="--box-source 'fast': expected one of auto, graph, host"):
        OnnxRuntimeRunner(path, box_source="fast").open()


def test_maps_the_graph_flags_are_boxed_on_the_host(tiny, monkeypatch):
    _, path, _ = tiny
    x = batch(3, seed=6)
    with OnnxRuntimeRunner(path, box_source="graph") as runner:
        real = runner._fetch

        def flagged(session, names, images):
            out = real(session, names, images)
            if "boxes" in out:
                out["boxes"] = np.full_like(out["boxes"], -1.0)  # wrong wherever the host does not step in
                out["boxes_exact"] = np.zeros_like(out["boxes_exact"])
            return out

        monkeypatch.setattr(runner, "_fetch", flagged)
        result = runner.infer(x)
        no_maps = runner.infer(x, outputs="boxes")  # the maps are fetched again for the flagged boxes
    np.testing.assert_array_equal(result.boxes, cam_boxes(result.cams, 0.2))
    np.testing.assert_array_equal(no_maps.boxes, result.boxes)
    assert no_maps.cams is None


def test_infer_images_maps_boxes_to_original_pixels(tiny):
    _, path, _ = tiny
    frames = [Frame(64, 96, 2.0, 3.0), Frame(320, 32, 10.0, 1.0)]
    with OnnxRuntimeRunner(path) as runner:
        plain = runner.infer(batch(2))
        mapped = runner.infer_images(batch(2), frames)
    np.testing.assert_allclose(mapped.boxes[0], plain.boxes[0] * [2, 3, 2, 3])
    np.testing.assert_allclose(mapped.boxes[1], plain.boxes[1] * [10, 1, 10, 1])


def test_infer_before_open_and_bad_shapes_are_refused(tiny):
    _, path, _ = tiny
    runner = OnnxRuntimeRunner(path)
    with pytest.raises(CamdeployError, match="call open"):
        runner.infer(batch(1))
    with runner, pytest.raises(CamdeployError, match=r"images: got shape \(1, 3, 16, 16\); expected \[N, 3, 32, 32\]"):
        runner.infer(np.zeros((1, 3, 16, 16), np.float32))


def test_bad_runner_arguments(tiny):
    _, path, _ = tiny
    with pytest.raises(CamdeployError, match="--provider 'rocm': expected one of cpu, cuda, tensorrt"):
        OnnxRuntimeRunner(path, provider="rocm")
    with pytest.raises(CamdeployError, match="--threads 0"):
        OnnxRuntimeRunner(path, threads=0)
    with pytest.raises(CamdeployError, match="--box-threshold 2"):
        OnnxRuntimeRunner(path, box_threshold=2)
    with pytest.raises(CamdeployError, match=r"MODEL .*missing\.onnx: no such file"):
        OnnxRuntimeRunner(path.parent / "missing.onnx")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this machine has CUDA; the GPU test below covers the provider")
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_unavailable_provider_is_an_error_not_a_silent_cpu_fallback(tiny, provider):
    _, path, _ = tiny
    with pytest.raises(CamdeployError, match=f"--provider {provider}: ONNX Runtime .* offers only"):
        OnnxRuntimeRunner(path, provider=provider).open()


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_a_provider_that_does_not_become_active_is_an_error(tiny, monkeypatch):
    """ONNX Runtime accepts an unusable provider and quietly runs on the CPU; the runner must not."""
    _, path, _ = tiny
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        pytest.skip("CUDA works here; the fallback cannot be provoked")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*available, "CUDAExecutionProvider"])
    with pytest.raises(CamdeployError, match="--provider cuda: ONNX Runtime fell back to CPUExecutionProvider"):
        OnnxRuntimeRunner(path, provider="cuda").open()


@pytest.mark.gpu
def test_cuda_provider_runs_and_matches_cpu(tiny):
    _, path, _ = tiny
    x = batch(4)
    with OnnxRuntimeRunner(path, provider="cuda") as gpu, OnnxRuntimeRunner(path) as cpu:
        assert gpu.active_providers[0] == "CUDAExecutionProvider"
        a, b = gpu.infer(x), cpu.infer(x)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4, rtol=1e-4)  # IEEE fp32: TF32 would miss this
    np.testing.assert_allclose(a.cams, b.cams, atol=1e-4)


def test_torch_runner_refuses_a_model_with_other_classes(tiny):
    _, _, spec = tiny
    with pytest.raises(CamdeployError, match="has 7 classes but the exported model has 10"):
        TorchRunner(seeded(TorchvisionStyle(classes=7)), spec).open()


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:0", ""])
def test_torch_device_is_checked_for_form(tiny, device):
    model, _, spec = tiny
    with pytest.raises(CamdeployError, match=r"--device .*: expected cpu, cuda or cuda:N"):
        TorchRunner(model, spec, device=device)


def test_torch_runner_on_cpu_device_says_where_it_runs(tiny):
    model, _, spec = tiny
    x = batch(3, seed=7)
    with TorchRunner(model, spec, device="cpu") as explicit, TorchRunner(model, spec) as default:
        a, b = explicit.infer(x), default.infer(x)
        assert explicit.describe()["device"] == "cpu" and explicit.computes_on_cpu
    np.testing.assert_array_equal(a.boxes, b.boxes)


def test_torch_on_cuda_without_a_gpu_is_one_clear_error(tiny, monkeypatch):
    import torch

    model, _, spec = tiny
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runner = TorchRunner(model, spec, device="cuda")
    assert not runner.computes_on_cpu and runner.execution == "PyTorch eager, fp32, cuda"
    with pytest.raises(CamdeployError, match=r"--device cuda: PyTorch .* sees no CUDA GPU; use --device cpu"):
        runner.open()
    assert not runner.is_open


def test_torch_on_a_cuda_index_that_does_not_exist(tiny, monkeypatch):
    import torch

    model, _, spec = tiny
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(CamdeployError, match=r"--device cuda:3: PyTorch sees 1 CUDA GPU"):
        TorchRunner(model, spec, device="cuda:3").open()


def test_ieee_fp32_switches_tf32_off_and_restores_it():
    import torch

    from camdeploy.export.reference import _ieee_fp32

    conv = torch.backends.cudnn.conv
    before = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    with _ieee_fp32():
        assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before


def test_device_reaches_the_backends_that_take_it(tiny):
    from camdeploy.backends import RunnerOptions, cuda_index, make_runner

    model, path, spec = tiny
    runner = make_runner("torch", path, RunnerOptions(torch_model=model, device="cuda:1"), spec)
    assert isinstance(runner, TorchRunner) and runner.device == "cuda:1"
    assert make_runner("torch", path, RunnerOptions(torch_model=model), spec).device == "cpu"
    assert make_runner("tensorrt", path, RunnerOptions(device="cuda:2"), spec).device == 2
    assert [cuda_index(d) for d in (None, "cuda", "cuda:3")] == [0, 0, 3]
    with pytest.raises(CamdeployError, match=r"--device 'cpu': TensorRT runs on an NVIDIA GPU"):
        make_runner("tensorrt", path, RunnerOptions(device="cpu"), spec)
    with pytest.raises(CamdeployError, match=r"--device cuda: ONNX Runtime chooses its device with --provider"):
        make_runner("ort", path, RunnerOptions(device="cuda"), spec)
    assert RunnerOptions(device="cuda").for_backend("ort").device is None
    assert RunnerOptions(device="cuda").for_backend("tensorrt").device == "cuda"


def test_run_command_takes_a_device_for_the_reference(tiny, tmp_path, capsys, monkeypatch):
    import cv2
    import torch

    from camdeploy.cli import main

    _, path, _ = tiny
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cv2.imwrite(str(tmp_path / "a.png"), np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    model_arg = ["--model", "tiny_models:TorchvisionStyle"]
    assert main(["run", str(path), str(tmp_path / "a.png"), "--out", str(tmp_path / "ref"), "--backend", "torch",
                 "--device", "cpu", *model_arg]) == 0
    assert main(["run", str(path), str(tmp_path / "a.png"), "--out", str(tmp_path / "gpu"), "--backend", "torch",
                 "--device", "cuda", *model_arg]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda: PyTorch" in err[0] and "sees no CUDA GPU" in err[0]
    assert not (tmp_path / "gpu" / "results.jsonl").exists()


@pytest.mark.torch_cuda
def test_torch_reference_on_cuda_equals_cpu(tiny):
    model, _, spec = tiny
    x = batch(6, seed=11)
    with TorchRunner(model, spec, device="cpu") as cpu:
        a, weight = cpu.infer(x, features=True), cpu.class_weight()
    try:
        with TorchRunner(model, spec, device="cuda") as gpu:
            b = gpu.infer(x, features=True)
            np.testing.assert_array_equal(gpu.class_weight(), weight)
            assert next(model.parameters()).is_cuda, "the model runs on the GPU"
    finally:
        model.to("cpu")  # the module fixture is shared with the other tests
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(a.features, b.features, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(a.cams, b.cams, atol=1e-4)
    assert (a.boxes == b.boxes).all(axis=-1).mean() >= 0.9, "boxes differ only where CAMs round across tau"


@pytest.mark.parametrize(("provider", "expected"), [
    ("cuda", [{"use_tf32": "0"}, {}]),
    ("tensorrt", [None, {"use_tf32": "0"}, {}]),
])
def test_cuda_provider_computes_in_ieee_fp32(tiny, monkeypatch, provider, expected):
    """ONNX Runtime's CUDA provider enables TensorFloat-32 unless told not to; the runner tells it."""
    _, path, _ = tiny
    seen = {}

    def spy(model, sess_options=None, providers=None, provider_options=None):
        seen["providers"], seen["options"] = providers, provider_options
        raise RuntimeError("spied")

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                                 "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", spy)
    with pytest.raises(CamdeployError, match="spied"):
        OnnxRuntimeRunner(path, provider=provider).open()
    assert [o if e is not None else None for o, e in zip(seen["options"], expected, strict=True)] == expected
