"""Localization box modes (camdeploy.eval.loc_rules) on hand-made CAMs."""

from __future__ import annotations

import numpy as np
import pytest

from camdeploy.errors import CamdeployError
from camdeploy.eval import loc_rules
from camdeploy.eval.loc_rules import ILSVRC_THRESHOLDS, guesses, loose_and_tight, region_boxes


def paint(height: int, width: int, rects: list[tuple[float, int, int, int, int]], background: float = 0.0
          ) -> np.ndarray:
    """A ``float32 [H, W]`` map with ``(value, x0, y0, x1, y1)`` rectangles (pixel edges) painted in order."""
    cam = np.full((height, width), background, dtype=np.float32)
    for value, x0, y0, x1, y1 in rects:
        cam[y0:y1, x0:x1] = value
    return cam


def art(rows: list[str]) -> np.ndarray:
    """``#`` is 1, ``+`` is 0.5, anything else 0."""
    return np.array([[{"#": 1.0, "+": 0.5}.get(c, 0.0) for c in row] for row in rows], dtype=np.float32)


def as_set(boxes: np.ndarray) -> set[tuple[float, ...]]:
    return {tuple(float(v) for v in box) for box in boxes}


# ------------------------------------------------------------------------------------- region_boxes

def test_region_boxes_single_pixel_has_pixel_edge_box() -> None:
    boxes = region_boxes(art(["....",
                              "..#.",
                              "....",
                              "...."]), 0.5)
    assert boxes.dtype == np.float64
    np.testing.assert_array_equal(boxes, [[2, 1, 3, 2]])


def test_region_boxes_are_8_connected() -> None:
    cam = art(["#.....",
               ".#....",
               "..#..#",
               ".....#",
               "#....."])
    # the diagonal is one region; the right column pair another; the lone corner pixel a third
    assert as_set(region_boxes(cam, 0.5)) == {(0, 0, 3, 3), (5, 2, 6, 4), (0, 4, 1, 5)}
    assert region_boxes(cam, 0.5).shape == (3, 4)


def test_region_boxes_threshold_is_relative_to_the_maximum() -> None:
    cam = art(["++..#",
               "++..#",
               "....."])
    assert as_set(region_boxes(cam, 0.6)) == {(4, 0, 5, 2)}
    assert as_set(region_boxes(cam, 0.5)) == {(0, 0, 2, 2), (4, 0, 5, 2)}  # >=: the 0.5 pixels pass at 0.5
    assert as_set(region_boxes(cam * 4, 0.5)) == {(0, 0, 2, 2), (4, 0, 5, 2)}  # scale does not matter


@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
def test_region_boxes_all_equal_map_is_the_whole_frame(value: float) -> None:
    cam = np.full((5, 7), value, dtype=np.float32)
    boxes = region_boxes(cam, 0.5)
    assert boxes.shape == (1, 4)
    np.testing.assert_array_equal(boxes, [[0, 0, 7, 5]])


def test_region_boxes_nan_map_is_empty_and_loose_tight_falls_back_to_the_frame() -> None:
    cam = np.full((4, 6), np.nan, dtype=np.float32)
    boxes = region_boxes(cam, 0.2)
    assert boxes.shape == (0, 4)
    loose, tight = loose_and_tight(cam)
    np.testing.assert_array_equal(loose, [0, 0, 6, 4])
    np.testing.assert_array_equal(tight, [0, 0, 6, 4])


# ------------------------------------------------------------------------------------ loose_and_tight

def test_ilsvrc_thresholds_are_the_papers() -> None:
    assert ILSVRC_THRESHOLDS == (20 / 255, 100 / 255, 110 / 255)


def test_loose_is_the_faint_region_and_tight_the_bright_core() -> None:
    cam = paint(16, 20, [(0.2, 3, 2, 15, 12), (1.0, 6, 5, 9, 8)])
    loose, tight = loose_and_tight(cam)
    assert loose.dtype == tight.dtype == np.float64
    np.testing.assert_array_equal(loose, [3, 2, 15, 12])
    np.testing.assert_array_equal(tight, [6, 5, 9, 8])


