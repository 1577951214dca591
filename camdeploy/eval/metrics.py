"""Localization and classification metrics, as pure functions on arrays.

Box convention: ``x0, y0, x1, y1`` with **inclusive** corners, and IoU adds 1 to widths and
heights (ILSVRC and wsolevaluation). camdeploy's own boxes are pixel-edge boxes (``x1`` one past
the last column); :func:`edge_to_inclusive` converts them.

* classification error (top-1, top-5): the ground-truth class is not the first / not among the
  first five predictions;
* localization error (top-1, top-5), the ILSVRC rule: a guess is right when its class is the
  ground-truth class and its box has IoU >= 0.5 with any ground-truth box; top-1 looks at the
  first guess, top-5 at the first five;
* ``gt_known_loc_tau`` (:data:`GT_KNOWN_LOC_TAU`), GT-known localization at a fixed ``tau``, the
  CAM paper's measure (Zhou et al., CVPR 2016): the box of the ground-truth class's CAM at the
  runner's box threshold ``tau`` (0.2 by default) has IoU >= 0.5 with a ground-truth box
  (classification is not judged). wsolevaluation's "GT-known localization" is another measure,
  the best threshold's (``maxboxacc_v1`` in :mod:`camdeploy.eval.wsol`);
* ``maxboxacc_v2_camdeploy`` (:data:`MAXBOXACC_V2_CAMDEPLOY`, :class:`MaxBoxAcc`), MaxBoxAccV2 after
  Choe et al. (CVPR 2020 and TPAMI 2022) with camdeploy's own conventions: the ground-truth class's
  CAM as the runtime makes it (bilinear upsampling to the model input, float32, min-max
  normalised), quantised to 8 bits, is thresholded at every ``tau`` in 0.00, 0.01, ..., 0.99
  (pixels strictly above ``int(tau * max)``); every contour of the mask gives a box
  ``(x, y, x + w, y + h)`` (no contour: ``(0, 0, 0, 0)``); an image counts at ``(tau, delta)``
  when the best IoU between those boxes and the ground-truth boxes, mapped to the model input with
  their fractions kept, is at least ``delta``. MaxBoxAcc(delta) is the best accuracy over ``tau``,
  and MaxBoxAccV2 the mean over ``delta`` in {0.3, 0.5, 0.7}.

  It is **not** wsolevaluation's figure, which differs in four conventions
  (:mod:`camdeploy.eval.wsol`, ``camdeploy eval --protocol wsolevaluation``): its score map is
  upsampled bicubically (in float64); its boxes' right and bottom edges are clipped to ``W - 1``
  and ``H - 1``; its ground truth is truncated to integers after scaling to the 224x224 frame;
  its default threshold step is 0.001. On the same maps, the last three change the outcome of a
  few images per IoU threshold (issue #15).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

IOU_THRESHOLD = 0.5
GT_KNOWN_LOC_TAU = "gt_known_loc_tau"
"""GT-known localization at the runner's fixed box threshold ``tau`` (reported beside it)."""
MAXBOXACC_V2_CAMDEPLOY = "maxboxacc_v2_camdeploy"
"""MaxBoxAccV2 with camdeploy's conventions (:class:`MaxBoxAcc`)."""
CAM_THRESHOLDS = np.arange(100) / 100.0
MAXBOXACC_IOUS = (0.3, 0.5, 0.7)


def edge_to_inclusive(boxes: np.ndarray) -> np.ndarray:
    """Pixel-edge boxes (``x1`` exclusive) -> inclusive-corner boxes."""
    out = np.array(boxes, dtype=np.float64, copy=True)
    out[..., 2:] -= 1.0
    return out


def _iou(a: np.ndarray, b: np.ndarray, extent: float) -> np.ndarray:
    """IoU of broadcast ``[..., 4]`` boxes; ``extent`` is 1 for inclusive corners, 0 for pixel edges."""
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + extent, 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + extent, 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0] + extent) * (a[..., 3] - a[..., 1] + extent)
    area_b = (b[..., 2] - b[..., 0] + extent) * (b[..., 3] - b[..., 1] + extent)
    return inter / (area_a + area_b - inter)


