"""The C extension (camdeploy/native/) against the OpenCV and NumPy implementation of the same rule.

On CAMs the two must agree box for box (the mask is the same float32 comparison); from
low-resolution maps, every box either decides must be the rule's on the exact (float64) CAM, at
sizes that exercise the C code's edges: widths that are not multiples of its 4-pixel vectors or
64-bit mask words, non-square maps, single rows and columns.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_native

from camdeploy.runtime.boxes import cam_boxes
from camdeploy.runtime.map_boxes import UNIT, coordinate_error, decision_margin, map_boxes


@pytest.fixture(autouse=True)
def _native_built():
    require_native()


def random_cams(rng, count, height, width):
    """Smooth maps with noise, and sparse binary maps (many components, ties), min-max normalised."""
    smooth = rng.normal(size=(count, height, width)).cumsum(axis=1).cumsum(axis=2)
    smooth += rng.normal(size=smooth.shape) * rng.uniform(0, 3, size=(count, 1, 1))
    binary = (rng.uniform(size=(count, height, width)) < rng.uniform(0.05, 0.6, size=(count, 1, 1))).astype(float)
    maps = np.concatenate([smooth, binary])
    low = maps.min(axis=(1, 2), keepdims=True)
    span = np.maximum(maps.max(axis=(1, 2), keepdims=True) - low, 1e-12)
    return ((maps - low) / span).astype(np.float32)[:, None]


SIZES = [(1, 1), (1, 70), (70, 1), (3, 5), (32, 32), (37, 130), (64, 64), (65, 129), (224, 224)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 0.95, 1.0])
def test_cam_boxes_equal_opencvs(size, threshold):
    cams = random_cams(np.random.default_rng(size[0] * 1000 + size[1]), 12, *size)
    np.testing.assert_array_equal(cam_boxes(cams, threshold, native=True), cam_boxes(cams, threshold, native=False))


def test_cam_boxes_on_unusual_values():
    cams = np.zeros((8, 1, 9, 70), dtype=np.float32)
    cams[1] = 0.5  # constant: the whole frame passes
    cams[2] = -1.0  # below zero everywhere: no pixel reaches tau * max
    cams[3, 0, 4, 66] = np.nan
    cams[4, 0, 0, 0] = np.inf
    cams[5] = -np.inf
    cams[5, 0, 3, 3] = 1.0  # -inf elsewhere: one pixel
    cams[6] = -0.0
    cams[6, 0, 8, 69] = 1.0  # the last pixel alone
    cams[7, 0, :, 1::2] = 1.0  # stripes one pixel apart: separate components, the first wins the tie
    for threshold in (0.0, 0.2, 1.0):
        np.testing.assert_array_equal(cam_boxes(cams, threshold, native=True),
                                      cam_boxes(cams, threshold, native=False))
    boxes = cam_boxes(cams, 0.2, native=True)[:, 0]
    np.testing.assert_array_equal(boxes[[3, 4, 5, 6, 7]], [[0, 0, 70, 9], [0, 0, 70, 9], [3, 3, 4, 4],
                                                           [69, 8, 70, 9], [1, 0, 2, 9]])


def exact_upsampling(maps, size):
    """The exact half-pixel bilinear upsampling (float64, source coordinates clamped) of [N, T, h, w]."""
    def weights(source, target):
        x = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
        first = np.floor(x).astype(int)
        matrix = np.zeros((target, source))
        matrix[np.arange(target), first] += 1 - (x - first)
        matrix[np.arange(target), np.minimum(first + 1, source - 1)] += x - first
        return matrix

    rows, cols = weights(maps.shape[2], size[0]), weights(maps.shape[3], size[1])
    return np.einsum("yi,ntij,xj->ntyx", rows, maps.astype(np.float64), cols)


def exact_cams(maps, size):
    """:func:`exact_upsampling`, min-max normalised: the CAMs without rounding."""
    up = exact_upsampling(maps, size)
    low = up.min(axis=(2, 3), keepdims=True)
    return (up - low) / (up.max(axis=(2, 3), keepdims=True) - low)


UPSAMPLINGS = [((7, 7), (224, 224)), ((7, 7), (30, 30)), ((5, 9), (67, 130)), ((4, 4), (64, 64)),
               ((1, 6), (1, 100)), ((6, 1), (100, 3)), ((10, 10), (299, 299))]


@pytest.mark.parametrize(("source", "size"), UPSAMPLINGS, ids=[f"{s[0]}x{s[1]}-{t[0]}x{t[1]}" for s, t in UPSAMPLINGS])
def test_map_boxes_decide_the_exact_cams_box_at_any_size(native, source, size):
    rng = np.random.default_rng(size[1])
    maps = (rng.normal(size=(30, 1, *source)) * rng.uniform(0.01, 100, size=(30, 1, 1, 1))).astype(np.float32)
    reference = cam_boxes(exact_cams(maps, size), 0.2, native=False)
    boxes, decided = map_boxes(maps, size, 0.2, native=native)
    np.testing.assert_array_equal(boxes[decided], reference[decided])
    assert (~decided).sum() <= 3


@pytest.mark.parametrize(("source", "size"), UPSAMPLINGS, ids=[f"{s[0]}x{s[1]}-{t[0]}x{t[1]}" for s, t in UPSAMPLINGS])
def test_the_c_upsampling_is_within_the_bound_the_margin_assumes(source, size):
    """One float32 upsampling is within e = (12 u + 2 eps) A of the exact one (map_boxes' docstring)."""
    from camdeploy import _boxes

    rng = np.random.default_rng(size[0])
    for raw in (rng.normal(size=source) * scale for scale in (1e-3, 1.0, 3e4)):
        raw = raw.astype(np.float32)
        out = np.empty(size, dtype=np.float32)
        _boxes.upsample(raw, *source, *size, out)
        eps = coordinate_error(source[0], size[0]) + coordinate_error(source[1], size[1])
        bound = (12 * UNIT + 2 * eps) * float(np.abs(raw).max())
        assert np.abs(out - exact_upsampling(raw[None, None], size)[0, 0]).max() <= bound


def test_threads_give_the_same_boxes():
    rng = np.random.default_rng(5)
    maps = rng.normal(size=(20, 5, 7, 7)).astype(np.float32)
    one = map_boxes(maps, (224, 224), 0.2, workers=1, native=True)
    two = map_boxes(maps, (224, 224), 0.2, workers=2, native=True)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    cams = random_cams(rng, 40, 64, 64)
    np.testing.assert_array_equal(cam_boxes(cams, 0.2, workers=2, native=True), cam_boxes(cams, 0.2, native=True))


def test_the_binding_checks_its_buffers():
    from camdeploy import _boxes

    maps = np.zeros((2, 7, 7), dtype=np.float32)
    boxes, decided = np.zeros((2, 4), dtype=np.float32), np.zeros(2, dtype=bool)
    margin = decision_margin(1.0, (7, 7), (224, 224), 0.2)
    with pytest.raises(ValueError, match="maps: got 392 bytes, expected 588"):
        _boxes.map_boxes(maps, 3, 7, 7, 224, 224, 0.2, margin, boxes, decided)
    with pytest.raises(ValueError, match="must be positive"):
        _boxes.map_boxes(maps, 2, 0, 7, 224, 224, 0.2, margin, boxes, decided)
    with pytest.raises(ValueError, match="boxes: got 32 bytes, expected 16"):
        _boxes.cam_boxes(maps, 1, 7, 14, 0.2, boxes)
    with pytest.raises(TypeError):  # outputs must be writable
        _boxes.cam_boxes(maps, 2, 7, 7, 0.2, boxes.tobytes())
