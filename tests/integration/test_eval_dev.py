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
    assert "MaxBoxAccV2 (camdeploy)" in table and "GT-known loc (tau 0.2)" in table and "ort against torch" in table
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert metrics["backend"] == "torch" and metrics["n_images"] == 699 and metrics["protocol"] == "camdeploy"
    for key in ("top1_cls_err", "top5_cls_err", "top1_loc_err", "top5_loc_err", "gt_known_loc_tau",
                "maxboxacc_v2_camdeploy"):
        assert 0.0 <= metrics[key] <= 1.0
    # The model is the real thing (figures on this subset are easier than the full set).
    assert metrics["top1_cls_err"] < 0.25 and metrics["maxboxacc_v2_camdeploy"] > 0.5
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


def test_eval_wsolevaluation_protocol_on_dev(lite0_onnx, tmp_path, capsys):
    wsol, default = tmp_path / "wsol.json", tmp_path / "default.json"
    common = ["--data", str(DEV), "--onnx", str(lite0_onnx), "--limit", "200", "--no-progress"]
    assert main(["eval", *common, "--protocol", "wsolevaluation", "--json", str(wsol)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("Protocol: wsolevaluation (clovaai/wsolevaluation@96f4b88 conventions; step 0.001; "
                            "IoU 30/50/70)")
    assert "MaxBoxAcc v1 (wsolevaluation)" in table and "GT-known" not in table
    report = json.loads(wsol.read_text())
    metrics = report["metrics"]
    assert metrics["n_images"] == 200 and metrics["protocol"] == "wsolevaluation" and metrics["wsol_step"] == 0.001
    assert len(report["boxacc_curves"]["ort"]["cam_thresholds"]) == 1000
    v1, v2 = metrics["maxboxacc_v1"], metrics["maxboxacc_v2"]
    terms = [metrics[f"maxboxacc_v2_iou{i}"] for i in (30, 50, 70)]
    # Plausible for Lite0 on this (easier than the full validation set) subset: about 0.62-0.67.
    assert 0.55 < v1 < 0.8 and 0.5 < v2 < 0.75
    assert terms[0] > terms[1] > terms[2] and v2 == pytest.approx(sum(terms) / 3)
    assert terms[1] >= v1  # every contour's boxes include the largest contour's: never a lower BoxAcc
    assert all(0.0 < t < 1.0 for t in metrics["best_thresholds"].values())
    # The same images under the default protocol: the same errors, a nearby MaxBoxAccV2 (same CAMs,
    # other conventions: bilinear maps, no clipping, fractional ground truth, step 0.01).
    assert main(["eval", *common, "--json", str(default)]) == 0
    capsys.readouterr()
    ours = json.loads(default.read_text())["metrics"]
    for key in ("top1_cls_err", "top5_cls_err", "top1_loc_err", "top5_loc_err"):
        assert metrics[key] == ours[key], key
    assert abs(ours["maxboxacc_v2_camdeploy"] - v2) < 0.03
