"""How a CAM becomes localization guesses: the plain rule, and the CAM paper's ILSVRC heuristic.

``paper`` (default): the guesses are the top-5 classes, each with the box of the largest
8-connected region of its CAM at ``cam >= tau * max`` (:func:`camdeploy.runtime.boxes.cam_box`).

``ilsvrc``: the heuristic of the CAM paper (Zhou et al., CVPR 2016, section 3.1): "two bounding
boxes (one tight and one loose) from the class activation map of the top 1st and 2nd predicted
classes and one loose bounding box from the top 3rd predicted class". The published evaluation
thresholds each 0..255 heatmap at several levels (20, 100 and 110), gathers the boxes of all
regions, ranks them by area and drops boxes that overlap a larger one by more than half of the
larger one's area; the largest remaining box is the loose one, the next the tight one. camdeploy
implements that description on the normalised CAM with thresholds 20/255, 100/255 and 110/255 of
the maximum and 8-connected regions, without the published code's distance-transform
smoothing. Guesses, in order: (class 1, loose), (class 1, tight), (class 2, loose),
(class 2, tight), (class 3, loose). With a single region, tight = loose.
"""

from __future__ import annotations

import cv2
import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.runtime.boxes import threshold_mask

LOC_RULES = ("paper", "ilsvrc")
"""``--loc-rule``: how CAMs become localization guesses."""
ILSVRC_THRESHOLDS = (20 / 255, 100 / 255, 110 / 255)


def region_boxes(cam: np.ndarray, threshold: float) -> np.ndarray:
    """Pixel-edge boxes ``[B, 4]`` of every 8-connected region of ``cam >= threshold * max`` (the
    threshold arithmetic of the box rule, :func:`camdeploy.runtime.boxes.threshold_mask`)."""
    mask = threshold_mask(cam, threshold)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    x, y, w, h = (stats[1:, i].astype(np.float64) for i in range(4))
    return np.stack([x, y, x + w, y + h], axis=1) if count > 1 else np.zeros((0, 4))


def loose_and_tight(cam: np.ndarray, thresholds: tuple[float, ...] = ILSVRC_THRESHOLDS
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The heuristic's loose and tight pixel-edge boxes of one CAM."""
    boxes = np.concatenate([region_boxes(cam, t) for t in thresholds])
    if len(boxes) == 0:
        full = np.array([0, 0, cam.shape[1], cam.shape[0]], dtype=np.float64)
        return full, full
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    for i in np.argsort(-areas, kind="stable"):
        for j in kept:
            w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            if max(w, 0) * max(h, 0) > 0.5 * areas[j]:  # areas[j] >= areas[i]
                break
        else:
            kept.append(int(i))
    return boxes[kept[0]], boxes[kept[1] if len(kept) > 1 else kept[0]]


def guesses(rule: str, classes: np.ndarray, cams: np.ndarray, boxes: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Localization guesses of one image -> ``classes [G]``, pixel-edge ``boxes [G, 4]`` in the
    CAM's frame. ``classes [T]``, ``cams [T, H, W]`` and the plain-rule ``boxes [T, 4]``."""
    if rule == "paper":
        return classes[:5], boxes[:5].astype(np.float64)
    if rule != "ilsvrc":
        raise CamdeployError(f"--loc-rule {rule!r}: expected one of {', '.join(LOC_RULES)}")
    if len(classes) < 3:
        raise CamdeployError(f"--loc-rule ilsvrc needs the CAMs of 3 classes; the model has T={len(classes)} "
                             "(re-export with --topk 5)")
    picked = [loose_and_tight(cams[t]) for t in range(3)]
    out_boxes = np.stack([picked[0][0], picked[0][1], picked[1][0], picked[1][1], picked[2][0]])
    return classes[[0, 0, 1, 1, 2]], out_boxes

