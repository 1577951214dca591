"""The CAM box rule (camdeploy.runtime.boxes) on hand-made maps, checked against a slow BFS reference."""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np
import pytest

from camdeploy.errors import CamdeployError
from camdeploy.runtime.boxes import cam_box, cam_boxes
from camdeploy.runtime.boxes import components as count_components


def components(mask: np.ndarray) -> list[tuple[int, int, list[int]]]:
    """8-connected components of ``mask`` as ``(area, first raster index, [x0, y0, x1, y1])``.

    Plain breadth-first search started from every unvisited pixel in raster order, so the list
    comes out ordered by each component's first pixel.
    """
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    found = []
    for y in range(height):
        for x in range(width):
            if not mask[y, x] or seen[y, x]:
                continue
            seen[y, x] = True
            queue = deque([(y, x)])
            area, x0, y0, x1, y1 = 0, x, y, x + 1, y + 1
            while queue:
                cy, cx = queue.popleft()
                area += 1
                x0, y0, x1, y1 = min(x0, cx), min(y0, cy), max(x1, cx + 1), max(y1, cy + 1)
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            found.append((area, y * width + x, [x0, y0, x1, y1]))
    return found


def reference_box(cam: np.ndarray, threshold: float) -> list[int]:
    """The documented rule, spelled out: largest component, ties to the raster-first one."""
    height, width = cam.shape
    peak = float(np.max(cam))
    if not np.isfinite(peak):
        return [0, 0, width, height]
    found = components(cam >= threshold * peak)
    if not found:
        return [0, 0, width, height]
    best = found[0]
    for comp in found[1:]:
        if comp[0] > best[0]:  # strictly larger only: an equal one found later comes later in raster order
            best = comp
    return best[2]


def art(rows: list[str]) -> np.ndarray:
    """A binary map drawn in ASCII: ``#`` is 1.0, anything else 0.0."""
    return np.array([[1.0 if ch == "#" else 0.0 for ch in row] for row in rows], dtype=np.float32)


def test_single_rectangle_gives_pixel_edge_box():
    cam = np.zeros((8, 10), dtype=np.float32)
    cam[2:5, 3:6] = 1.0  # rows 2..4, columns 3..5
    box = cam_box(cam, 0.5)
    assert box.dtype == np.float32
    assert box.shape == (4,)
    np.testing.assert_array_equal(box, [3, 2, 6, 5])


def test_single_pixel_box_is_one_pixel_wide():
    cam = np.zeros((5, 5), dtype=np.float32)
    cam[4, 0] = 1.0
    np.testing.assert_array_equal(cam_box(cam, 0.5), [0, 4, 1, 5])


@pytest.mark.parametrize("rows, expected", [
    pytest.param(["#.....",
                  "...###",
                  "...###"], [3, 1, 6, 3], id="smaller-first-in-raster-order"),
    pytest.param(["......#",
                  "##.....",
                  "##.....",
                  "##....."], [0, 1, 2, 4], id="larger-lower-left"),
])
def test_larger_component_wins(rows, expected):
    cam = art(rows)
    np.testing.assert_array_equal(cam_box(cam, 0.5), expected)
    assert reference_box(cam, 0.5) == expected


# Each case has exactly two components of equal area; the expected box is the one whose first
# pixel comes first row by row. Several traps for a wrong tie break are included: comparing
# bounding-box corners (row- or column-major), bounding-box areas, or OpenCV's label order.
EQUAL_AREA_CASES = [
    pytest.param(["##..##",
                  "##..##"], [0, 0, 2, 2], id="left-right-same-row"),
    pytest.param(["..##",
                  "..##",
                  "....",
                  "##..",
                  "##.."], [2, 0, 4, 2], id="top-right-over-bottom-left"),
    pytest.param([".....##",
                  "##...##",
                  "##...##",
                  "##....."], [5, 0, 7, 3], id="raster-first-is-right-column-major-first-is-left"),
    pytest.param([".######.#",
                  ".######.#",
                  "........#",
                  "#########"], [1, 0, 7, 2], id="blob-before-hook-whose-box-starts-further-left"),
    pytest.param(["#.#####.#",
                  "#.#####.#",
                  "#.#####.#",
                  "#.#####.#",
                  "#.#.....#",
                  "#.......#",
                  "#########"], [0, 0, 9, 7], id="u-shape-around-blob"),
    pytest.param(["........#",
                  ".######.#",
                  ".######.#",
                  ".##.....#",
                  "........#",
                  "#########"], [0, 0, 9, 6], id="raster-first-hook-reaches-lower-left-under-blob"),
    pytest.param(["#.#.#",
                  ".....",
                  "#.#.#"], [0, 0, 1, 1], id="many-single-pixels"),
]


