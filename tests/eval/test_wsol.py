"""wsolevaluation's protocol on hand-made cases, each value derived from the published definitions.

The definitions (clovaai/wsolevaluation ``evaluation.py`` and ``inference.py``, restated in
``camdeploy/eval/wsol.py``): 8-bit map ``Q = uint8(M * 255)`` (truncation); at threshold ``tau``
the mask is ``Q > int(tau * max(Q))``; contours from ``cv2.findContours(RETR_TREE)``, holes
included; the largest contour is the one with the largest ``cv2.contourArea``, the polygon area
through the boundary pixels' centres, so a ``w x h`` block has area ``(w - 1) * (h - 1)``; a
contour's bounding rectangle ``(x, y, w, h)`` gives the box ``(x, y, min(x + w, W - 1),
min(y + h, H - 1))``; no contour gives ``(0, 0, 0, 0)``. Ground truth: ``int(x * 224 / W)``.
IoU: inclusive corners, ``area = (x1 - x0 + 1) * (y1 - y0 + 1)``. An image counts at IoU
``delta`` when the best IoU is ``>= delta / 100``.
"""

import cv2
import numpy as np
import pytest

from camdeploy.errors import CamdeployError
from camdeploy.eval.wsol import (
    MAXBOXACC_V1,
    MAXBOXACC_V2,
    WsolBoxAccuracy,
    maxboxacc_v2_name,
    wsol_best_ious,
    wsol_boxes,
    wsol_ground_truth,
    wsol_iou,
    wsol_quantise,
    wsol_scoremap,
    wsol_thresholds,
)


def _blocks(shape, *blocks):
    """A float64 map of zeros with ``(rows, cols, value)`` blocks; rows and cols are slices."""
    m = np.zeros(shape, dtype=np.float64)
    for rows, cols, value in blocks:
        m[rows, cols] = value
    return m


def _sorted(boxes):
    return sorted(map(tuple, np.asarray(boxes).tolist()))


# --- thresholds -------------------------------------------------------------------------------

def test_threshold_grid_is_numpys_arange():
    t = wsol_thresholds()
    assert len(t) == 1000 and t[0] == 0.0
    # arange's 200th value is the double nearest 0.2, so int(tau * 255) = int(51.0) = 51 there,
    # while the 199th, 0.199, gives int(50.745) = 50.
    assert t[200] == 0.2 and int(t[200] * 255) == 51 and int(t[199] * 255) == 50
    assert len(wsol_thresholds(0.01)) == 100
    with pytest.raises(CamdeployError, match=r"step 0: expected a number in \(0, 1\]"):
        wsol_thresholds(0)


# --- the right and bottom edges are clipped to W - 1 and H - 1 --------------------------------

def test_box_touching_the_right_edge_is_clipped():
    # 20x20 map, a 5x5 block in rows 5..9 and columns 15..19 (it touches the right edge).
    # Q = 255 in the block, 0 elsewhere; int(tau * 255) <= 254 for every tau < 1, so the mask is
    # the block at every threshold. boundingRect = (15, 5, 5, 5): x + w = 20 -> min(20, 19) = 19;
    # y + h = 10 stays. Box (15, 5, 19, 10).
    m = _blocks((20, 20), (slice(5, 10), slice(15, 20), 1.0))
    for boxes in wsol_boxes(m, [0.0, 0.5, 0.999], multi_contour=False):
        assert _sorted(boxes) == [(15, 5, 19, 10)]
    # Same on the bottom edge: rows 15..19, columns 2..6 -> (2, 15, 2 + 5, min(20, 19)) = (2, 15, 7, 19).
    m = _blocks((20, 20), (slice(15, 20), slice(2, 7), 1.0))
    assert _sorted(wsol_boxes(m, [0.5])[0]) == [(2, 15, 7, 19)]
    # Both edges: the whole map -> (0, 0, min(20, 19), min(20, 19)) = (0, 0, 19, 19).
    assert _sorted(wsol_boxes(np.ones((20, 20)), [0.5])[0]) == [(0, 0, 19, 19)]


