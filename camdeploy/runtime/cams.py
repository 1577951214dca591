"""CAMs of any class on the host, from the graph's ``features`` output and the head's weight.

The graph returns the maps of its top-T classes; evaluation also needs the map of the ground-truth
class, which may not be among them. This is the same math as the graph's head, in NumPy and
OpenCV (``cv2.INTER_LINEAR`` upsampling uses half-pixel centres, like the graph's Resize).
"""

from __future__ import annotations

import cv2
import numpy as np


def host_cams(features: np.ndarray, weight: np.ndarray, classes: np.ndarray, size: tuple[int, int]
              ) -> np.ndarray:
    """``M[n, t] = sum_c weight[classes[n, t], c] * features[n, c]``, upsampled and min-max normalised.

    Args:
        features: ``float32 [N, C, h, w]``.
        weight: ``float32 [K, C]``.
        classes: ``int [N, T]``.
        size: ``(S_h, S_w)`` of the output maps.

    Returns:
        ``float32 [N, T, S_h, S_w]`` in [0, 1]; a constant map is all 0.
    """
    n = features.shape[0]
    maps = np.einsum("ntc,nchw->nthw", weight[classes], features, optimize=True)  # [N, T, h, w]
    out = np.empty((n, classes.shape[1], *size), dtype=np.float32)
    for i in range(n):
        for j in range(classes.shape[1]):
            up = cv2.resize(maps[i, j].astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            low, span = float(up.min()), float(up.max() - up.min())
            out[i, j] = (up - low) / span if span > 0 else 0.0
    return out
