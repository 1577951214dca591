"""``camdeploy units`` on the real EfficientNet-Lite0 and the shared dev images, with their
ground-truth boxes as masks: thresholds, top images and the whole tally held to a brute-force
recomputation from the same features, and the class-specific units of a few classes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEV

from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from camdeploy.runtime.runner import Runner
from camdeploy.units.analysis import UnitsOptions, analyse_units
from camdeploy.units.classes import class_units
from camdeploy.units.concepts import read_boxes
from camdeploy.units.upsample import unit_masks

pytestmark = [pytest.mark.integration, pytest.mark.data]
IMAGES = 160  # a part of dev keeps the test short; benchmarks/units.py runs all 699
CLASSES = (207, 281, 817)  # golden retriever, tabby, sports car


class Recording(Runner):
    """ONNX Runtime, keeping every features output it returns."""

    def __init__(self, inner: OnnxRuntimeRunner):
        super().__init__(inner.spec)
        self.inner, self.model_path, self.kept = inner, inner.model_path, []

    def open(self) -> None:
        self.inner.open()
        self.is_open = True

    def close(self) -> None:
        self.inner.close()
        self.is_open = False

    def class_weight(self) -> np.ndarray:
        return self.inner.class_weight()

    def _run(self, images: np.ndarray, features: bool, outputs: str) -> dict[str, np.ndarray]:
        out = self.inner._run(images, features, outputs)
        self.kept.append(out["features"])
        return out


@pytest.fixture(scope="module")
def dissected(lite0_onnx, tmp_path_factory):  # type: ignore[no-untyped-def]
    runner = Recording(OnnxRuntimeRunner(lite0_onnx, outputs="classes"))
    source = read_boxes(DEV, runner.spec.class_names, (224, 224), (112, 112))
    source.images, source.boxes, source.classes = (source.images[:IMAGES], source.boxes[:IMAGES],
                                                    source.classes[:IMAGES])
    with runner:
        analysis = analyse_units([runner], source, tmp_path_factory.mktemp("units"), UnitsOptions(progress=False))
    return analysis, np.concatenate(runner.kept), source


def test_thresholds_and_top_images_from_the_same_features(dissected) -> None:  # type: ignore[no-untyped-def]
    analysis, features, _ = dissected
    model = analysis.models[0]
    assert features.shape == (IMAGES, 1280, 7, 7) and len(analysis.images) == IMAGES
    values = features.transpose(1, 0, 2, 3).reshape(1280, -1).astype(np.float64)
    np.testing.assert_array_equal(model.thresholds, np.quantile(values, 0.995, axis=1).astype(np.float32))
    maxima = features.reshape(IMAGES, 1280, -1).max(axis=2)
    sums = features.sum(axis=(2, 3), dtype=np.float64)
    for unit in range(0, 1280, 37):  # by maximum; ties (at ReLU6's 6): larger sum, then earlier image
        order = np.lexsort((np.arange(IMAGES), -sums[:, unit], -maxima[:, unit]))[:10]
        assert model.top_images[unit].tolist() == order.tolist()


def test_box_tally_equals_a_brute_force_count(dissected) -> None:  # type: ignore[no-untyped-def]
    analysis, features, source = dissected
    model, tally = analysis.models[0], analysis.models[0].tally
    thresholds = model.thresholds
    intersection = np.zeros((1280, 1001), dtype=np.int64)
    activation = np.zeros(1280, dtype=np.int64)
    truth = np.zeros(1001, dtype=np.int64)
    for i in range(IMAGES):
        frame, label = analysis.frames[i], source.classes[i] + 1
        ys = ((np.arange(112) + 0.5) * 2) * frame.scale_y + frame.offset_y  # mask pixel centres, original pixels
        xs = ((np.arange(112) + 0.5) * 2) * frame.scale_x + frame.offset_x
        box = np.zeros((112, 112), dtype=bool)
        for x0, y0, x1, y1 in source.boxes[i]:
            box |= ((ys >= y0) & (ys < y1 + 1))[:, None] & ((xs >= x0) & (xs < x1 + 1))[None, :]
        truth[label] += box.sum()
        live = np.flatnonzero(features[i].reshape(1280, -1).max(axis=1) > thresholds)  # a mask needs a value > T
        masks = unit_masks(features[i, live], thresholds[live], (112, 112))
        hits = (masks & box).sum(axis=(1, 2))
        intersection[live, label] += hits
        activation[live] += masks.sum(axis=(1, 2)) * (hits > 0)
    np.testing.assert_array_equal(tally.intersection, intersection)
    np.testing.assert_array_equal(tally.label_pixels, truth)
    np.testing.assert_array_equal(tally.activation[:, 1], activation)
    iou = intersection / (activation[:, None] + truth[None, :] - intersection + 1e-10)
    np.testing.assert_array_equal(tally.score, iou.max(axis=1))
    assert np.all(iou[np.arange(1280), tally.label] == tally.score)
    summary = tally.summary()
    assert summary["units"] == 1280 and 0 < summary["detectors"] < 1280


def test_class_specific_units(dissected, lite0_onnx) -> None:  # type: ignore[no-untyped-def]
    from camdeploy import graph

    analysis, _, _ = dissected
    model = analysis.models[0]
    weight = graph.class_weight(graph.load(lite0_onnx), 1000)
    for c in CLASSES:
        units = class_units(model.class_weight, c, 5)
        assert [u for u, _ in units] == np.argsort(-weight[c], kind="stable")[:5].tolist()
        assert all(w > 0 for _, w in units)
        for unit, _ in units:
            record = model.tally.unit_record(unit)
            assert record["label"] in ("-", *analysis.source.labels)