def test_clipping_decides_a_hit_at_iou_70():
    # Ground truth = the block exactly, inclusive (15, 5, 19, 9): area 5 * 5 = 25.
    # Touching block: box (15, 5, 19, 10), area 5 * 6 = 30, intersection 25, IoU 25/30 = 0.833:
    #   a hit at 30, 50 and 70. (Unclipped (15, 5, 20, 10) would be 25/36 = 0.694: no hit at 70.)
    # The same block away from the edge, columns 5..9, GT (5, 5, 9, 9): box (5, 5, 10, 10),
    #   area 36, IoU 25/36 = 0.694: a hit at 30 and 50, not at 70.
    edge = WsolBoxAccuracy(step=0.01)
    edge.add(_blocks((20, 20), (slice(5, 10), slice(15, 20), 1.0)), np.array([[15, 5, 19, 9]]))
    inside = WsolBoxAccuracy(step=0.01)
    inside.add(_blocks((20, 20), (slice(5, 10), slice(5, 10), 1.0)), np.array([[5, 5, 9, 9]]))
    assert [edge.maxboxacc(i) for i in (30, 50, 70)] == [1.0, 1.0, 1.0]
    assert [inside.maxboxacc(i) for i in (30, 50, 70)] == [1.0, 1.0, 0.0]
    assert inside.maxboxacc_v2() == pytest.approx(2 / 3)
    assert wsol_iou(np.array([[15, 5, 19, 10]]), np.array([[15, 5, 19, 9]]))[0, 0] == 25 / 30


# --- ground truth is scaled to 224 and truncated --------------------------------------------

def test_ground_truth_with_fractional_coordinates_is_truncated():
    # A 300 x 200 (W x H) image; x' = int(x * 224 / 300), y' = int(y * 224 / 200):
    #   10.5 * 224 / 300 = 2352 / 300 = 7.84 -> 7 (rounding would give 8)
    #   20.7 * 224 / 200 = 4636.8 / 200 = 23.184 -> 23
    #   150.2 * 224 / 300 = 33644.8 / 300 = 112.149... -> 112
    #   199.9 * 224 / 200 = 44777.6 / 200 = 223.888 -> 223 (rounding would give 224, off the frame)
    # Integers that land on integers stay: 75 * 224 / 300 = 56, 50 * 224 / 200 = 56,
    #   225 * 224 / 300 = 168, 150 * 224 / 200 = 168.
    boxes = np.array([[10.5, 20.7, 150.2, 199.9], [75, 50, 225, 150]])
    out = wsol_ground_truth(boxes, image_hw=(200, 300))
    assert out.dtype == np.int64
    assert out.tolist() == [[7, 23, 112, 223], [56, 56, 168, 168]]
    # No clipping: a box reaching x = W maps to 224 (outside the 0..223 frame) and stays there.
    assert wsol_ground_truth(np.array([0, 0, 300, 200]), (200, 300)).tolist() == [[0, 0, 224, 224]]
    # Another frame size: 99.9 * 10 / 100 = 9.99 -> 9.
    assert wsol_ground_truth(np.array([0, 0, 99.9, 99.9]), (100, 100), (10, 10)).tolist() == [[0, 0, 9, 9]]


def test_ground_truth_checks_the_box_convention():
    with pytest.raises(CamdeployError, match="x1 < x0"):
        wsol_ground_truth(np.array([[5, 0, 4, 3]]), (10, 10))
    with pytest.raises(CamdeployError, match="non-negative"):
        wsol_ground_truth(np.array([[-1, 0, 4, 3]]), (10, 10))
    with pytest.raises(CamdeployError, match=r"expected boxes \[M >= 1, 4\]"):
        wsol_ground_truth(np.zeros((0, 4)), (10, 10))
    with pytest.raises(CamdeployError, match="frame size"):
        wsol_ground_truth(np.array([[0, 0, 1, 1]]), (0, 10))


