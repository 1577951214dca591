"""The real EfficientNet-Lite0 with its ImageNet weights, on real photos."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DEV

import camdeploy
from camdeploy.cache import exporter_fingerprint
from camdeploy.cli import main
from camdeploy.demo import demo_photos
from camdeploy.eval.metrics import paired_iou
from camdeploy.export.reference import TorchRunner
from camdeploy.runtime.inputs import list_images
from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from camdeploy.runtime.pipeline import RunOptions, run_files

pytestmark = pytest.mark.integration
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def records(summary) -> list[dict]:
    return [json.loads(line) for line in summary.results_path.read_text().splitlines()]


def run_both(model: Path, paths, out: Path):
    with OnnxRuntimeRunner(model) as runner:
        ort = run_files(runner, paths, out / "ort", RunOptions(batch_size=16, progress=False))
    with TorchRunner("efficientnet_lite0", runner.spec) as runner:
        torch = run_files(runner, paths, out / "torch", RunOptions(batch_size=16, progress=False), model=model)
    return records(ort), records(torch)


def test_photos_cat_is_a_cat_and_backends_agree(lite0_onnx, tmp_path):
    photos = demo_photos()
    ort_records, torch_records = run_both(lite0_onnx, photos, tmp_path)
    by_name = {Path(r["file"]).name: r for r in ort_records}
    assert CAT_CLASSES & set(by_name["chelsea.png"]["classes"])
    assert by_name["chelsea.png"]["classes"][0] in CAT_CLASSES
    assert {"espresso", "cup", "coffee mug"} & set(by_name["coffee.png"]["labels"][:3])
    for a, b in zip(ort_records, torch_records, strict=True):
        assert a["classes"] == b["classes"]
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-4)
        assert np.all(paired_iou(np.array(a["boxes"]), np.array(b["boxes"])) >= 0.99)


def test_demo_exports_once_then_reuses_the_cache(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CAMDEPLOY_CACHE_DIR", str(cache))
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0  # first run: exports into the cache
    cached = cache / f"efficientnet_lite0-top5-camdeploy{camdeploy.__version__}-{exporter_fingerprint()}.onnx"
    assert cached.is_file() and "exporting efficientnet_lite0" in capsys.readouterr().err
    stamp = cached.stat().st_mtime_ns
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0  # second run: from the cache
    assert cached.stat().st_mtime_ns == stamp and "exporting" not in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    table = capsys.readouterr().out
    assert "chelsea.png" in table and ("Egyptian cat" in table or "tabby" in table or "tiger cat" in table)
    written = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert "results.jsonl" in written and len([n for n in written if n.endswith("_cam.png")]) == len(demo_photos())


@pytest.mark.data
def test_dev_images_ort_equals_reference(lite0_onnx, tmp_path):
    paths = list_images([str(DEV / "images")])
    assert len(paths) == 699
    ort_records, torch_records = run_both(lite0_onnx, paths, tmp_path)
    assert len(ort_records) == len(torch_records) == 699
    top1 = [a["classes"][0] == b["classes"][0] for a, b in zip(ort_records, torch_records, strict=True)]
    assert all(top1), f"top-1 differs on {top1.count(False)} images"
    ious = np.array([paired_iou(np.array(a["boxes"][0]), np.array(b["boxes"][0]))
                     for a, b in zip(ort_records, torch_records, strict=True)])
    assert ious.min() >= 0.99, f"worst top-1 box IoU {ious.min():.4f}"
    # The whole results.jsonl agrees, up to score rounding: every class, every box.
    for a, b in zip(ort_records, torch_records, strict=True):
        assert (a["file"], a["classes"], a["labels"]) == (b["file"], b["classes"], b["labels"])
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-4)
        assert np.all(paired_iou(np.array(a["boxes"]), np.array(b["boxes"])) >= 0.99)
    # And the model is the real thing: its top-1 accuracy on these images.
    truth = {Path(r["file"]).name: r["class_index"]
             for r in json.loads((DEV / "annotations.json").read_text())["images"]}
    accuracy = np.mean([truth[Path(r["file"]).name] == r["classes"][0] for r in ort_records])
    assert accuracy > 0.75, accuracy
