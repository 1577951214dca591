"""Q/DQ and FP16 variants of a tiny exported model."""

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from tiny_models import TorchvisionStyle, seeded

from camdeploy.calibration.data import CalibrationData
from camdeploy.calibration.quantize import (
    Int8Config,
    calibration_files,
    convert_fp16,
    head_nodes,
    quantize_int8,
)
from camdeploy.errors import CamdeployError
from camdeploy.export.exporter import ExportOptions, export_onnx
from camdeploy.metadata import read_spec
from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner, graph_precision

SIZE = (32, 32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quant")
    path = folder / "tiny.onnx"
    export_onnx(seeded(TorchvisionStyle()), path, ExportOptions(input_size=SIZE, topk=3, source_model="tiny"))
    rng = np.random.default_rng(0)
    images = []
    for i in range(48):
        images.append(folder / f"img{i:02d}.png")
        blob = cv2.GaussianBlur(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), (9, 9), 0)
        cv2.imwrite(str(images[-1]), blob)
    return path, images


def _zero_points(model):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]


def test_int8_for_tensorrt_is_symmetric_and_keeps_the_heads_float(tiny, tmp_path):
    path, images = tiny
    spec = read_spec(str(path))
    out = quantize_int8(path, tmp_path / "q.onnx", CalibrationData(images[:32], spec, progress=False))
    model = onnx.load(str(out))
    zero_points = _zero_points(model)
    assert zero_points, "no QuantizeLinear inserted"
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    # The head nodes of the float model are still there, unquantized, and read float weights.
    float_heads = set(head_nodes(onnx.load(str(path))))
    names = {n.name: n for n in model.graph.node}
    assert float_heads <= set(names)
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    weight = next(n for n in model.graph.node if n.op_type == "Gather").input[0]
    assert weight not in dequantized
    assert graph_precision(str(out)) == "int8"
    assert calibration_files(out) == [p.resolve() for p in images[:32]]
    assert list(tmp_path.iterdir()) == [out]


def test_int8_round_trip_agrees_with_fp32(tiny, tmp_path):
    path, images = tiny
    spec = read_spec(str(path))
    out = quantize_int8(path, tmp_path / "q.onnx", CalibrationData(images[:32], spec, progress=False))
    x = next(iter(CalibrationData(images[32:], spec, batch_size=16, progress=False)))["images"]
    with OnnxRuntimeRunner(path) as fp32, OnnxRuntimeRunner(out) as int8:
        a, b = fp32.infer(x), int8.infer(x)
    agree = (a.classes[:, 0] == b.classes[:, 0]).mean()
    assert agree >= 0.75, agree
    assert np.abs(a.logits - b.logits).max() < 0.25 * np.abs(a.logits).max()


def test_int8_for_cpu_uses_uint8_activations(tiny, tmp_path):
    path, images = tiny
    data = CalibrationData(images[:16], read_spec(str(path)), progress=False)
    out = quantize_int8(path, tmp_path / "q.onnx", data, Int8Config(method="minmax", target="cpu"))
    assert {z.dtype for z in _zero_points(onnx.load(str(out)))} == {np.dtype(np.uint8)}
    x = next(iter(CalibrationData(images[32:], data.spec, batch_size=16, progress=False)))["images"]
    with OnnxRuntimeRunner(path) as fp32, OnnxRuntimeRunner(out) as int8:
        agree = (fp32.infer(x).classes[:, 0] == int8.infer(x).classes[:, 0]).mean()
    assert agree >= 0.75, agree


def test_entropy_and_percentile_calibration_run(tiny, tmp_path):
    path, images = tiny
    data = CalibrationData(images[:16], read_spec(str(path)), progress=False)
    for method in ("entropy", "percentile"):
        out = quantize_int8(path, tmp_path / f"{method}.onnx", data, Int8Config(method=method))
        assert graph_precision(str(out)) == "int8"


def test_bad_int8_options(tiny, tmp_path):
    path, images = tiny
    data = CalibrationData(images[:4], read_spec(str(path)), progress=False)
    with pytest.raises(CamdeployError, match="--method 'max'"):
        quantize_int8(path, tmp_path / "q.onnx", data, Int8Config(method="max"))
    with pytest.raises(CamdeployError, match="--target 'gpu'"):
        quantize_int8(path, tmp_path / "q.onnx", data, Int8Config(target="gpu"))


def test_fp16_keeps_float32_io_and_matches(tiny, tmp_path):
    path, _ = tiny
    out = convert_fp16(path, tmp_path / "h.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert all(i.type == "tensor(float)" for i in session.get_inputs())
    assert graph_precision(str(out)) == "fp16"
    x = np.random.default_rng(1).normal(size=(4, 3, *SIZE)).astype(np.float32)
    with OnnxRuntimeRunner(path) as fp32, OnnxRuntimeRunner(out) as fp16:
        a, b = fp32.infer(x), fp16.infer(x)
    np.testing.assert_allclose(a.logits, b.logits, atol=2e-2 * np.abs(a.logits).max())
    assert b.cams.dtype == np.float32 and float(b.cams.max()) <= 1.0


@pytest.mark.parametrize("variant", ["int8-tensorrt", "int8-cpu", "fp16"])
def test_variants_keep_the_box_graph_float_and_exact(tiny, tmp_path, variant):
    from camdeploy.runtime.boxes import cam_boxes

    path, images = tiny
    out = tmp_path / f"{variant}.onnx"
    if variant == "fp16":
        convert_fp16(path, out)
    else:
        data = CalibrationData(images[:16], read_spec(str(path)), progress=False)
        quantize_int8(path, out, data, Int8Config(target=variant.split("-")[1]))
    model = onnx.load(str(out))
    box_nodes = [n for n in model.graph.node if n.name.startswith("boxes_")]
    assert box_nodes and not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in box_nodes)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(8).normal(size=(8, 3, *SIZE)).astype(np.float32)
    cams, boxes, exact = session.run(["cams", "boxes", "boxes_exact"], {"images": x})
    assert exact.all()
    np.testing.assert_array_equal(boxes, cam_boxes(cams, 0.2))
