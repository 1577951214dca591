"""The in-graph box rule against the host rule (cam_box, itself tested against a flood fill).

Pixel layouts (one band per column) make the graph handle any map exactly, so the adversarial
maps are drawn at pixel level; upsampling layouts are tested with maps that really are bilinear
upsamplings, as the exported graph sees them.
"""

from __future__ import annotations

import functools

import numpy as np
import onnxruntime as ort
import pytest
import torch

from camdeploy.errors import CamdeployError
from camdeploy.export.cam_head import upsample_and_normalize
from camdeploy.export.graph_boxes import BandLayout, box_model, upsample_bands
from camdeploy.runtime.boxes import cam_boxes


@functools.cache
def _session(height: int, width: int, source: int | None, topk: int, threshold: float = 0.2
             ) -> ort.InferenceSession:
    layout = (BandLayout.pixels(width) if source is None
              else BandLayout.from_band_of_column(upsample_bands(source, width)))
    model = box_model(height, layout, topk, threshold)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def graph_boxes(cams: np.ndarray, source: int | None = None, threshold: float = 0.2
                ) -> tuple[np.ndarray, np.ndarray]:
    _n, t, h, w = cams.shape
    boxes, exact = _session(h, w, source, t, threshold).run(None, {"cams": cams.astype(np.float32)})
    return boxes, exact


def assert_same_as_host(cams: np.ndarray, source: int | None = None, threshold: float = 0.2) -> None:
    boxes, exact = graph_boxes(cams, source, threshold)
    assert exact.all()
    np.testing.assert_array_equal(boxes, cam_boxes(cams.astype(np.float32), threshold))


def spiral(size: int) -> np.ndarray:
    """One 1-pixel path winding inwards, arms 1 pixel apart: a single component whose labels
    must travel the whole path."""
    m = np.zeros((size, size), dtype=np.float32)
    r0, c0, r1, c1 = 0, 0, size - 1, size - 1
    while r0 <= r1 and c0 <= c1:
        m[r0, c0:c1 + 1] = 1
        m[r0:r1 + 1, c1] = 1
        m[r1, c0:c1 + 1] = 1
        m[r0 + 2:r1 + 1, c0] = 1
        if r0 + 2 <= r1:
            m[r0 + 2, c0:c0 + 3] = 1
        r0, c0, r1, c1 = r0 + 2, c0 + 2, r1 - 2, c1 - 2
    return m


def combs(height: int, width: int) -> np.ndarray:
    """Two interleaved combs (teeth 4 columns apart, bars at the top and the bottom): two
    components with nearly the same area whose boxes differ."""
    m = np.zeros((height, width), dtype=np.float32)
    m[0, :] = 1
    m[:height - 2, 0::4] = 1
    m[height - 1, 2:] = 0.9
    m[2:, 2::4] = 0.9
    return m


@pytest.mark.parametrize("size", [16, 48])
def test_spiral(size):
    cams = spiral(size)[None, None]
    assert_same_as_host(cams)


def test_spiral_beside_rectangles_of_nearly_its_area():
    path = spiral(32)
    area = int(path.sum())
    for extra, spiral_wins in ((-1, True), (0, True), (1, False)):  # a tie goes to the raster-first
        m = np.zeros((32, 80), dtype=np.float32)
        m[:, :32] = path
        rows, rest = divmod(area + extra, 40)
        m[:rows, 36:76] = 0.5
        m[rows, 36:36 + rest] = 0.5
        boxes, _ = graph_boxes(m[None, None])
        assert (boxes[0, 0, 0] == 0) == spiral_wins
        assert_same_as_host(m[None, None])


def test_interleaved_combs():
    assert_same_as_host(combs(40, 41)[None, None])
    assert_same_as_host(combs(40, 41)[::-1, ::-1].copy()[None, None])


