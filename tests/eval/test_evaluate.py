"""``camdeploy eval --protocol``: the two protocols wired into evaluate(), on a tiny 224x224 model.

The wsolevaluation conventions themselves are pinned in ``test_wsol.py``; here, what the
integration must get right: the ground-truth class's map (not the top-1 class's), wsolevaluation's
own bicubic score map of the raw CAM (not the runtime's bilinear one), the ground truth scaled from
each image's original size, the threshold grid, the metric names, the report and the refusals.
"""

import json
import shutil

import cv2
import numpy as np
import pytest
from tiny_models import TorchvisionStyle, seeded

from camdeploy.cli import build_parser, main
from camdeploy.errors import CamdeployError
from camdeploy.eval.datasets import open_dataset
from camdeploy.eval.evaluate import METRIC_KEYS, PROTOCOLS, EvalOptions, evaluate
from camdeploy.eval.report import format_table, to_json
from camdeploy.eval.wsol import WsolBoxAccuracy
from camdeploy.export.exporter import ExportOptions, export_onnx
from camdeploy.runtime.images import load_image, prepare
from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

# (height, width) of each image, and its boxes in its own pixels (inclusive corners; fractions kept).
IMAGES = [
    ((200, 300), [[10.5, 20.7, 150.2, 199.9]]),
    ((224, 224), [[30, 40, 120, 200], [150, 10, 223, 90]]),
    ((150, 100), [[5, 5, 60.6, 99.9]]),
    ((180, 260), [[100, 30, 259, 179]]),
]
ERRORS = ("top1_cls_err", "top5_cls_err", "top1_loc_err", "top5_loc_err")


def _image(height, width, seed):
    """A smooth picture: a gradient and two soft blobs (smooth CAMs, few contours)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.empty((height, width, 3))
    for c in range(3):
        cy, cx, cy2, cx2 = rng.uniform(0.1, 0.9, 4)
        image[..., c] = 80 * x + 255 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 0.02) \
            + 200 * np.exp(-((y - cy2) ** 2 + (x - cx2) ** 2) / 0.05)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny 224x224 model (10 classes, top-3 maps) and a dataset of 4 images; the last image's
    class is the one the model ranks last, so its map is not among the graph's."""
    folder = tmp_path_factory.mktemp("evaluate")
    model = folder / "tiny.onnx"
    spec = export_onnx(seeded(TorchvisionStyle()), model, ExportOptions(input_size=(224, 224), topk=3,
                                                                         source_model="tiny")).spec
    paths = []
    for k, ((height, width), _) in enumerate(IMAGES):
        paths.append(folder / f"img{k}.png")
        cv2.imwrite(str(paths[-1]), _image(height, width, k))
    with OnnxRuntimeRunner(model) as runner:
        logits = runner.infer(np.stack([prepare(load_image(p), spec)[0] for p in paths])).logits
    labels = [3, 7, 1, int(np.argmin(logits[3]))]
    records = [{"file": p.name, "class_index": label, "boxes": boxes}
               for p, label, (_, boxes) in zip(paths, labels, IMAGES, strict=True)]
    (folder / "annotations.json").write_text(json.dumps({"images": records}))
    return model, folder, spec, labels


def _evaluate(model, folder, **options):
    with OnnxRuntimeRunner(model) as runner:
        return evaluate({"ort": runner}, open_dataset(folder, None, None),
                        EvalOptions(progress=False, **options), report=lambda message: None)


def test_cli_and_library_know_the_same_protocols():
    eval_parser = build_parser()._subparsers._group_actions[0].choices["eval"]  # type: ignore[union-attr]
    choices = next(a.choices for a in eval_parser._actions if a.dest == "protocol")
    assert tuple(choices) == PROTOCOLS == ("camdeploy", "wsolevaluation")