# --- a map exactly at an 8-bit threshold: strictly above int(tau * 255) ----------------------

def test_pixels_exactly_at_the_8_bit_threshold_are_left_out():
    # 10x10 map: A = 1.0 (rows 1-2, cols 1-2), B = 0.2 (rows 5-6, cols 5-6),
    # C = 52/255 (rows 1-2, cols 6-7). Q: A = 255; B = uint8(0.2 * 255) = uint8(51.0) = 51
    # (0.2 * 255 rounds to exactly 51.0 in double precision); C = uint8(52.0) = 52.
    # tau = 0.2 (grid index 200): int(0.2 * 255) = 51, mask Q > 51 = {A, C}: B is exactly at the
    #   threshold and is left out.
    # tau = 0.199: int(50.745) = 50, mask = {A, B, C}.
    # Boxes: A (1, 1, 1 + 2, 1 + 2) = (1, 1, 3, 3), B (5, 5, 7, 7), C (6, 1, 8, 3); none reaches 9.
    m = _blocks((10, 10), (slice(1, 3), slice(1, 3), 1.0), (slice(5, 7), slice(5, 7), 0.2),
                (slice(1, 3), slice(6, 8), 52 / 255))
    assert wsol_quantise(m)[5, 5] == 51 and wsol_quantise(m)[1, 6] == 52
    t = wsol_thresholds()
    at_199, at_200 = wsol_boxes(m, t[[199, 200]], multi_contour=True)
    assert _sorted(at_199) == [(1, 1, 3, 3), (5, 5, 7, 7), (6, 1, 8, 3)]
    assert _sorted(at_200) == [(1, 1, 3, 3), (6, 1, 8, 3)]
    # With B's own box as ground truth (IoU 1 when B is found), BoxAcc is 1 up to tau = 0.199 and
    # 0 from tau = 0.2 on.
    acc = WsolBoxAccuracy()
    acc.add(m, np.array([[5, 5, 7, 7]]))
    curve = acc.curves(multi_contour=True)[1]  # IoU 50
    assert curve[:200].tolist() == [1.0] * 200 and curve[200:].tolist() == [0.0] * 800
    assert acc.best_threshold(50) == 0.0


def test_quantisation_truncates():
    # B = 0.5: Q = uint8(127.5) = 127 (truncation; rounding would give 128). B is in the mask while
    # int(tau * 255) <= 126, i.e. tau * 255 < 127, tau < 0.49804: up to tau = 0.498 on the 0.001
    # grid (0.498 * 255 = 126.99); from tau = 0.499 (127.245 -> 127) it is out.
    m = _blocks((10, 10), (slice(1, 3), slice(1, 3), 1.0), (slice(5, 7), slice(5, 7), 0.5))
    assert wsol_quantise(m)[5, 5] == 127
    acc = WsolBoxAccuracy()
    acc.add(m, np.array([[5, 5, 7, 7]]))
    curve = acc.curves(multi_contour=True)[1]
    assert curve[:499].tolist() == [1.0] * 499 and curve[499:].tolist() == [0.0] * 501