def iou_matrix(boxes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of every box in ``boxes [P, 4]`` with every box in ``truth [G, 4]`` -> ``[P, G]``.

    Inclusive corners: the area of ``(x0, y0, x1, y1)`` is ``(x1 - x0 + 1) * (y1 - y0 + 1)``.
    """
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 1, 4)
    b = np.asarray(truth, dtype=np.float64).reshape(1, -1, 4)
    return _iou(a, b, 1.0)


def paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of pixel-edge boxes (camdeploy's own, ``x1`` one past the last column), pair by pair:
    ``[..., 4]`` and ``[..., 4]`` -> ``[...]``."""
    return _iou(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), 0.0)


def best_iou(boxes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each box in ``boxes [P, 4]``, its best IoU with any ground-truth box -> ``[P]``."""
    return iou_matrix(boxes, truth).max(axis=1)


def classification_errors(classes: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 classification error from ``classes [N, T >= 5]`` and ``labels [N]``."""
    hits = classes == labels[:, None]
    return 1.0 - float(hits[:, 0].mean()), 1.0 - float(hits[:, :5].any(axis=1).mean())


def localization_hits(guess_classes: np.ndarray, guess_boxes: np.ndarray, label: int, truth: np.ndarray,
                      threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """ILSVRC rule for one image: which of ``G`` guesses (``classes [G]``, inclusive ``boxes [G, 4]``)
    name the right class with a box of IoU >= ``threshold`` to a ground-truth box -> ``bool [G]``."""
    return (guess_classes == label) & (best_iou(guess_boxes, truth) >= threshold)


def localization_errors(hits: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 localization error from per-image guess hits ``bool [N, G >= 5]``."""
    return 1.0 - float(hits[:, 0].mean()), 1.0 - float(hits[:, :5].any(axis=1).mean())


def contour_boxes(cam: np.ndarray, threshold: float) -> np.ndarray:
    """Every contour's box at one CAM threshold, ``[B, 4]`` as ``(x, y, x + w, y + h)``: the boxes of
    ``maxboxacc_v2_camdeploy``. Unlike wsolevaluation's (:func:`camdeploy.eval.wsol.wsol_boxes`),
    ``x + w`` and ``y + h`` are not clipped to the last column and row."""
    quantised = (cam * 255).astype(np.uint8)
    _, mask = cv2.threshold(quantised, int(threshold * quantised.max()), 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((1, 4))
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.float64)  # x, y, w, h
    rects[:, 2:] += rects[:, :2]
    return rects


@dataclass
class MaxBoxAcc:
    """Accumulates BoxAcc over CAM thresholds and IoU thresholds, one image at a time: the
    ``camdeploy`` protocol's MaxBoxAccV2 (see the module docstring for how it differs from
    wsolevaluation's, :class:`camdeploy.eval.wsol.WsolBoxAccuracy`)."""

    cam_thresholds: np.ndarray = field(default_factory=lambda: CAM_THRESHOLDS.copy())
    iou_thresholds: tuple[float, ...] = MAXBOXACC_IOUS
    hits: np.ndarray = field(init=False)
    count: int = 0

    def __post_init__(self) -> None:
        self.hits = np.zeros((len(self.iou_thresholds), len(self.cam_thresholds)), dtype=np.int64)

    def add(self, cam: np.ndarray, truth: np.ndarray) -> None:
        """One image: its min-max normalised CAM ``[H, W]`` and ground truth ``[M, 4]`` in that frame."""
        best = np.array([best_iou(contour_boxes(cam, t), truth).max() for t in self.cam_thresholds])
        self.hits += best[None, :] >= np.asarray(self.iou_thresholds)[:, None]
        self.count += 1

    def accuracy(self) -> np.ndarray:
        """BoxAcc ``[len(iou_thresholds), len(cam_thresholds)]``."""
        return self.hits / max(self.count, 1)

    def value(self) -> float:
        """MaxBoxAccV2: the mean over IoU thresholds of the best BoxAcc over CAM thresholds."""
        return float(self.accuracy().max(axis=1).mean())
