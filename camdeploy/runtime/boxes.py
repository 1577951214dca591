"""The CAM paper's box rule, on the host with OpenCV; every backend uses this one function.

For a min-max normalised CAM ``M`` (``[H, W]``, values in [0, 1]) and threshold ``tau``:

1. ``mask = M >= tau * max(M)``, the product taken in float32 (as the exported graph does);
2. label the 8-connected components of ``mask``;
3. keep the component with the largest pixel count; on a tie, the one whose first pixel comes
   first in raster order (row by row, left to right);
4. return its bounding box ``x0, y0, x1, y1`` in pixel-edge coordinates: the box of pixel
   columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``.

A constant map (no evidence anywhere) passes the threshold everywhere and gives the whole frame;
so does a map with NaN, which an exported graph never produces.
"""

from __future__ import annotations

import cv2
import numpy as np

from camdeploy.errors import CamdeployError


def check_threshold(threshold: float) -> None:
    """Refuse a box threshold outside [0, 1], naming the flag."""
    if not 0.0 <= threshold <= 1.0:
        raise CamdeployError(f"--box-threshold {threshold}: expected a value in [0, 1]")


def threshold_mask(cam: np.ndarray, threshold: float, peak: float | None = None) -> np.ndarray:
    """``uint8`` mask of ``cam >= threshold * max(cam)``, the product taken in float32 as the graph
    takes it; ``peak`` is ``max(cam)`` when the caller has it already."""
    peak = float(np.max(cam)) if peak is None else peak
    return (cam >= np.float32(threshold) * np.float32(peak)).astype(np.uint8)


def cam_box(cam: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Box of the largest 8-connected region of ``cam >= threshold * max(cam)``.

    Args:
        cam: ``float [H, W]`` map, min-max normalised.
        threshold: ``tau`` in [0, 1].

    Returns:
        ``float32 [4]``: ``x0, y0, x1, y1`` in pixel-edge coordinates of the map.
    """
    if cam.ndim != 2:
        raise CamdeployError(f"cam: expected a 2-D map [H, W], got shape {cam.shape}")
    height, width = cam.shape
    peak = float(np.max(cam))
    if not np.isfinite(peak):
        return np.array([0, 0, width, height], dtype=np.float32)
    mask = threshold_mask(cam, threshold, peak)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8,
                                                               ltype=cv2.CV_32S)
    if count <= 1:  # no foreground: cannot happen for a finite map, kept for safety
        return np.array([0, 0, width, height], dtype=np.float32)
    areas = stats[1:, cv2.CC_STAT_AREA]
    tied = 1 + np.flatnonzero(areas == areas.max())
    if len(tied) == 1:
        best = int(tied[0])
    else:  # OpenCV's label order is not raster order: find each tied component's first pixel
        flat = labels.ravel()
        best = min((int(np.argmax(flat == label)), int(label)) for label in tied)[1]
    x, y, w, h = (int(v) for v in stats[best, :4])
    return np.array([x, y, x + w, y + h], dtype=np.float32)


def cam_boxes(cams: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """:func:`cam_box` over ``cams [N, T, H, W]``; returns ``float32 [N, T, 4]``."""
    if cams.ndim != 4:
        raise CamdeployError(f"cams: expected [N, T, H, W], got shape {cams.shape}")
    check_threshold(threshold)
    n, t = cams.shape[:2]
    boxes = np.empty((n, t, 4), dtype=np.float32)
    for i in range(n):
        for j in range(t):
            boxes[i, j] = cam_box(cams[i, j], threshold)
    return boxes
