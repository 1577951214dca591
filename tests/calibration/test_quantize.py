"""Q/DQ and FP16 variants of a tiny exported model."""

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from tiny_models import TorchvisionStyle, seeded

from camdeploy import graph
from camdeploy.calibration.data import CalibrationData
from camdeploy.calibration.quantize import (
    Int8Config,
    convert_fp16,
    head_nodes,
    quantize_int8,
)
from camdeploy.errors import CamdeployError
from camdeploy.export.exporter import ExportOptions, export_onnx
from camdeploy.graph import calibration_files
from camdeploy.metadata import read_spec
from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

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
    assert graph.precision(graph.load(out)) == "int8"
    assert calibration_files(out) == [str(p.resolve()) for p in images[:32]]
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


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_every_method_runs_with_a_last_smaller_batch(tiny, tmp_path, method, target):
    path, images = tiny
    data = CalibrationData(images[:13], read_spec(str(path)), batch_size=8, progress=False)  # batches of 8 and 5
    out = quantize_int8(path, tmp_path / f"{method}.onnx", data, Int8Config(method=method, target=target))
    assert graph.precision(graph.load(out)) == "int8"
    x = next(iter(CalibrationData(images[32:], data.spec, batch_size=16, progress=False)))["images"]
    with OnnxRuntimeRunner(path) as fp32, OnnxRuntimeRunner(out) as int8:
        agree = (fp32.infer(x).classes[:, 0] == int8.infer(x).classes[:, 0]).mean()
    assert agree >= 0.75, (method, target, agree)


def test_targets_are_recorded_and_run_as_planned(tiny, tmp_path):
    """TensorRT-target graphs run simulated (what TensorRT computes), CPU-target graphs on int8
    kernels, and the runner really hands that choice to ONNX Runtime."""
    from camdeploy.runtime.int8 import SIMULATE, quant_info

    path, images = tiny
    data = CalibrationData(images[:16], read_spec(str(path)), progress=False)
    trt = quantize_int8(path, tmp_path / "trt.onnx", data)
    cpu = quantize_int8(path, tmp_path / "cpu.onnx", data, Int8Config(target="cpu"))
    seven = quantize_int8(path, tmp_path / "seven.onnx", data, Int8Config(target="cpu", reduce_range=True))
    assert quant_info(onnx.load(str(trt))).target == "tensorrt"
    assert quant_info(onnx.load(str(cpu))).target == "cpu" and quant_info(onnx.load(str(cpu))).weight_max == 127
    assert quant_info(onnx.load(str(seven))).weight_max <= 64
    x = np.random.default_rng(2).normal(size=(4, 3, *SIZE)).astype(np.float32)
    options = ort.SessionOptions()
    for key, value in SIMULATE.items():
        options.add_session_config_entry(key, value)
    simulated = ort.InferenceSession(str(trt), options, providers=["CPUExecutionProvider"])
    fused = ort.InferenceSession(str(trt), providers=["CPUExecutionProvider"])
    with OnnxRuntimeRunner(trt) as runner:
        assert (runner.precision, runner.execution) == ("int8", "simulated int8")
        logits = runner.infer(x).logits
    np.testing.assert_array_equal(logits, simulated.run(["logits"], {"images": x})[0])
    assert not np.array_equal(logits, fused.run(["logits"], {"images": x})[0]), "float and int8 kernels agree bitwise?"
    with OnnxRuntimeRunner(cpu) as runner, OnnxRuntimeRunner(trt, int8="kernels") as kernels:
        assert runner.execution.startswith("int8 kernels") and kernels.execution.startswith("int8 kernels")
    with OnnxRuntimeRunner(path) as runner:
        assert (runner.precision, runner.execution) == ("fp32", "fp32")
    with pytest.raises(CamdeployError, match="--int8 'fast'"):
        OnnxRuntimeRunner(trt, int8="fast")


def test_a_failed_verification_writes_nothing_and_keeps_the_logger(tiny, tmp_path):
    import logging

    path, images = tiny
    data = CalibrationData(images[:16], read_spec(str(path)), progress=False)
    seen: list[Path] = []

    def refuse(candidate):
        seen.append(candidate)
        assert onnx.load(str(candidate)).metadata_props  # the finished model, metadata included
        raise CamdeployError("not good enough")

    level = logging.getLogger().level
    with pytest.raises(CamdeployError, match="not good enough"):
        quantize_int8(path, tmp_path / "q.onnx", data, verify=refuse)
    assert seen and not (tmp_path / "q.onnx").exists() and not list(tmp_path.iterdir())
    assert logging.getLogger().level == level
    out = quantize_int8(path, tmp_path / "q.onnx", data, verify=lambda candidate: {"camdeploy.note": "checked"})
    assert {p.key: p.value for p in onnx.load(str(out)).metadata_props}["camdeploy.note"] == "checked"


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
    converted = graph.load(out)
    producers = {o: n for n in converted.graph.node for o in n.output}
    for name in ("cams", "scores", "logits"):  # float32 heads: no round trip through float16 on the way out
        source = producers[producers[name].input[0]] if producers[name].op_type in ("Identity", "Cast") else None
        assert source is None or source.op_type != "Cast", name
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert all(i.type == "tensor(float)" for i in session.get_inputs())
    assert graph.precision(graph.load(out)) == "fp16"
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


@pytest.mark.parametrize("variant", ["int8-tensorrt", "int8-cpu", "fp16", "fp16-head"])
def test_variants_box_their_low_resolution_maps_exactly(tiny, tmp_path, variant):
    """`outputs="boxes"` boxes the raw maps of every variant whose head stays float32 (INT8, FP16),
    with the same boxes as the graph's CAMs give; a float16 head is not recognised, and its CAMs
    are boxed."""
    path, images = tiny
    out = tmp_path / f"{variant}.onnx"
    if variant.startswith("fp16"):
        convert_fp16(path, out, keep_head_fp32=variant == "fp16")
    else:
        data = CalibrationData(images[:16], read_spec(str(path)), progress=False)
        quantize_int8(path, out, data, Int8Config(target=variant.split("-")[1]))
    x = np.random.default_rng(9).normal(size=(8, 3, *SIZE)).astype(np.float32)
    with OnnxRuntimeRunner(out, box_source="host") as runner:
        full = runner.infer(x)
        low = runner.infer(x, outputs="boxes")
        assert runner.uses_low_res_maps == (variant != "fp16-head")
    np.testing.assert_array_equal(low.boxes, full.boxes)
