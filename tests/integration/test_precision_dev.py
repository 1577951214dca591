"""INT8 and FP16 variants of the real EfficientNet-Lite0 on dev images they were not calibrated on."""

import csv
import json

import pytest
from conftest import DEV

from camdeploy.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.data]


def test_int8_and_fp16_stay_close_to_fp32(lite0_onnx, tmp_path, capsys):
    records = json.loads((DEV / "annotations.json").read_text())["images"]
    calibration, evaluation = records[::2], records[1::2]  # disjoint halves of dev
    listing = tmp_path / "calibration"
    listing.mkdir()
    for record in calibration:
        (listing / record["file"].split("/")[-1]).symlink_to(DEV / record["file"])
    eval_csv = tmp_path / "eval.csv"
    with open(eval_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "class_index", "x0", "y0", "x1", "y1"])
        for record in evaluation:
            for box in record["boxes"]:
                writer.writerow([str(DEV / record["file"]), record["class_index"], *box])
    int8, int8_cpu, fp16 = tmp_path / "int8.onnx", tmp_path / "int8-cpu.onnx", tmp_path / "fp16.onnx"
    assert main(["calibrate", str(lite0_onnx), "--images", str(listing), "--count", "150", "--output", str(int8),
                 "--exclude-data", str(eval_csv), "--no-progress"]) == 0
    assert "verified: top-1 agreement" in capsys.readouterr().out  # checked on held-back images before writing
    assert main(["calibrate", str(lite0_onnx), "--images", str(listing), "--count", "150", "--output", str(int8_cpu),
                 "--target", "cpu", "--method", "percentile", "--exclude-data", str(eval_csv), "--no-progress"]) == 0
    assert main(["convert", str(lite0_onnx), "--fp16", "--output", str(fp16)]) == 0
    report_path = tmp_path / "report.json"
    assert main(["eval", "--data", str(eval_csv), "--onnx", str(lite0_onnx), "--compare", "ort", str(int8),
                 str(int8_cpu), str(fp16), "--json", str(report_path), "--no-progress"]) == 0
    assert "int8.onnx: simulated int8" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["metrics"]["n_images"] == len(evaluation)
    for name in ("int8.onnx", "int8-cpu.onnx"):  # whatever this CPU's ISA: no test depends on it
        int8_delta = report["agreement"][name]["metric_deltas"]
        assert int8_delta["top1_cls_err"] <= 0.010, (name, int8_delta)  # at most 1 point worse
        assert int8_delta["gt_known_loc_tau"] >= -0.010, (name, int8_delta)
        assert int8_delta["maxboxacc_v2_camdeploy"] >= -0.010, (name, int8_delta)
    for key, delta in report["agreement"]["fp16.onnx"]["metric_deltas"].items():
        assert abs(delta) <= 0.002, (key, delta)
    assert report["backends"]["int8.onnx"]["precision"] == "int8"
    assert report["backends"]["int8.onnx"]["execution"] == "simulated int8"
    assert report["backends"]["int8-cpu.onnx"]["execution"].startswith("int8 kernels")
    assert report["backends"]["fp16.onnx"]["precision"] == "fp16"
    # Evaluating the INT8 model on its own calibration images is refused.
    full = str(DEV)
    assert main(["eval", "--data", full, "--onnx", str(int8), "--limit", "5", "--no-progress"]) == 1
    assert "calibration images are also evaluation images" in capsys.readouterr().err
