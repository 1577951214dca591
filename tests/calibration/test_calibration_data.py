import cv2
import numpy as np
import pytest

from camdeploy.calibration.data import CalibrationData, draw_images, pick_images, refuse_overlap
from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec, Normalization

SPEC = ModelSpec(("a", "b"), 16, 16, Normalization((1 / 255,) * 3, (0.0,) * 3), 2, 0.2, "tiny")


@pytest.fixture()
def folder(tmp_path):
    for i in range(20):
        cv2.imwrite(str(tmp_path / f"im{i:02d}.png"), np.full((10 + i, 12, 3), 10 * i, np.uint8))
    return tmp_path


def test_pick_is_seeded_counted_and_excludes(folder):
    a = pick_images([str(folder)], count=5, seed=1)
    assert a == pick_images([str(folder)], count=5, seed=1)
    assert a != pick_images([str(folder)], count=5, seed=2)
    assert len(a) == 5 and len(pick_images([str(folder)], count=50)) == 20
    excluded = sorted(folder.glob("*.png"))[:15]
    rest = pick_images([str(folder)], count=50, exclude=excluded)
    assert sorted(rest) == sorted(folder.glob("*.png"))[15:]
    with pytest.raises(CamdeployError, match="--count 0"):
        pick_images([str(folder)], count=0)
    with pytest.raises(CamdeployError, match="no calibration images left"):
        pick_images([str(folder)], exclude=sorted(folder.glob("*.png")))


def test_overlap_is_refused(folder):
    files = sorted(folder.glob("*.png"))
    refuse_overlap(files[:10], files[10:])
    with pytest.raises(CamdeployError, match="2 calibration images are also evaluation images"):
        refuse_overlap(files[:10], [files[3], folder / "." / files[4].name])


def test_data_is_re_iterable_and_a_reader(folder):
    files = sorted(folder.glob("*.png"))[:7]
    data = CalibrationData(files, SPEC, batch_size=3, progress=False)
    first = [feed["images"] for feed in data]
    assert [f.shape for f in first] == [(3, 3, 16, 16), (3, 3, 16, 16), (1, 3, 16, 16)]
    again = [feed["images"] for feed in data]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    got = []
    while (feed := data.get_next()) is not None:
        got.append(feed["images"])
    assert len(got) == 3
    assert np.array_equal(data.get_next()["images"], first[0])  # starts over after the end
    data.rewind()
    assert np.array_equal(data.get_next()["images"], first[0])


def test_draw_holds_back_verification_images_first(folder):
    draw = draw_images([str(folder)], count=50, seed=3, verify_count=4, min_verify=2)
    assert len(draw.verification) == 4 and len(draw.ranges) == 16
    assert not set(draw.ranges) & set(draw.verification)
    assert draw == draw_images([str(folder)], count=50, seed=3, verify_count=4, min_verify=2)
    assert len(draw_images([str(folder)], count=50, verify_count=100, min_verify=2).verification) == 4  # a fifth
    assert draw_images([str(folder)], count=50, seed=3).verification == []
    with pytest.raises(CamdeployError, match="20 images are too few to calibrate and to verify on 20 held-back"):
        draw_images([str(folder)], count=50, verify_count=100)
    with pytest.raises(CamdeployError, match="--verify-count -1"):
        draw_images([str(folder)], verify_count=-1)
