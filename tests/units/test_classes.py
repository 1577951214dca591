"""Class-specific units and the units behind a prediction, against the logit they explain."""

from __future__ import annotations

import numpy as np
import pytest

from camdeploy.errors import CamdeployError
from camdeploy.units.classes import class_units, contributions, pooled, why


def test_class_units_by_weight_ties_by_unit() -> None:
    weight = np.array([[0.5, 2.0, 2.0, -1.0], [1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    assert class_units(weight, 0, 3) == [(1, 2.0), (2, 2.0), (0, 0.5)]
    with pytest.raises(CamdeployError, match=r"--classes 2: expected a class index 0\.\.1"):
        class_units(weight, 2)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_contributions_sum_to_the_logit_without_bias(pooling: str) -> None:
    rng = np.random.default_rng(3)
    features = np.maximum(rng.standard_normal((4, 6, 3, 5)), 0).astype(np.float32)
    weight = rng.standard_normal((3, 6)).astype(np.float32)
    classes = np.array([0, 2, 1, 2])
    parts = contributions(features, weight, classes, pooling)
    wide = features.astype(np.float64)
    pooled_features = wide.mean(axis=(2, 3)) if pooling == "avg" else wide.max(axis=(2, 3))
    logits = pooled_features @ weight.T.astype(np.float64)
    np.testing.assert_allclose(parts.sum(axis=1), logits[np.arange(4), classes], rtol=1e-12)
    np.testing.assert_array_equal(pooled(features, pooling), pooled_features)
    reasons = why(features, weight, classes, pooling, count=6)
    for n, records in enumerate(reasons):
        assert sum(r["share"] for r in records) == pytest.approx(1.0, abs=1e-3)
        assert records[0]["unit"] == int(np.argmax(parts[n]))
        assert "concept" not in records[0]
