"""The unit mask's resize against Pillow's (what NetDissect-Lite's ``imresize(mode='F')`` calls)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from camdeploy.units.upsample import resize_matrix, unit_masks, upsample


def pillow_resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)


@pytest.mark.parametrize(("source", "target"), [((7, 7), (112, 112)), ((7, 7), (224, 224)), ((7, 7), (113, 113)),
                                                ((5, 9), (37, 70)), ((3, 4), (3, 11)), ((8, 8), (8, 8)),
                                                ((14, 14), (7, 5))])
def test_resize_equals_pillow_bit_for_bit(source: tuple[int, int], target: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(source) + sum(target))
    maps = (rng.standard_normal((6, *source)) * rng.choice([1e-3, 1.0, 50.0], size=(6, 1, 1))).astype(np.float32)
    ours = upsample(maps, target)
    for i in range(len(maps)):
        np.testing.assert_array_equal(ours[i], pillow_resize(maps[i], target))


def test_half_pixel_centres_and_edges() -> None:
    # two columns 0 and 1, upsampled x4: centres at 0.5 and 1.5; outputs at (X + 0.5) / 4
    row = upsample(np.array([[0.0, 1.0]], dtype=np.float32), (1, 8))[0]
    np.testing.assert_allclose(row, [0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1])
    assert resize_matrix(2, 8).sum(axis=1) == pytest.approx(1.0)


def test_masks_are_strictly_above_the_threshold() -> None:
    maps = np.full((2, 3, 3), 1.0, dtype=np.float32)
    masks = unit_masks(maps, np.array([1.0, 0.5], dtype=np.float32), (6, 6))
    assert not masks[0].any() and masks[1].all()