def test_single_region_gives_tight_equal_to_loose() -> None:
    cam = paint(10, 12, [(1.0, 2, 3, 9, 8)])
    loose, tight = loose_and_tight(cam)
    np.testing.assert_array_equal(loose, [2, 3, 9, 8])
    np.testing.assert_array_equal(tight, loose)


def test_faint_floor_below_20_of_255_is_not_part_of_the_loose_box() -> None:
    # 0.07 < 20/255 (0.078) <= 0.08: the floor is left out, the 0.08 plateau is the loose box
    cam = paint(12, 12, [(0.08, 1, 1, 11, 10), (1.0, 4, 4, 6, 6)], background=0.07)
    loose, tight = loose_and_tight(cam)
    np.testing.assert_array_equal(loose, [1, 1, 11, 10])
    np.testing.assert_array_equal(tight, [4, 4, 6, 6])


def test_tight_is_the_second_largest_kept_box() -> None:
    # 20/255 -> the 12x12 ring, 100/255 -> the 6x6 middle (0.4 >= 0.392), 110/255 -> the 2x2 core
    cam = paint(14, 14, [(0.2, 1, 1, 13, 13), (0.4, 4, 4, 10, 10), (1.0, 6, 6, 8, 8)])
    loose, tight = loose_and_tight(cam)
    np.testing.assert_array_equal(loose, [1, 1, 13, 13])
    np.testing.assert_array_equal(tight, [4, 4, 10, 10])


@pytest.mark.parametrize("core, kept", [(8, False), (7, True)], ids=["64-of-100-dropped", "49-of-100-kept"])
def test_nested_core_is_dropped_only_when_it_covers_half_the_larger_box(core: int, kept: bool) -> None:
    # a core nested in the 10x10 loose box overlaps it by its whole area; the rule compares that with
    # half of the LARGER box (50 pixels), so a 7x7 core stays and an 8x8 one goes
    cam = paint(12, 12, [(0.2, 1, 1, 11, 11), (1.0, 2, 2, 2 + core, 2 + core)])
    loose, tight = loose_and_tight(cam)
    np.testing.assert_array_equal(loose, [1, 1, 11, 11])
    np.testing.assert_array_equal(tight, [2, 2, 2 + core, 2 + core] if kept else [1, 1, 11, 11])


def fake_regions(monkeypatch: pytest.MonkeyPatch, boxes: list[list[float]]) -> None:
    """Make every threshold but the first give no region and the first give ``boxes``."""
    def regions(cam: np.ndarray, threshold: float) -> np.ndarray:
        if threshold == ILSVRC_THRESHOLDS[0]:
            return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return np.zeros((0, 4))
    monkeypatch.setattr(loc_rules, "region_boxes", regions)


@pytest.mark.parametrize("candidate, kept", [
    ([4, 0, 13, 10], False),  # area 90, overlap 60 > 50 (IoU 60/130 = 0.46 would keep it)
    ([5, 0, 14, 10], True),   # overlap 50: not MORE than half
    ([6, 0, 15, 10], True),   # overlap 40
    ([2, 2, 8, 8], True),     # nested, 36 < 50 (half of the smaller box, 18, would drop it)
], ids=["overlap-60", "overlap-50", "overlap-40", "nested-36"])
def test_merge_rule_uses_half_the_larger_box(monkeypatch: pytest.MonkeyPatch, candidate: list[float],
                                             kept: bool) -> None:
    big = [0, 0, 10, 10]  # area 100
    fake_regions(monkeypatch, [candidate, big])  # given smaller first: sorting by area must put big first
    loose, tight = loose_and_tight(np.zeros((20, 20)))
    np.testing.assert_array_equal(loose, big)
    np.testing.assert_array_equal(tight, candidate if kept else big)


