"""Dissection of hand-made Broden-layout data whose answers are known by construction
(see broden_handmade.py): thresholds, masks, counts, IoUs, labels, the summary, the files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from broden_handmade import BOX, CORNER, EXPECTED, INDOOR, OUTDOOR, QUANTILE, SQUARE, HandmadeRunner, write_broden

from camdeploy.errors import CamdeployError
from camdeploy.units.analysis import UnitsOptions, analyse_units
from camdeploy.units.concepts import read_broden
from camdeploy.units.report import ReportOptions, write_report


@pytest.fixture(scope="module")
def broden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_broden(tmp_path_factory.mktemp("broden"))


@pytest.fixture(scope="module")
def analysis(broden: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    source = read_broden(broden)
    with HandmadeRunner() as runner:
        return analyse_units([runner], source, tmp_path_factory.mktemp("work"),
                             UnitsOptions(quantile=QUANTILE, top_k=3, batch_size=3, progress=False))


def test_reader_layers_scalars_and_primary_categories(broden: Path) -> None:
    source = read_broden(broden)
    assert source.categories == ["object", "part", "scene"]
    assert len(source.images) == 8
    assert source.labels[BOX] == "box" and len(source.labels) == BOX + 1  # label = R + 256 * G
    assert source.primary[SQUARE] == 0 and source.primary[BOX] == 0
    assert source.primary[CORNER] == 1  # listed in object and part: the larger coverage wins
    assert source.primary[OUTDOOR] == source.primary[INDOOR] == 2
    first = source.concept_map(0, None)  # type: ignore[arg-type]
    assert first.layers.shape == (3, 8, 8)  # two object layers and one part layer
    assert first.scalars == [OUTDOOR]
    assert (first.layers[1] == BOX).sum() == 6 and (first.layers[0] == SQUARE).sum() == 4
    last = source.concept_map(7, None)  # type: ignore[arg-type]
    assert last.layers.shape == (0, 8, 8) and last.scalars == [INDOOR]


def test_thresholds_and_top_images(analysis) -> None:  # type: ignore[no-untyped-def]
    model = analysis.models[0]
    np.testing.assert_array_equal(model.thresholds, np.zeros(6, dtype=np.float32))
    assert model.top_images[2].tolist() == [0, 1, 2]  # the outdoor images first, then the earliest
    assert model.top_values[2].tolist() == [1.0, 1.0, 0.0]
    assert model.top_images[0].tolist() == [0, 1, 2]


def test_tally_counts_ious_and_labels(analysis) -> None:  # type: ignore[no-untyped-def]
    tally = analysis.models[0].tally
    assert tally.images == 8
    # G: 4 square, 6 box, 1 corner pixels on each of six images; 64 pixels per image-level label
    assert tally.label_pixels[SQUARE] == 24 and tally.label_pixels[BOX] == 36 and tally.label_pixels[CORNER] == 6
    assert tally.label_pixels[OUTDOOR] == 128 and tally.label_pixels[INDOOR] == 6 * 64
    assert tally.intersection[0, SQUARE] == 24 and tally.activation[0, SQUARE] == 24
    assert tally.intersection[1, SQUARE] == 24 and tally.activation[1, SQUARE] == 36
    assert tally.iou[1, SQUARE] == pytest.approx(24 / 36)
    assert tally.intersection[2, OUTDOOR] == 128 and tally.activation[2, OUTDOOR] == 128
    # unit 2 covers two whole outdoor images, each with a square: A[2, object] counts both
    assert tally.intersection[2, SQUARE] == 8 and tally.activation[2, SQUARE] == 128
    # unit 0 hits a part label on every image where it fires: A[0, part] = all its 24 pixels
    assert tally.activation[0, CORNER] == 24 and tally.iou[0, CORNER] == pytest.approx(6 / 24)
    for unit, (label, category, iou) in EXPECTED.items():
        record = tally.unit_record(unit)
        assert (record["label"], record["category"]) == (label, category), unit
        assert record["iou"] == pytest.approx(iou, abs=1e-9), unit
        assert record["detector"] == (iou >= 0.04)
    assert tally.summary()["sentence"] == "5 of 6 units are detectors of 4 unique concepts (IoU >= 0.04)"
    per_category = {row["category"]: (row["detectors"], row["concepts"]) for row in tally.summary()["per_category"]}
    assert per_category == {"object": (3, 2), "part": (1, 1), "scene": (1, 1)}


def test_unit_masks_are_the_concepts(analysis) -> None:  # type: ignore[no-untyped-def]
    from camdeploy.units.upsample import unit_masks

    model = analysis.models[0]
    mask = unit_masks(model.top_maps[0, :1], model.thresholds[:1], (8, 8))[0]
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:4, 2:4] = True
    np.testing.assert_array_equal(mask, expected)


def test_files(analysis, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    document = write_report(analysis, tmp_path, ReportOptions(tile=16, classes=(1,), class_units=2),
                            model_info={"path": "handmade"}, class_names=("outdoor thing", "indoor thing"),
                            settings={"quantile": QUANTILE, "input_size": [32, 32], "resize": "stretch"})
    units = json.loads((tmp_path / "units.json").read_text())
    assert units == json.loads(json.dumps(document))
    assert [u["label"] for u in units["units"]] == [EXPECTED[u][0] for u in range(6)]
    assert units["classes"][0]["units"][0] == {"unit": 5, "weight": 3.0, "label": "corner", "category": "part",
                                               "iou": pytest.approx(1.0), "detector": True}
    with open(tmp_path / "tally.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:9] == ["unit", "category", "label", "score", "object-label", "object-truth",
                                 "object-activation", "object-intersect", "object-iou"]
    # 1-based, by score: I / (I + 1e-10) is closer to 1 for larger I (128, 36, 24, 6 pixels), then 0.75, then 0
    assert [r["unit"] for r in rows] == ["3", "2", "1", "6", "4", "5"]
    assert rows[-1]["label"] == "-" and rows[0]["label"] == "outdoor" and float(rows[4]["score"]) == pytest.approx(0.75)
    montage = (tmp_path / "montages" / "unit_0000.jpg")
    assert montage.is_file()
    import cv2

    picture = cv2.imread(str(montage))
    assert picture.shape == (16, 3 * 16 + 2 * 3, 3)
    html = (tmp_path / "index.html").read_text()
    assert "5 of 6 units are detectors of 4 unique concepts" in html and "bargraph.svg" in html
    assert html.index("unit 4 ") > html.index("unit 3 ")  # units by IoU: the non-detector last


def test_refusals(broden: Path, tmp_path: Path) -> None:
    with pytest.raises(CamdeployError, match="--categories object,wood: wood not in"):
        read_broden(broden, ("object", "wood"))
    with pytest.raises(CamdeployError, match=r"no index\.csv"):
        read_broden(tmp_path)
    with pytest.raises(CamdeployError, match="--resize crop: broden concepts label the whole image"), \
            HandmadeRunner() as runner:
        analyse_units([runner], read_broden(broden), tmp_path, UnitsOptions(resize="crop", progress=False))


def test_min_images_keeps_rare_concepts_from_labelling_units(analysis) -> None:  # type: ignore[no-untyped-def]
    tally = analysis.models[0].tally
    assert tally.label_images[OUTDOOR] == 2 and tally.label_images[SQUARE] == 6 and tally.label_images[INDOOR] == 6
    model = analysis.models[0]
    from camdeploy.units.tally import Tally

    assert tally.min_images == 1
    # recount with the same maps: outdoor (2 images) may no longer label unit 2
    source = analysis.source
    again = Tally(6, source.primary, len(source.categories))
    for position, index in enumerate(analysis.images):
        maps = HandmadeRunner().features(_tensor(source.images[index]))[0]
        again.add(maps, model.thresholds, source.concept_map(index, analysis.frames[position]))
    strict = again.result(source.categories, source.labels, min_images=3)
    # next best for unit 2: box, 2 x 6 of its 36 pixels, A[2, object] = 128: 12 / (128 + 36 - 12)
    assert strict.label_names[strict.label[2]] == "box" and strict.score[2] == pytest.approx(12 / 152)
    assert strict.label_names[strict.label[0]] == "square"
    np.testing.assert_array_equal(strict.iou, tally.iou)  # the IoUs themselves do not change


def _tensor(path: Path) -> np.ndarray:
    from broden_handmade import SPEC

    from camdeploy.runtime.images import load_image, prepare

    return prepare(load_image(path), SPEC)[0][None]


@pytest.mark.parametrize("rule", ["empty", "include"])
def test_units_saturated_at_their_threshold(broden: Path, tmp_path: Path, rule: str) -> None:
    """With q = 3 %, units 0, 1, 2 and 3 are 1 (their largest value) on more than 3 % of positions:
    T = 1, so no position is > T. The reference's rule leaves their masks empty; include takes >= T."""
    with HandmadeRunner() as runner:
        result = analyse_units([runner], read_broden(broden), tmp_path,
                               UnitsOptions(quantile=0.03, progress=False, saturated=rule))
    model = result.models[0]
    assert model.thresholds.tolist() == [1, 1, 1, 1, 0, 0]
    assert model.saturated.tolist() == [True, True, True, True, False, False]  # unit 4 is constant: never saturated
    labels = [model.tally.unit_record(u)["label"] for u in range(6)]
    if rule == "empty":
        assert labels == ["-", "-", "-", "-", "-", "corner"]
    else:
        assert labels == ["square", "box", "outdoor", "square", "-", "corner"]
        assert model.tally.score[0] == pytest.approx(1.0) and model.tally.score[4] == 0
