"""Per-unit statistics of a stream of feature maps, in memory that does not grow with the images:
each unit's top-k images by the spatial maximum of its map, and its exact top quantile.

Threshold ``T[u]``: the ``1 - q`` quantile (q = 0.005 by default) of unit ``u``'s values over
every spatial position of every image, at feature-map resolution, with linear interpolation
between order statistics (NumPy's default ``method='linear'``: ``v[lo] + (v[hi] - v[lo]) * f``
where ``lo + f = (1 - q)(n - 1)`` on the values sorted ascending), then rounded to float32, the
type of the maps it is compared with. It is exact: only the largest
``m = n_max - floor((1 - q)(n_max - 1))`` values of each unit can be order statistics ``lo`` or
``hi``, for any ``n <= n_max``, and those are kept (``n_max`` is an upper bound on the positions,
from the number of images listed). Memory: ``4 * units * m`` bytes, about ``q`` of the whole
feature store (0.7 MB for Lite0 on 699 images, 80 MB on Broden's 63,305).

NetDissect-Lite reads ``readout(1000)[:, 994]`` of a sketch instead (``util/vecquantile.py``:
the ``994/999 = 1 - 0.005005`` quantile, approximated): see :mod:`camdeploy.units.tally`.
"""

from __future__ import annotations

import math

import numpy as np

from camdeploy.errors import CamdeployError

DEFAULT_QUANTILE = 0.005
DEFAULT_TOP_K = 10


def kept_values(quantile: float, positions: int) -> int:
    """How many of the largest values decide the ``1 - quantile`` quantile of up to ``positions`` values."""
    if positions < 1:
        return 1
    return max(1, positions - math.floor((1.0 - quantile) * (positions - 1)))


def interpolated_quantile(top: np.ndarray, n: int, quantile: float) -> np.ndarray:
    """The ``1 - quantile`` quantile (linear) of ``n`` values per row, from the row's largest values
    ``top [U, m]`` sorted descending; ``float64 [U]``."""
    position = (1.0 - quantile) * (n - 1)
    lo = math.floor(position)
    hi = min(lo + 1, n - 1)
    fraction = position - lo
    low_value = top[:, n - 1 - lo].astype(np.float64)  # rank from the top of order statistic lo
    high_value = top[:, n - 1 - hi].astype(np.float64)
    diff = high_value - low_value
    # NumPy's lerp: from the nearer end, so that f = 0 and f = 1 give the values themselves
    return np.where(fraction >= 0.5, high_value - diff * (1 - fraction), low_value + diff * fraction)


class UnitStats:
    """Streaming statistics of ``units`` maps of ``map_shape``; feed batches in image order with
    :meth:`add`.

    Args:
        units: channels of the feature map.
        map_shape: ``(h, w)`` of each map.
        max_images: an upper bound on the images that will be added (sizes the quantile's buffer).
        top_k: images kept per unit.
        quantile: ``q`` of the threshold (the top ``q`` of positions lie above ``T``).
    """

    def __init__(self, units: int, map_shape: tuple[int, int], max_images: int, top_k: int = DEFAULT_TOP_K,
                 quantile: float = DEFAULT_QUANTILE):
        if not 0.0 < quantile < 1.0:
            raise CamdeployError(f"--quantile {quantile}: expected a fraction between 0 and 1 (e.g. 0.005)")
        if top_k < 1:
            raise CamdeployError(f"--top-k {top_k}: expected a positive number of images")
        self.units, self.top_k, self.quantile = units, top_k, quantile
        self.map_shape: tuple[int, int] = (int(map_shape[0]), int(map_shape[1]))
        self.max_images = max_images
        positions = map_shape[0] * map_shape[1]
        self.kept = kept_values(quantile, max(1, max_images) * positions)
        self.images = 0
        self.top_values = np.full((units, 0), -np.inf, dtype=np.float32)
        """``[U, <=k]`` spatial maxima of each unit's top images, largest first; ties (common at an
        activation's ceiling, such as ReLU6's 6) go to the larger sum of the map, then the earlier image."""
        self.top_sums = np.zeros((units, 0), dtype=np.float64)
        self.top_images = np.zeros((units, 0), dtype=np.int64)
        self.top_maps = np.zeros((units, 0, *map_shape), dtype=np.float32)
        self.minimum = np.full(units, np.inf, dtype=np.float32)
        """``[U]``: each unit's smallest value."""
        self._largest = np.full((units, 0), -np.inf, dtype=np.float32)
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    def add(self, features: np.ndarray) -> np.ndarray:
        """Add a batch ``features float32 [B, U, h, w]`` (the next B images); return its spatial
        maxima ``[B, U]``."""
        if features.ndim != 4 or features.shape[1] != self.units or features.shape[2:] != self.map_shape:
            raise CamdeployError(f"features: got shape {tuple(features.shape)}; expected [B, {self.units}, "
                                 f"{self.map_shape[0]}, {self.map_shape[1]}]")
        if not np.isfinite(features).all():
            bad = int(np.argwhere(~np.isfinite(features))[0][0])
            raise CamdeployError(f"features of image {self.images + bad} are not finite (NaN or infinity); the model "
                                 "or its input is broken")
        batch = features.shape[0]
        if self.images + batch > self.max_images:
            raise CamdeployError(f"UnitStats: {self.images + batch} images added; max_images is {self.max_images}")
        maxima = features.reshape(batch, self.units, -1).max(axis=2)  # [B, U]
        np.minimum(self.minimum, features.min(axis=(0, 2, 3)), out=self.minimum)
        self._add_top(features, maxima)
        values = np.ascontiguousarray(features.transpose(1, 0, 2, 3).reshape(self.units, -1))  # [U, B*h*w]
        self._pending.append(values)
        self._pending_size += values.shape[1]
        if self._pending_size >= max(self.kept, 4096):
            self._compact()
        self.images += batch
        return maxima

    def _add_top(self, features: np.ndarray, maxima: np.ndarray) -> None:
        indices = np.arange(self.images, self.images + features.shape[0])
        values = np.concatenate([self.top_values, maxima.T], axis=1)  # [U, k' + B]
        sums = np.concatenate([self.top_sums, features.sum(axis=(2, 3), dtype=np.float64).T], axis=1)
        images = np.concatenate([self.top_images, np.broadcast_to(indices, (self.units, len(indices)))], axis=1)
        maps = np.concatenate([self.top_maps, features.transpose(1, 0, 2, 3)], axis=1)
        order = np.lexsort((images, -sums, -values), axis=1)[:, :self.top_k]
        self.top_values = np.take_along_axis(values, order, axis=1)
        self.top_sums = np.take_along_axis(sums, order, axis=1)
        self.top_images = np.take_along_axis(images, order, axis=1)
        self.top_maps = np.take_along_axis(maps, order[:, :, None, None], axis=1)

    def _compact(self) -> None:
        if not self._pending:
            return
        values = np.concatenate([self._largest, *self._pending], axis=1)
        self._pending, self._pending_size = [], 0
        if values.shape[1] > self.kept:
            values = np.partition(values, values.shape[1] - self.kept, axis=1)[:, -self.kept:]
        self._largest = values

    @property
    def positions(self) -> int:
        """Values seen per unit."""
        return self.images * self.map_shape[0] * self.map_shape[1]

    def thresholds(self) -> np.ndarray:
        """``T float32 [U]`` (see the module docstring)."""
        if self.images == 0:
            raise CamdeployError("no image was read: no threshold can be computed")
        self._compact()
        top = -np.sort(-self._largest, axis=1)  # [U, m] descending
        return interpolated_quantile(top, self.positions, self.quantile).astype(np.float32)
