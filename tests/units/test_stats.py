"""Streaming top images and the exact quantile threshold against NumPy on the whole array."""

from __future__ import annotations

import numpy as np
import pytest

from camdeploy.errors import CamdeployError
from camdeploy.units.stats import UnitStats, kept_values


@pytest.mark.parametrize(("images", "batches", "quantile"), [(97, [1, 5, 16, 75], 0.005), (40, [40], 0.05),
                                                             (3, [1, 2], 0.005), (300, [7] * 42 + [6], 0.01)])
def test_threshold_is_numpys_quantile_and_top_images_are_exact(images: int, batches: list[int],
                                                               quantile: float) -> None:
    rng = np.random.default_rng(images)
    features = rng.standard_normal((images, 6, 3, 4)).astype(np.float32)
    features[:, 5] = np.round(features[:, 5])  # many ties
    stats = UnitStats(6, (3, 4), max_images=images + 11, top_k=4, quantile=quantile)
    start = 0
    for size in batches:
        stats.add(features[start:start + size])
        start += size
    assert start == images
    per_unit = features.transpose(1, 0, 2, 3).reshape(6, -1).astype(np.float64)
    expected = np.quantile(per_unit, 1 - quantile, axis=1).astype(np.float32)
    np.testing.assert_array_equal(stats.thresholds(), expected)
    maxima = features.reshape(images, 6, -1).max(axis=2)
    sums = features.sum(axis=(2, 3), dtype=np.float64)
    for unit in range(6):
        # largest first; ties (unit 5 has many): the larger sum, then the earlier image
        order = np.lexsort((np.arange(images), -sums[:, unit], -maxima[:, unit]))[:4]
        np.testing.assert_array_equal(stats.top_images[unit], order)
        np.testing.assert_array_equal(stats.top_values[unit], maxima[order, unit])
        np.testing.assert_array_equal(stats.top_maps[unit], features[order, unit])


def test_buffer_is_a_quantile_of_the_positions() -> None:
    assert kept_values(0.005, 699 * 49) == 173
    stats = UnitStats(1280, (7, 7), max_images=699)
    assert stats.kept == 173


def test_refusals() -> None:
    stats = UnitStats(2, (2, 2), max_images=3)
    with pytest.raises(CamdeployError, match="not finite"):
        stats.add(np.full((1, 2, 2, 2), np.nan, dtype=np.float32))
    with pytest.raises(CamdeployError, match="expected"):
        stats.add(np.zeros((1, 3, 2, 2), dtype=np.float32))
    with pytest.raises(CamdeployError, match="--quantile"):
        UnitStats(2, (2, 2), 3, quantile=0)
    with pytest.raises(CamdeployError, match="no image"):
        stats.thresholds()