def test_merge_rule_compares_with_kept_boxes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    big, dropped, third = [0, 0, 10, 10], [4, 0, 13, 10], [5, 0, 13, 9]
    # dropped: overlap 60 with big. third (area 72): overlap 45 with big -> kept, although it
    # overlaps the dropped box by 72 > 45
    fake_regions(monkeypatch, [third, dropped, big])
    loose, tight = loose_and_tight(np.zeros((20, 20)))
    np.testing.assert_array_equal(loose, big)
    np.testing.assert_array_equal(tight, third)


# -------------------------------------------------------------------------------------------- guesses

def test_paper_mode_returns_the_first_five_classes_and_boxes() -> None:
    classes = np.array([9, 4, 7, 1, 3, 8, 2], dtype=np.int64)
    boxes = np.arange(7 * 4, dtype=np.float32).reshape(7, 4)
    cams = np.zeros((7, 4, 4), dtype=np.float32)
    out_classes, out_boxes = guesses("paper", classes, cams, boxes)
    np.testing.assert_array_equal(out_classes, [9, 4, 7, 1, 3])
    assert out_boxes.dtype == np.float64
    np.testing.assert_array_equal(out_boxes, boxes[:5])


def test_paper_mode_with_fewer_than_five_classes() -> None:
    classes = np.array([5, 6])
    boxes = np.array([[0, 0, 1, 1], [1, 1, 2, 2]], dtype=np.float32)
    out_classes, out_boxes = guesses("paper", classes, np.zeros((2, 3, 3)), boxes)
    np.testing.assert_array_equal(out_classes, [5, 6])
    np.testing.assert_array_equal(out_boxes, boxes)


def test_ilsvrc_mode_two_boxes_for_classes_1_and_2_and_one_for_class_3() -> None:
    cams = np.stack([
        paint(16, 20, [(0.2, 3, 2, 15, 12), (1.0, 6, 5, 9, 8)]),    # loose [3,2,15,12], tight [6,5,9,8]
        paint(16, 20, [(1.0, 0, 0, 4, 4)]),                         # one region: tight = loose
        paint(16, 20, [(0.3, 10, 8, 20, 16), (0.9, 17, 13, 19, 15)]),  # loose [10,8,20,16]
        np.full((16, 20), np.nan, dtype=np.float32),                 # classes 4 and 5 are not used
        np.full((16, 20), np.nan, dtype=np.float32),
    ])
    classes = np.array([11, 22, 33, 44, 55])
    plain = np.zeros((5, 4), dtype=np.float32)
    out_classes, out_boxes = guesses("ilsvrc", classes, cams, plain)
    np.testing.assert_array_equal(out_classes, [11, 11, 22, 22, 33])
    assert out_boxes.dtype == np.float64
    np.testing.assert_array_equal(out_boxes, [[3, 2, 15, 12], [6, 5, 9, 8],
                                              [0, 0, 4, 4], [0, 0, 4, 4],
                                              [10, 8, 20, 16]])
    for t, rows in ((0, (0, 1)), (1, (2, 3)), (2, (4,))):
        expected = loose_and_tight(cams[t])
        for k, row in enumerate(rows):
            np.testing.assert_array_equal(out_boxes[row], expected[k])


@pytest.mark.parametrize("mode", ["tight", "PAPER", ""])
def test_invalid_rule_names_the_flag(mode: str) -> None:
    with pytest.raises(CamdeployError, match=rf"^--loc-rule {mode!r}: expected one of paper, ilsvrc$"):
        guesses(mode, np.arange(5), np.zeros((5, 4, 4)), np.zeros((5, 4)))


@pytest.mark.parametrize("count", [1, 2])
def test_ilsvrc_needs_three_classes(count: int) -> None:
    with pytest.raises(CamdeployError, match=rf"^--loc-rule ilsvrc needs the CAMs of 3 classes; the model has "
                                             rf"T={count} \(re-export with --topk 5\)"):
        guesses("ilsvrc", np.arange(count), np.ones((count, 4, 4)), np.zeros((count, 4)))
