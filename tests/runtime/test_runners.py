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
        np.testing.assert_allclose(gpu.infer(x).cams, cpu.infer(x).cams, atol=1e-3)


def test_torch_runner_refuses_a_model_with_other_classes(tiny):
    _, _, spec = tiny
    with pytest.raises(CamdeployError, match="has 7 classes but the exported model has 10"):
        TorchRunner(seeded(TorchvisionStyle(classes=7)), spec).open()