def test_checkerboard_and_many_small_blobs():
    rng = np.random.default_rng(3)
    board = np.indices((24, 24)).sum(axis=0) % 2 == 0  # diagonal neighbours: one component
    sparse = (rng.random((24, 24)) < 0.15).astype(np.float32) * rng.random((24, 24)).astype(np.float32)
    squares = np.zeros((24, 24), dtype=np.float32)
    squares[::3, ::3] = 1.0  # isolated pixels, all equal: a 144-way tie
    blocks = np.kron(np.indices((6, 6)).sum(axis=0) % 2, np.ones((4, 4))).astype(np.float32)
    cams = np.stack([board.astype(np.float32), sparse, squares, blocks])[:, None]
    assert_same_as_host(cams)


@pytest.mark.parametrize("value", [0.0, 0.7, -3.0, 3e38])
def test_map_of_one_value_gives_whole_frame(value):
    cams = np.full((1, 1, 12, 20), value, dtype=np.float32)
    boxes, _ = graph_boxes(cams)
    np.testing.assert_array_equal(boxes[0, 0], [0, 0, 20, 12])
    assert_same_as_host(cams)


def test_extreme_finite_values():
    rng = np.random.default_rng(5)
    base = rng.random((3, 2, 20, 20)).astype(np.float32)
    cams = np.stack([base[0] * 3e38, base[1] * 1e-38, (base[2] - 0.5) * 2 * 3e38])  # huge, tiny, both signs
    assert np.isfinite(cams).all()
    assert_same_as_host(cams)


def test_non_finite_maps_give_whole_frame_like_the_host():
    cams = np.random.default_rng(6).random((3, 1, 10, 14)).astype(np.float32)
    cams[0, 0, 2, 3] = np.nan
    cams[1, 0, 5, 5] = np.inf
    boxes, _ = graph_boxes(cams)
    np.testing.assert_array_equal(boxes[:2, 0], [[0, 0, 14, 10]] * 2)
    np.testing.assert_array_equal(boxes, cam_boxes(cams))


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 1.0])
def test_random_pixel_maps(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    cams = rng.random((6, 3, 17, 23)).astype(np.float32) ** 3
    assert_same_as_host(cams, threshold=threshold)


@pytest.mark.parametrize(("source", "size"), [(7, 224), (14, 224), (7, 64), (5, 37)])
def test_upsampled_maps_use_bands_and_match(source, size):
    rng = np.random.default_rng(source * size)
    low = torch.from_numpy(rng.normal(size=(8, 5, source, source)).astype(np.float32))
    cams = upsample_and_normalize(low, (size, size)).numpy()
    assert_same_as_host(cams, source=source)


def test_upsampled_low_resolution_spiral_and_checkerboard():
    low = np.stack([spiral(7), (np.indices((7, 7)).sum(axis=0) % 2).astype(np.float32)])[None]
    cams = upsample_and_normalize(torch.from_numpy(low), (224, 224)).numpy()
    assert_same_as_host(cams, source=7)


def test_a_broken_run_is_reported_not_exact():
    # A band of width 8 whose row holds two separate runs: not what an upsampling can produce.
    cams = np.zeros((1, 1, 3, 8), dtype=np.float32)
    cams[0, 0, 1, [1, 2, 5]] = 1.0
    _boxes, exact = graph_boxes(cams, source=1)
    assert not exact[0, 0]


def test_batch_of_maps_with_different_round_counts():
    rng = np.random.default_rng(9)
    maps = [spiral(32), combs(32, 32), rng.random((32, 32)).astype(np.float32), np.zeros((32, 32), np.float32)]
    cams = np.stack(maps).reshape(2, 2, 32, 32)
    assert_same_as_host(cams)


def test_band_layout_rejects_downsampling_and_bad_bands():
    with pytest.raises(CamdeployError, match="not an upsampling"):
        upsample_bands(10, 5)
    with pytest.raises(CamdeployError, match="non-decreasing"):
        BandLayout.from_band_of_column(np.array([0, 1, 0]))


def test_upsample_bands_for_lite0():
    layout = BandLayout.from_band_of_column(upsample_bands(7, 224))
    assert layout.start == (0, 48, 80, 112, 144, 176, 208)
    assert layout.stop == (48, 80, 112, 144, 176, 208, 224)