def test_equal_contour_areas_keep_the_first_contour():
    # Python's max() keeps the first of equal keys: with two 4x4 squares (contour area 9 each) the
    # kept contour is the first in cv2.findContours' list, whatever order OpenCV lists them in.
    m = _blocks((30, 30), (slice(2, 6), slice(2, 6), 1.0), (slice(20, 24), slice(20, 24), 1.0))
    contours, _ = cv2.findContours((m * 255).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    assert [cv2.contourArea(c) for c in contours] == [9.0, 9.0]
    x, y, w, h = cv2.boundingRect(contours[0])
    assert _sorted(wsol_boxes(m, [0.5], multi_contour=False)[0]) == [(x, y, x + w, y + h)]


# --- largest contour by cv2.contourArea, not by pixel count ---------------------------------

def test_largest_contour_is_by_contour_area_not_pixel_count():
    # Strip: 2 rows x 20 columns (rows 2-3, cols 2-21) = 40 pixels, contour area (20-1)*(2-1) = 19.
    # Square: 6 x 6 (rows 20-25, cols 20-25) = 36 pixels, contour area (6-1)*(6-1) = 25.
    # Largest by pixel count: the strip; by contourArea: the square, box (20, 20, 26, 26).
    m = _blocks((40, 40), (slice(2, 4), slice(2, 22), 1.0), (slice(20, 26), slice(20, 26), 1.0))
    assert (m[2:4, 2:22] > 0).sum() == 40 and (m[20:26, 20:26] > 0).sum() == 36
    assert _sorted(wsol_boxes(m, [0.5], multi_contour=False)[0]) == [(20, 20, 26, 26)]
    # Strip box: (2, 2, 2 + 20, 2 + 2) = (2, 2, 22, 4).
    assert _sorted(wsol_boxes(m, [0.5], multi_contour=True)[0]) == [(2, 2, 22, 4), (20, 20, 26, 26)]
    # With the strip as ground truth (2, 2, 21, 3), area 40: the strip's box has area 21 * 3 = 63,
    # IoU 40/63 = 0.635 (a hit at 30 and 50, not 70); the square's box does not overlap it.
    # v1 (largest contour, IoU 50) = 0; v2 = mean(1, 1, 0) = 2/3.
    acc = WsolBoxAccuracy(step=0.01)
    acc.add(m, np.array([[2, 2, 21, 3]]))
    assert acc.maxboxacc_v1() == 0.0
    assert [acc.maxboxacc(i) for i in (30, 50, 70)] == [1.0, 1.0, 0.0]
    assert acc.metrics() == pytest.approx({MAXBOXACC_V1: 0.0, MAXBOXACC_V2: 2 / 3, "maxboxacc_v2_iou30": 1.0,
                                           "maxboxacc_v2_iou50": 1.0, "maxboxacc_v2_iou70": 0.0})


def test_holes_are_contours_too():
    # A 10x10 ring (rows/cols 1-10) around a 4x4 hole (rows/cols 4-7) in a 12x12 map. RETR_TREE
    # gives the outer border and the hole border; the hole border runs over the foreground pixels
    # around the hole, columns and rows 3-8: boundingRect (3, 3, 6, 6) -> box (3, 3, 9, 9).
    # Outer: (1, 1, min(11, 11), min(11, 11)) = (1, 1, 11, 11).
    m = _blocks((12, 12), (slice(1, 11), slice(1, 11), 1.0), (slice(4, 8), slice(4, 8), 0.0))
    assert _sorted(wsol_boxes(m, [0.5], multi_contour=True)[0]) == [(1, 1, 11, 11), (3, 3, 9, 9)]
    assert _sorted(wsol_boxes(m, [0.5], multi_contour=False)[0]) == [(1, 1, 11, 11)]


# --- edge cases -------------------------------------------------------------------------------

def test_empty_mask_gives_the_one_pixel_box_at_the_origin():
    # All-zero map: max(Q) = 0, int(tau * 0) = 0, nothing is > 0: no contour, box (0, 0, 0, 0),
    # which is one pixel in inclusive corners. Against GT (0, 0, 0, 1) (2 pixels): IoU 1/2, a hit
    # at 30 and 50 but not 70 (the protocol's own quirk: an empty map can count).
    m = np.zeros((8, 8))
    assert all(_sorted(b) == [(0, 0, 0, 0)] for b in wsol_boxes(m, wsol_thresholds(0.25)))
    acc = WsolBoxAccuracy(step=0.25)
    acc.add(m, np.array([[0, 0, 0, 1]]))
    acc.add(m, np.array([[4, 4, 6, 6]]))  # no overlap: IoU 0
    assert [acc.maxboxacc(i) for i in (30, 50, 70)] == [0.5, 0.5, 0.0]
    assert acc.maxboxacc_v1() == 0.5


def test_constant_and_nan_maps_become_zero():
    # normalize_scoremap: a constant map, or one with a NaN, becomes all 0.
    assert not wsol_scoremap(np.full((7, 7), 3.5)).any()
    with_nan = np.ones((7, 7))
    with_nan[3, 3] = np.nan
    out = wsol_scoremap(with_nan)
    assert out.shape == (224, 224) and out.dtype == np.float64 and not out.any()


def test_several_ground_truth_boxes_take_the_best():
    # One blob at rows 10-19, cols 10-19 of a 40x40 map: box (10, 10, 20, 20), area 121.
    # GT 1 (30, 30, 35, 35) does not overlap; GT 2 (10, 10, 19, 19) (area 100) gives 100/121 = 0.826.
    m = _blocks((40, 40), (slice(10, 20), slice(10, 20), 1.0))
    truth = np.array([[30, 30, 35, 35], [10, 10, 19, 19]])
    single, multi = wsol_best_ious(m, truth, [0.5])
    assert single.tolist() == multi.tolist() == [100 / 121]
    acc = WsolBoxAccuracy(step=0.5)
    acc.add(m, truth)
    assert acc.maxboxacc_v1() == 1.0 and acc.maxboxacc(70) == 1.0


def test_iou_inclusive_corners_and_degenerate_pairs():
    # (1, 2, 5, 6): 5 x 5 = 25; (3, 1, 4, 5): 2 x 5 = 10; overlap columns 3-4, rows 2-5: 2 x 4 = 8.
    # IoU 8 / (25 + 10 - 8) = 8/27.
    assert wsol_iou(np.array([[1, 2, 5, 6]]), np.array([[3, 1, 4, 5]]))[0, 0] == 8 / 27
    # Empty inclusive boxes (x1 = x0 - 1) have area 0: union 0 -> IoU 0, not NaN.
    assert wsol_iou(np.array([[3, 3, 2, 2]]), np.array([[3, 3, 2, 2]]))[0, 0] == 0.0


# --- score maps: bicubic upsampling and min-max normalisation ---------------------------------

def test_scoremap_is_bicubic_then_min_max():
    # CAMComputer: cv2.resize(cam, size, interpolation=cv2.INTER_CUBIC) on float64, then
    # (M - min) / max(M - min).
    low = np.array([[0.0, 1.0, 0.0], [2.0, 5.0, 1.0], [0.0, 1.0, 3.0]], dtype=np.float32)
    up = cv2.resize(low.astype(np.float64), (224, 224), interpolation=cv2.INTER_CUBIC)
    expected = (up - up.min()) / (up - up.min()).max()
    out = wsol_scoremap(low)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0.0 and out.max() == 1.0
    # Not camdeploy's bilinear map: bicubic overshoots and then renormalises.
    bilinear = cv2.resize(low.astype(np.float64), (224, 224), interpolation=cv2.INTER_LINEAR)
    bilinear = (bilinear - bilinear.min()) / (bilinear.max() - bilinear.min())
    assert np.abs(out - bilinear).max() > 0.01
    # (H, W) order for a frame that is not square.
    assert wsol_scoremap(low, (20, 30)).shape == (20, 30)


def test_scoremap_checks():
    with pytest.raises(CamdeployError, match="expected a numeric 2-D map"):
        wsol_scoremap(np.ones((1, 7, 7)))
    with pytest.raises(CamdeployError, match=r"expected \[0, 1\]"):
        wsol_boxes(np.full((4, 4), 1.5), [0.5])
    with pytest.raises(CamdeployError, match="NaN"):
        wsol_boxes(np.full((4, 4), np.nan), [0.5])
    with pytest.raises(CamdeployError, match="expected floats"):
        wsol_boxes(np.zeros((4, 4), dtype=np.uint8), [0.5])
    with pytest.raises(CamdeployError, match="integer boxes"):
        wsol_best_ious(np.zeros((4, 4)), np.array([[0.5, 0, 1, 1]]), [0.5])


def test_accumulator_options():
    with pytest.raises(CamdeployError, match="including 50"):
        WsolBoxAccuracy(iou_thresholds=(30, 70))
    acc = WsolBoxAccuracy(step=0.1, iou_thresholds=(50, 75))
    assert acc.thresholds.shape == (10,) and acc.curves().shape == (2, 10)
    assert maxboxacc_v2_name(75) in acc.metrics()
    with pytest.raises(CamdeployError, match="not accumulated"):
        acc.maxboxacc(30)
    assert acc.count == 0 and acc.maxboxacc_v2() == 0.0  # nothing added: BoxAcc 0, no division by 0


# --- the fast path equals the per-threshold rule --------------------------------------------

def _straightforward(scoremap, truth, thresholds, multi_contour):
    """Best IoU at each threshold, one threshold at a time (compute_bboxes_from_scoremaps + IoU)."""
    return np.array([wsol_iou(b, truth).max() for b in wsol_boxes(scoremap, thresholds, multi_contour)])


def _test_maps():
    rng = np.random.default_rng(15)
    maps = [wsol_scoremap(rng.normal(size=(7, 7))) for _ in range(4)]  # smooth CAM-like maps
    maps.append(wsol_scoremap(rng.normal(size=(28, 28))))  # many blobs and holes
    maps.append(rng.integers(0, 256, size=(60, 60)) / 255.0)  # noise: many contours per mask
    maps.append(0.5 * wsol_scoremap(rng.normal(size=(7, 7))))  # max(Q) = 127, not 255
    maps.append(np.zeros((50, 50)))  # empty masks
    maps.append(_blocks((40, 40), (slice(2, 4), slice(2, 22), 1.0), (slice(20, 26), slice(20, 26), 1.0)))
    return maps


@pytest.mark.parametrize("index", range(9))
def test_fast_path_equals_the_per_threshold_rule(index):
    m = _test_maps()[index]
    h, w = m.shape
    truth = np.array([[w // 8, h // 8, w // 2, h // 2], [w // 3, h // 4, w - 1, h - 1]])
    thresholds = wsol_thresholds(0.001)
    single, multi = wsol_best_ious(m, truth, thresholds)
    np.testing.assert_array_equal(single, _straightforward(m, truth, thresholds, False))
    np.testing.assert_array_equal(multi, _straightforward(m, truth, thresholds, True))


def test_accumulator_counts_match_the_per_threshold_rule():
    thresholds = wsol_thresholds(0.01)
    acc = WsolBoxAccuracy(step=0.01)
    expected_single = np.zeros((3, 100), dtype=np.int64)
    expected_multi = np.zeros((3, 100), dtype=np.int64)
    for m in _test_maps():
        h, w = m.shape
        truth = np.array([[w // 4, h // 4, 3 * w // 4, 3 * h // 4]])
        acc.add(m, truth)
        for row, delta in enumerate((0.3, 0.5, 0.7)):
            expected_single[row] += _straightforward(m, truth, thresholds, False) >= delta
            expected_multi[row] += _straightforward(m, truth, thresholds, True) >= delta
    assert acc.count == 9
    np.testing.assert_array_equal(acc.single_hits, expected_single)
    np.testing.assert_array_equal(acc.multi_hits, expected_multi)
    assert acc.maxboxacc_v1() == expected_single[1].max() / 9
    assert acc.maxboxacc_v2() == pytest.approx(np.mean(expected_multi.max(axis=1) / 9))
