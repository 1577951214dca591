"""CAMs of any class on the host, from the graph's ``features`` output and the head's weight.

The graph returns the maps of its top-T classes; evaluation also needs the map of the ground-truth
class, which may not be among them, and a hook-based peer (torchcam) gives raw maps to finish. This
is the math of the graph's head (:mod:`camdeploy.export.cam_head`) in NumPy and OpenCV
(``cv2.INTER_LINEAR`` upsampling uses half-pixel centres, like the graph's Resize); a test holds the
two against each other.
"""

from __future__ import annotations

import cv2
import numpy as np


def class_maps(features: np.ndarray, weight: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``M[n, t] = sum_c weight[classes[n, t], c] * features[n, c]``.

    Args:
        features: ``float32 [N, C, h, w]``.
        weight: ``float32 [K, C]``.
        classes: ``int [N, T]``.

    Returns:
        ``float32 [N, T, h, w]``: the raw, low-resolution maps.
    """
    return np.einsum("ntc,nchw->nthw", weight[classes], features, optimize=True).astype(np.float32)


def upsample_and_normalize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of ``maps [N, T, h, w]`` to ``size = (S_h, S_w)``, then min-max to [0, 1]
    per map; a constant map is all 0. Returns ``float32 [N, T, S_h, S_w]``."""
    n, t = maps.shape[:2]
    out = np.empty((n, t, *size), dtype=np.float32)
    for i in range(n):
        for j in range(t):
            up = cv2.resize(maps[i, j].astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            low, span = float(up.min()), float(up.max() - up.min())
            out[i, j] = (up - low) / span if span > 0 else 0.0
    return out


def host_cams(features: np.ndarray, weight: np.ndarray, classes: np.ndarray, size: tuple[int, int]
              ) -> np.ndarray:
    """:func:`class_maps` upsampled and normalised: ``float32 [N, T, S_h, S_w]`` in [0, 1]."""
    return upsample_and_normalize(class_maps(features, weight, classes), size)
