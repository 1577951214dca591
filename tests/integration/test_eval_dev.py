"""`camdeploy eval` on the dev images: ONNX Runtime against the PyTorch reference."""

import json

import pytest
from conftest import DEV

from camdeploy.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.data]


def test_eval_compare_ort_with_reference_on_dev(lite0_onnx, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--data", str(DEV), "--onnx", str(lite0_onnx), "--model", "efficientnet_lite0",
                 "--compare", "ort", "torch", "--json", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "MaxBoxAccV2" in table and "ort against torch" in table
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert metrics["backend"] == "torch" and metrics["n_images"] == 699
    for key in ("top1_cls_err", "top5_cls_err", "top1_loc_err", "top5_loc_err", "gt_known_loc", "maxboxacc_v2"):
        assert 0.0 <= metrics[key] <= 1.0
    # The model is the real thing (figures on this subset are easier than the full set).
    assert metrics["top1_cls_err"] < 0.25 and metrics["maxboxacc_v2"] > 0.5
    agreement = report["agreement"]["ort"]
    assert agreement["top1_identical"] >= 0.999
    assert agreement["top1_box_iou"]["fraction_ge_0.99"] >= 0.995
    for key, delta in agreement["metric_deltas"].items():
        assert abs(delta) <= 0.002, (key, delta)


def test_eval_ilsvrc_loc_rule_on_dev(lite0_onnx, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--data", str(DEV / "annotations.csv"), "--onnx", str(lite0_onnx), "--loc-rule", "ilsvrc",
                 "--json", str(out), "--no-progress"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["loc_rule"] == "ilsvrc" and metrics["backend"] == "ort"
    assert 0.0 < metrics["top5_loc_err"] < 1.0
