"""Every exported variant parses and builds a TensorRT engine (TensorRT for RTX, no GPU needed)."""

import numpy as np
import onnx
import pytest

from camdeploy.calibration.data import CalibrationData
from camdeploy.calibration.quantize import convert_fp16, quantize_int8
from camdeploy.cli import main
from camdeploy.metadata import read_spec
from camdeploy.runtime.tensorrt_engine import check_tensorrt

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    import cv2
    from tiny_models import TorchvisionStyle, seeded

    from camdeploy.export.exporter import ExportOptions, export_onnx

    folder = tmp_path_factory.mktemp("trt")
    fp32 = folder / "fp32.onnx"
    export_onnx(seeded(TorchvisionStyle()), fp32, ExportOptions(input_size=(32, 32), topk=3, source_model="tiny"))
    images = []
    rng = np.random.default_rng(0)
    for i in range(16):
        images.append(folder / f"{i}.png")
        cv2.imwrite(str(images[-1]), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    data = CalibrationData(images, read_spec(str(fp32)), progress=False)
    host = folder / "fp32-host-boxes.onnx"
    export_onnx(seeded(TorchvisionStyle()), host, ExportOptions(input_size=(32, 32), topk=3, source_model="tiny",
                                                                graph_boxes="off"))
    return {"fp32": fp32, "fp32-host-boxes": host, "int8": quantize_int8(fp32, folder / "int8.onnx", data),
            "fp16": convert_fp16(fp32, folder / "fp16.onnx")}


@pytest.mark.parametrize("name", ["fp32", "fp32-host-boxes", "int8", "fp16"])
def test_every_variant_builds_an_engine(variants, name):
    outputs = [o.name for o in onnx.load(str(variants[name])).graph.output]
    assert ("boxes" in outputs) == (name != "fp32-host-boxes"), "in-graph boxes are the default"
    report = check_tensorrt(variants[name], batch=(1, 4, 8))
    assert report.issues == [] and report.build_error is None
    assert report.engine_bytes and report.engine_bytes > 0


@pytest.mark.parametrize(("height", "source", "width"), [(224, 7, 224), (48, None, 48)])
def test_box_graphs_build_engines(tmp_path, height, source, width):
    from camdeploy.export.graph_boxes import BandLayout, box_model, upsample_bands

    layout = BandLayout.pixels(width) if source is None else BandLayout.from_band_of_column(
        upsample_bands(source, width))
    path = tmp_path / "boxes.onnx"
    onnx.save(box_model(height, layout, topk=5), str(path))
    report = check_tensorrt(path, batch=(1, 8, 32))
    assert report.ok, (report.issues, report.build_error)


def test_the_real_model_builds(lite0_onnx, capsys):
    assert main(["check", str(lite0_onnx)]) == 0
    assert "engine built" in capsys.readouterr().out


def test_rejected_nodes_are_listed(tmp_path, capsys):
    from tiny_models import write_rejected_by_tensorrt

    path = write_rejected_by_tensorrt(tmp_path / "bad.onnx")
    assert main(["check", str(path)]) == 1
    assert "rejected: node bias_dq (DequantizeLinear)" in capsys.readouterr().out