@pytest.mark.parametrize("rows, expected", EQUAL_AREA_CASES)
def test_equal_area_tie_goes_to_raster_first_component(rows, expected):
    cam = art(rows)
    areas = sorted((comp[0] for comp in components(cam > 0)), reverse=True)
    assert areas[0] == areas[1], "test map must hold a tie"
    assert reference_box(cam, 0.5) == expected
    np.testing.assert_array_equal(cam_box(cam, 0.5), expected)
    # The same answer when the map is graded rather than binary.
    np.testing.assert_array_equal(cam_box(cam * 0.7 + 0.1, 0.9), expected)


def test_random_maps_match_bfs_reference():
    rng = np.random.default_rng(1234)
    ties = 0
    for _ in range(600):
        height, width = rng.integers(1, 13, size=2)
        density = rng.uniform(0.1, 0.4)
        if rng.random() < 0.5:  # binary maps: many equal-area components
            cam = (rng.random((height, width)) < density).astype(np.float32)
        else:  # a few grey levels, thresholded in between
            cam = rng.choice(np.array([0.0, 0.25, 0.5, 1.0], dtype=np.float32), size=(height, width))
        threshold = float(rng.choice([0.2, 0.4, 0.6, 0.9]))
        expected = reference_box(cam, threshold)
        areas = sorted((c[0] for c in components(cam >= threshold * float(cam.max()))), reverse=True)
        ties += len(areas) > 1 and areas[0] == areas[1]
        np.testing.assert_array_equal(cam_box(cam, threshold), expected,
                                      err_msg=f"threshold={threshold}\n{cam}")
    assert ties >= 80, f"only {ties} maps exercised the tie break"


@pytest.mark.parametrize("rows, expected", [
    pytest.param(["#.",
                  ".#"], [0, 0, 2, 2], id="main-diagonal"),
    pytest.param([".#",
                  "#."], [0, 0, 2, 2], id="anti-diagonal"),
    pytest.param(["#.....",
                  ".#..##",
                  "..#.#.",
                  "...#.."], [0, 0, 6, 4], id="diagonal-chain-joins-l"),
])
def test_diagonal_neighbours_are_connected(rows, expected):
    np.testing.assert_array_equal(cam_box(art(rows), 0.5), expected)


def test_pixel_exactly_at_threshold_is_included():
    cam = np.zeros((3, 6), dtype=np.float32)  # maps are float32, and so is tau * max
    cam[1, 1] = 1.0
    cam[1, 2] = np.float32(0.2)  # exactly tau * max
    cam[1, 3] = np.nextafter(np.float32(0.2), np.float32(0.0))  # just below: excluded
    np.testing.assert_array_equal(cam_box(cam, 0.2), [1, 1, 3, 2])


def test_threshold_is_relative_to_the_maximum_float32():
    cam = np.zeros((3, 6), dtype=np.float32)
    cam[1, 1] = 0.8
    cam[1, 2] = 0.4  # 0.5 * 0.8 exactly in float32
    cam[1, 3] = np.nextafter(np.float32(0.4), np.float32(0.0))
    np.testing.assert_array_equal(cam_box(cam, 0.5), [1, 1, 3, 2])


def test_threshold_bounds():
    cam = np.zeros((4, 5), dtype=np.float32)
    cam[1, 1] = 1.0
    cam[3, 4] = 0.5
    np.testing.assert_array_equal(cam_box(cam, 0.0), [0, 0, 5, 4])  # everything passes
    np.testing.assert_array_equal(cam_box(cam, 1.0), [1, 1, 2, 2])  # only the peak


@pytest.mark.parametrize("value", [0.0, 1.0, 0.37])
def test_constant_map_gives_whole_frame(value):
    cam = np.full((5, 7), value, dtype=np.float32)
    np.testing.assert_array_equal(cam_box(cam, 0.2), [0, 0, 7, 5])


def test_map_with_nan_gives_whole_frame():
    cam = np.zeros((5, 7), dtype=np.float32)
    cam[2, 3] = 1.0
    cam[0, 0] = np.nan
    box = cam_box(cam, 0.2)
    assert box.dtype == np.float32
    np.testing.assert_array_equal(box, [0, 0, 7, 5])