def test_wsolevaluation_protocol_scores_the_ground_truth_class_map_in_its_own_frame(tiny):
    model, folder, spec, labels = tiny
    report = _evaluate(model, folder, protocol="wsolevaluation", wsol_step=0.01)
    # The expected figures, step by step from the definitions: the raw CAM of the ground-truth
    # class sum_c w[label, c] * F[c], upsampled with cv2.INTER_CUBIC to 224x224 and min-max
    # normalised; the ground truth int(x * 224 / W), int(y * 224 / H) from each image's own size.
    with OnnxRuntimeRunner(model) as runner:
        weight = runner.class_weight().astype(np.float64)
        result = runner.infer(np.stack([prepare(load_image(folder / f"img{k}.png"), spec)[0]
                                        for k in range(len(IMAGES))]), features=True)
    assert labels[3] not in result.classes[3]  # that map is not among the graph's top-3 maps
    expected = WsolBoxAccuracy(step=0.01)
    for k, ((height, width), boxes) in enumerate(IMAGES):
        raw = np.tensordot(weight[labels[k]], result.features[k].astype(np.float64), axes=(0, 0))  # [56, 56]
        up = cv2.resize(raw, (224, 224), interpolation=cv2.INTER_CUBIC)
        scoremap = (up - up.min()) / (up.max() - up.min())
        truth = np.array([[int(x0 * 224 / width), int(y0 * 224 / height), int(x1 * 224 / width),
                           int(y1 * 224 / height)] for x0, y0, x1, y1 in boxes])
        expected.add(scoremap, truth)
    assert IMAGES[0][1][0][3] * 224 / 200 == pytest.approx(223.888) and expected.count == 4  # truncated to 223
    metrics = report.metrics["ort"]
    assert set(metrics) == set(METRIC_KEYS["wsolevaluation"])
    assert {k: metrics[k] for k in expected.metrics()} == expected.metrics()
    curves = report.curves["ort"]
    assert curves.cam_thresholds.shape == (100,) and curves.iou_thresholds == (30, 50, 70)
    np.testing.assert_array_equal(curves.every_contour, expected.curves(True))
    assert curves.largest_contour is not None
    np.testing.assert_array_equal(curves.largest_contour, expected.curves(False))
    assert report.best_thresholds("ort") == {"maxboxacc_v1": expected.best_threshold(50, False),
                                             **{f"maxboxacc_v2_iou{i}": expected.best_threshold(i)
                                                for i in (30, 50, 70)}}
    # Classification and top-1/top-5 localization error do not depend on the protocol.
    default = _evaluate(model, folder)
    assert {k: metrics[k] for k in ERRORS} == {k: default.metrics["ort"][k] for k in ERRORS}


