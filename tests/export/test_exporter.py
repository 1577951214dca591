import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tiny_models import Custom, ResNetStyle, TorchvisionStyle, seeded

from camdeploy.errors import CamdeployError
from camdeploy.export import exporter
from camdeploy.export.cam_head import OUTPUT_NAMES, CamModel
from camdeploy.export.contract import find_contract
from camdeploy.export.exporter import ExportOptions, export_onnx
from camdeploy.metadata import ModelSpec, Normalization, read_spec

SIZE = (32, 32)
OPTIONS = ExportOptions(input_size=SIZE, topk=3, source_model="tiny")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    model = seeded(TorchvisionStyle())
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    report = export_onnx(model, path, OPTIONS)
    return model, path, report


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnx_runtime_equals_pytorch_for_every_output(tiny_export, batch):
    model, path, _ = tiny_export
    cam_model = CamModel(find_contract(model, SIZE), 3, SIZE).eval()
    x = torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = dict(zip(OUTPUT_NAMES, (t.numpy() for t in cam_model(x)), strict=True))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"images": x.numpy()}), strict=True))
    # fp32 tolerance: the graph and eager PyTorch differ only by kernel rounding.
    np.testing.assert_array_equal(got["classes"], expected["classes"])
    for name in ("logits", "features", "scores", "cams"):
        assert got[name].shape == expected[name].shape
        np.testing.assert_allclose(got[name], expected[name], atol=1e-4, rtol=1e-4, err_msg=name)


def test_graph_interface_and_self_contained_file(tiny_export):
    _, path, report = tiny_export
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == [*OUTPUT_NAMES, "boxes", "boxes_exact"]
    assert report.graph_boxes and "in the graph" in report.boxes_note
    assert report.max_abs_error["boxes"] == 0.0, "every verification map was handled exactly"
    batch_dims = {o.type.tensor_type.shape.dim[0].dim_param for o in proto.graph.output}
    assert len(batch_dims) == 1 and batch_dims != {""}, "batch dimension must be dynamic"
    assert list(path.parent.iterdir()) == [path], "no external data or temporary files"
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert report.max_abs_error["cams"] < 1e-3


def test_metadata_describes_the_model(tiny_export):
    _, path, _ = tiny_export
    spec = read_spec(str(path))
    assert spec.class_names == tuple(f"class {i}" for i in range(10))
    assert (spec.input_height, spec.input_width, spec.topk, spec.box_threshold) == (32, 32, 3, 0.2)
    assert (spec.pooling, spec.color_order, spec.layout, spec.source_model) == ("avg", "RGB", "NCHW", "tiny")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["camdeploy.pixel_scale"]) == [1 / 255] * 3
    assert "x = pixel * scale + offset" in props["camdeploy.normalization"]
    assert props["camdeploy.version"]


def test_metadata_round_trip():
    spec = ModelSpec(("a", "b"), 10, 12, Normalization.from_mean_std((0.5, 0.4, 0.3), (0.2, 0.2, 0.25)),
                     2, 0.35, "m:f", pooling="max", resize="crop", camdeploy_version="9")
    assert ModelSpec.from_props(spec.to_props()) == spec


def test_missing_metadata_is_named():
    with pytest.raises(CamdeployError, match=r"metadata key 'camdeploy.topk' is missing"):
        ModelSpec.from_props({"camdeploy.class_names": "[]"} | {
            k: v for k, v in ModelSpec(("a",), 1, 1, Normalization((1, 1, 1), (0, 0, 0)), 1, 0.2, "x")
            .to_props().items() if k != "camdeploy.topk"})


def test_gmp_and_override_and_resnet_export(tmp_path):
    for model, options in [
        (seeded(Custom()), ExportOptions(input_size=SIZE, topk=2, feature_module="body", linear_module="out")),
        (seeded(ResNetStyle()), ExportOptions(input_size=SIZE, topk=7, verify_batches=(2,))),
    ]:
        report = export_onnx(model, tmp_path / f"{type(model).__name__}.onnx", options)
        assert report.max_abs_error["logits"] < 1e-4
    assert read_spec(str(tmp_path / "Custom.onnx")).pooling == "max"