def test_cam_boxes_equals_per_map_cam_box():
    rng = np.random.default_rng(7)
    cams = rng.random((2, 3, 6, 9)).astype(np.float32) ** 4
    cams[1, 2] = np.nan
    boxes = cam_boxes(cams, 0.3)
    assert boxes.dtype == np.float32
    assert boxes.shape == (2, 3, 4)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(boxes[i, j], cam_box(cams[i, j], 0.3))
    np.testing.assert_array_equal(boxes[1, 2], [0, 0, 9, 6])


def test_cam_boxes_empty_batch():
    boxes = cam_boxes(np.zeros((0, 2, 4, 4), dtype=np.float32))
    assert boxes.shape == (0, 2, 4)
    assert boxes.dtype == np.float32


def test_cam_boxes_rejects_3d_input():
    with pytest.raises(CamdeployError, match=r"cams: expected \[N, T, H, W\], got shape \(2, 4, 4\)"):
        cam_boxes(np.zeros((2, 4, 4), dtype=np.float32))


def test_cam_box_rejects_non_2d_input():
    with pytest.raises(CamdeployError, match=r"cam: expected a 2-D map \[H, W\]"):
        cam_box(np.zeros((1, 4, 4), dtype=np.float32))


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_cam_boxes_rejects_threshold_outside_unit_interval(threshold):
    with pytest.raises(CamdeployError, match=rf"--box-threshold {threshold}: expected a value in \[0, 1\]"):
        cam_boxes(np.zeros((1, 1, 4, 4), dtype=np.float32), threshold)


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_cam_boxes_accepts_threshold_endpoints(threshold):
    boxes = cam_boxes(np.ones((1, 1, 4, 4), dtype=np.float32), threshold)
    np.testing.assert_array_equal(boxes[0, 0], [0, 0, 4, 4])


def test_threads_give_the_same_boxes():
    """Labelling split over threads (a batch's maps) gives the boxes of one thread, map for map."""
    rng = np.random.default_rng(11)
    small = rng.normal(size=(6, 5, 7, 7)).astype(np.float32)
    cams = np.stack([[cv2.resize(m, (56, 56), interpolation=cv2.INTER_LINEAR) for m in row] for row in small])
    one = cam_boxes(cams, 0.2, workers=1)
    np.testing.assert_array_equal(cam_boxes(cams, 0.2, workers=3), one)
    np.testing.assert_array_equal(np.stack([[cam_box(m, 0.2) for m in row] for row in cams]), one)
    before = cv2.getNumThreads()  # OpenCV's own thread setting is restored
    cam_boxes(cams, 0.2, workers=2)
    assert cv2.getNumThreads() == before


def test_components_counts_like_labelling_on_edges_holes_and_noise():
    def labelled(mask):
        return cv2.connectedComponents(mask, connectivity=8)[0] - 1

    ring = np.zeros((9, 9), dtype=np.uint8)
    ring[1:8, 1:8], ring[2:7, 2:7], ring[4, 4] = 1, 0, 1  # a dot inside a ring's hole: 2 components
    corners = np.zeros((5, 6), dtype=np.uint8)
    corners[0, 0] = corners[4, 5] = corners[0, 5] = 1  # single pixels on the edges
    diagonal = np.eye(6, dtype=np.uint8)  # 8-connected only through corners: 1 component
    cases = [ring, corners, diagonal, np.zeros((4, 4), np.uint8), np.ones((3, 7), np.uint8)]
    rng = np.random.default_rng(3)
    cases += [(rng.random((rng.integers(1, 40), rng.integers(1, 40))) < p).astype(np.uint8)
              for p in (0.1, 0.3, 0.5, 0.7, 0.9) for _ in range(40)]
    assert [count_components(c) for c in cases[:4]] == [2, 3, 1, 0]
    assert [count_components(c) for c in cases] == [labelled(c) for c in cases]


def test_without_the_c_extension_the_opencv_rule_runs_and_asking_for_c_says_how(monkeypatch):
    from camdeploy.runtime import boxes as module

    monkeypatch.setattr(module, "NATIVE", False)
    assert module.use_native(None) is False and module.use_native(False) is False
    with pytest.raises(CamdeployError, match=r"C extension \(camdeploy._boxes\) is not installed.*C compiler"):
        module.use_native(True)
    cams = np.zeros((1, 2, 8, 8), dtype=np.float32)
    cams[0, :, 2:4, 3:6] = 1.0
    np.testing.assert_array_equal(module.cam_boxes(cams), [[[3, 2, 6, 4]] * 2])