def test_default_protocol_names_its_definitions(tiny, tmp_path, capsys):
    model, folder, _, _ = tiny
    out = tmp_path / "eval.json"
    assert main(["eval", "--data", str(folder), "--onnx", str(model), "--json", str(out), "--box-threshold", "0.25",
                 "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("Protocol: camdeploy (GT-known loc at tau 0.25; MaxBoxAccV2 on the runtime's maps")
    assert "GT-known loc (tau 0.25)" in table and "MaxBoxAccV2 (camdeploy)" in table and "(wsolevaluation)" not in table
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert report["protocol"] == metrics["protocol"] == "camdeploy" and metrics["box_threshold"] == 0.25
    assert set(METRIC_KEYS["camdeploy"]) <= set(metrics)
    assert not {"gt_known_loc", "maxboxacc_v2", "maxboxacc_v1", "wsol_step"} & set(metrics)
    assert set(metrics["best_thresholds"]) == {f"maxboxacc_v2_camdeploy_iou{i}" for i in (30, 50, 70)}
    curves = report["boxacc_curves"]["ort"]
    assert len(curves["cam_thresholds"]) == 100 and set(curves) == {"cam_thresholds", "iou_30", "iou_50", "iou_70"}


def test_wsolevaluation_protocol_report_and_json(tiny, tmp_path, capsys):
    model, folder, _, _ = tiny
    other = tmp_path / "copy.onnx"
    shutil.copy(model, other)
    out, png = tmp_path / "eval.json", tmp_path / "boxacc.png"
    assert main(["eval", "--data", str(folder), "--onnx", str(model), "--protocol", "wsolevaluation",
                 "--compare", "ort", str(other), "--json", str(out), "--plot", str(png), "--no-progress"]) == 0
    table = capsys.readouterr().out
    first = table.splitlines()[0]
    assert first == "Protocol: wsolevaluation (clovaai/wsolevaluation@96f4b88 conventions; step 0.001; IoU 30/50/70)"
    for label in ("MaxBoxAcc v1 (wsolevaluation)", "MaxBoxAccV2 (wsolevaluation)", "MaxBoxAcc IoU 0.7, all contours"):
        assert label in table
    assert "GT-known" not in table and "(camdeploy)" not in table
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert report["protocol"] == metrics["protocol"] == "wsolevaluation"
    assert metrics["wsol_step"] == 0.001 and metrics["iou_thresholds"] == [30, 50, 70]
    assert set(METRIC_KEYS["wsolevaluation"]) <= set(metrics)
    assert not {"gt_known_loc", "gt_known_loc_tau", "maxboxacc_v2_camdeploy"} & set(metrics)
    assert metrics["maxboxacc_v2"] == pytest.approx(np.mean([metrics[f"maxboxacc_v2_iou{i}"] for i in (30, 50, 70)]))
    assert set(metrics["best_thresholds"]) == {"maxboxacc_v1", *(f"maxboxacc_v2_iou{i}" for i in (30, 50, 70))}
    curves = report["boxacc_curves"]["ort"]
    assert len(curves["cam_thresholds"]) == 1000 and curves["cam_thresholds"][200] == 0.2
    assert all(len(curves[f"iou_{i}"]) == len(curves["largest_contour"][f"iou_{i}"]) == 1000 for i in (30, 50, 70))
    deltas = report["agreement"]["copy.onnx"]["metric_deltas"]
    assert list(deltas) == list(METRIC_KEYS["wsolevaluation"])
    assert deltas.pop("top5_cls_err") is deltas.pop("top5_loc_err") is None  # top-3 maps: no top-5
    assert set(deltas.values()) == {0.0}
    assert png.stat().st_size > 0
    assert main(["eval", "--data", str(folder), "--onnx", str(model), "--protocol", "wsolevaluation",
                 "--wsol-step", "0.25", "--json", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["boxacc_curves"]["ort"]["cam_thresholds"] == [0.0, 0.25, 0.5, 0.75]
    assert "step 0.25;" in capsys.readouterr().out


def test_the_two_protocols_are_in_the_table_s_words(tiny):
    model, folder, _, _ = tiny
    report = _evaluate(model, folder, protocol="wsolevaluation", wsol_step=0.5)
    text = format_table(report)
    assert "step 0.5;" in text and "MaxBoxAcc v1 (wsolevaluation)" in text
    config = {"ort": {"protocol": "wsolevaluation"}}
    assert to_json(report, config)["protocol_description"] == text.splitlines()[0].removeprefix("Protocol: ")


@pytest.mark.parametrize(("options", "message"), [
    ({"protocol": "wsol"}, r"--protocol 'wsol': expected one of camdeploy, wsolevaluation"),
    ({"protocol": "wsolevaluation", "resize": "crop"}, r"--resize crop: wsolevaluation stretches the whole image"),
    ({"protocol": "wsolevaluation", "wsol_step": 0.0}, r"--wsol-step 0.0: expected a CAM threshold step in \(0, 1\]"),
    ({"protocol": "wsolevaluation", "wsol_step": 1.5}, r"--wsol-step 1.5"),
    ({"protocol": "wsolevaluation", "wsol_step": 1e-9}, r"at most 100000 thresholds"),
])
def test_protocol_options_are_checked(tiny, options, message):
    model, folder, _, _ = tiny
    with pytest.raises(CamdeployError, match=message):
        _evaluate(model, folder, **options)


def test_wsolevaluation_protocol_needs_a_224_input(tmp_path, capsys):
    model = tmp_path / "small.onnx"
    export_onnx(seeded(TorchvisionStyle()), model, ExportOptions(input_size=(32, 32), topk=3, source_model="tiny"))
    cv2.imwrite(str(tmp_path / "a.png"), _image(40, 50, 0))
    (tmp_path / "annotations.json").write_text(json.dumps({"images": [{"file": "a.png", "class_index": 1,
                                                                       "boxes": [[1, 2, 30, 39]]}]}))
    with OnnxRuntimeRunner(model) as runner, pytest.raises(CamdeployError, match=r"the model's input is 32x32; "
                                                           r"wsolevaluation's figures are defined on a 224x224 input"):
        evaluate({"ort": runner}, open_dataset(tmp_path, None, None),
                 EvalOptions(protocol="wsolevaluation", progress=False))
    # The camdeploy protocol takes any input size.
    assert main(["eval", "--data", str(tmp_path), "--onnx", str(model), "--no-progress"]) == 0
    # --wsol-step without the protocol it belongs to is refused before anything runs.
    assert main(["eval", "--data", str(tmp_path), "--onnx", str(model), "--wsol-step", "0.01"]) == 1
    assert "--wsol-step 0.01: applies to --protocol wsolevaluation only" in capsys.readouterr().err


def test_wsolevaluation_protocol_names_the_image_with_a_box_it_cannot_take(tiny, tmp_path):
    # wsolevaluation's check_box_convention refuses negative coordinates (the default protocol takes them).
    model, folder, _, _ = tiny
    shutil.copy(folder / "img0.png", tmp_path / "img0.png")
    (tmp_path / "annotations.json").write_text(json.dumps({"images": [{"file": "img0.png", "class_index": 2,
                                                                       "boxes": [[-1, 0, 50, 60]]}]}))
    with pytest.raises(CamdeployError, match=r"--protocol wsolevaluation: .*img0.png: ground truth: boxes "
                                             r"\[\[-1.0, 0.0, 50.0, 60.0\]\] must be finite and non-negative"):
        _evaluate(model, tmp_path, protocol="wsolevaluation")
    assert _evaluate(model, tmp_path).n_images == 1


def _wsol_folder(folder, tmp_path, scale, sizes=True):
    """The tiny dataset as wsolevaluation metadata whose image_sizes.txt states each image ``scale``
    times the size it is stored at, with the boxes in that stated frame."""
    meta = tmp_path / "metadata"
    meta.mkdir()
    records = json.loads((folder / "annotations.json").read_text())["images"]
    names = [r["file"] for r in records]
    (meta / "image_ids.txt").write_text("".join(f"{n}\n" for n in names))
    (meta / "class_labels.txt").write_text("".join(f"{r['file']},{r['class_index']}\n" for r in records))
    (meta / "localization.txt").write_text("".join(f"{r['file']},{','.join(str(scale * v) for v in box)}\n"
                                                   for r in records for box in r["boxes"]))
    if sizes:
        (meta / "image_sizes.txt").write_text("".join(f"{n},{scale * w},{scale * h}\n"
                                                      for n, ((h, w), _) in zip(names, IMAGES, strict=True)))
    return meta


def test_wsolevaluation_metadata_scales_boxes_from_image_sizes_whatever_size_the_files_are(tiny, tmp_path):
    """image_sizes.txt says each image is twice the size it is stored at (as the shared holdout's
    227x227 files against ImageNet's originals): the ground truth is int(x * 224 / W_stated), as
    wsolevaluation computes it, not scaled by the decoded size; the other metrics see the same boxes
    mapped to the stored pixels; the resized images are reported."""
    model, folder, spec, labels = tiny
    meta = _wsol_folder(folder, tmp_path, 2)
    said: list[str] = []
    with OnnxRuntimeRunner(model) as runner:
        dataset = open_dataset(meta, folder, None)
        assert [s.size for s in dataset.samples] == [(2 * w, 2 * h) for (h, w), _ in IMAGES]
        report = evaluate({"ort": runner}, dataset, EvalOptions(progress=False, protocol="wsolevaluation",
                                                                 wsol_step=0.01), report=said.append)
        weight = runner.class_weight().astype(np.float64)
        result = runner.infer(np.stack([prepare(load_image(folder / f"img{k}.png"), spec)[0]
                                        for k in range(len(IMAGES))]), features=True)
    expected = WsolBoxAccuracy(step=0.01)
    for k, ((height, width), boxes) in enumerate(IMAGES):
        raw = np.tensordot(weight[labels[k]], result.features[k].astype(np.float64), axes=(0, 0))
        up = cv2.resize(raw, (224, 224), interpolation=cv2.INTER_CUBIC)
        stated_w, stated_h = 2 * width, 2 * height
        truth = np.array([[int(2 * x0 * 224 / stated_w), int(2 * y0 * 224 / stated_h), int(2 * x1 * 224 / stated_w),
                           int(2 * y1 * 224 / stated_h)] for x0, y0, x1, y1 in boxes])
        expected.add((up - up.min()) / (up.max() - up.min()), truth)
    metrics = report.metrics["ort"]
    assert {k: metrics[k] for k in expected.metrics()} == expected.metrics()
    same = _evaluate(model, folder, protocol="wsolevaluation", wsol_step=0.01)  # annotations in stored pixels
    assert {k: metrics[k] for k in ERRORS} == {k: same.metrics["ort"][k] for k in ERRORS}
    assert [(decoded, stated) for _, decoded, stated in report.resized] == [((w, h), (2 * w, 2 * h))
                                                                            for (h, w), _ in IMAGES]
    assert any(m.startswith("4 of 4 images are stored at another size than their annotations state (first: ")
               and "scaled from the stated size, as wsolevaluation does with image_sizes.txt" in m for m in said)
    assert to_json(report, {"ort": {}})["resized"][0] == {"file": str(folder / "img0.png"), "decoded": [300, 200],
                                                          "stated": [600, 400]}


def test_wsolevaluation_metadata_without_image_sizes_says_what_it_assumes(tiny, tmp_path):
    model, folder, _, _ = tiny
    meta = _wsol_folder(folder, tmp_path, 1, sizes=False)
    said: list[str] = []
    with OnnxRuntimeRunner(model) as runner:
        report = evaluate({"ort": runner}, open_dataset(meta, folder, None), EvalOptions(progress=False),
                          report=said.append)
    assert said == [f"--data {meta}: no image_sizes.txt; the boxes are taken to be in the image files' own pixels "
                    "(wsolevaluation scales them from the sizes that file states)"]
    assert report.resized == []