def test_failed_verification_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous export")

    def broken(*args, **kwargs):
        raise CamdeployError("verification failed: output 'cams' differs")

    monkeypatch.setattr(exporter, "_verify", broken)
    with pytest.raises(CamdeployError, match="verification failed"):
        export_onnx(seeded(TorchvisionStyle()), target, OPTIONS)
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_tolerance_exceeded_reports_the_observed_error(tmp_path, monkeypatch):
    monkeypatch.setitem(exporter.TOLERANCE, "logits", -1.0)  # no error can be below it
    with pytest.raises(CamdeployError, match=r"output 'logits' differs between ONNX Runtime and "
                       r"PyTorch by up to [0-9.e-]+ at batch 1 \(tolerance -"):
        export_onnx(seeded(TorchvisionStyle()), tmp_path / "m.onnx", OPTIONS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "output", "message"),
    [
        (ExportOptions(input_size=SIZE, topk=11), "m.onnx", r"--topk 11: expected 1..10"),
        (ExportOptions(input_size=SIZE, topk=0), "m.onnx", r"--topk 0: expected 1..10"),
        (ExportOptions(input_size=SIZE, box_threshold=1.5), "m.onnx", r"--box-threshold 1.5"),
        (ExportOptions(input_size=SIZE, class_names=("a", "b")), "m.onnx", r"--labels: 2 names for a model with 10"),
        (OPTIONS, "m.pt", r"--output .*m.pt: expected a path ending in .onnx"),
    ],
)
def test_bad_options_are_refused_before_writing(tmp_path, options, output, message):
    with pytest.raises(CamdeployError, match=message):
        export_onnx(seeded(TorchvisionStyle()), tmp_path / output, options)
    assert list(tmp_path.iterdir()) == []


def test_graph_boxes_equal_host_boxes_of_the_graph_cams(tiny_export):
    from camdeploy.runtime.boxes import cam_boxes

    _, path, _ = tiny_export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(4).normal(size=(16, 3, *SIZE)).astype(np.float32)
    cams, boxes, exact = session.run(["cams", "boxes", "boxes_exact"], {"images": x})
    assert exact.all()
    np.testing.assert_array_equal(boxes, cam_boxes(cams, 0.2))


def test_host_boxes_leave_the_graph_without_box_outputs(tmp_path):
    path = tmp_path / "host.onnx"
    report = export_onnx(seeded(TorchvisionStyle()), path, ExportOptions(
        input_size=SIZE, topk=3, source_model="tiny", graph_boxes="off"))
    assert [o.name for o in onnx.load(str(path)).graph.output] == list(OUTPUT_NAMES)
    assert not report.graph_boxes and "host" in report.boxes_note


def test_graph_boxes_beyond_the_tensorrt_topk_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "TENSORRT_TOPK_LIMIT", 10)
    with pytest.raises(CamdeployError, match=r"--graph-boxes on: .* exceed TensorRT's TopK limit of 10"):
        export_onnx(seeded(TorchvisionStyle()), tmp_path / "g.onnx", ExportOptions(
            input_size=SIZE, topk=3, source_model="tiny", graph_boxes="on"))
    assert not list(tmp_path.iterdir())
    report = export_onnx(seeded(TorchvisionStyle()), tmp_path / "a.onnx", ExportOptions(
        input_size=SIZE, topk=3, source_model="tiny"))
    assert not report.graph_boxes and "exceed" in report.boxes_note


def test_unknown_graph_boxes_choice_is_refused(tmp_path):
    with pytest.raises(CamdeployError, match=r"--graph-boxes 'gpu': expected one of auto, on, off"):
        export_onnx(seeded(TorchvisionStyle()), tmp_path / "x.onnx", ExportOptions(input_size=SIZE, graph_boxes="gpu"))
