"""wsolevaluation's box protocol, as exact pure functions and one accumulator.

The protocol of Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right"
(CVPR 2020) and its journal version "Evaluation for Weakly Supervised Object Localization:
Protocol, Metrics, and Datasets" (TPAMI 2022, arXiv:2007.04178), as its reference code
clovaai/wsolevaluation (commit 96f4b88) computes it. This is an independent implementation of
that code's conventions; each function names the function of the reference it matches.

Per image, for the map ``M`` of the ground-truth class and the ground-truth boxes:

1. **Score map** (:func:`wsol_scoremap`; ``inference.py``: ``CAMComputer`` and
   ``normalize_scoremap``): the low-resolution CAM, widened to float64, is upsampled to the
   224x224 input frame with ``cv2.resize(..., interpolation=cv2.INTER_CUBIC)`` (bicubic, not
   camdeploy's bilinear) and min-max normalised; a map with a NaN or a constant map becomes all 0.
2. **Ground truth** (:func:`wsol_ground_truth`; ``evaluation.py``: ``resize_bbox``): each
   inclusive-corner box of the original image (``W x H``) is scaled to the frame as
   ``x * 224 / W`` and ``y * 224 / H`` (that order of operations, in float64) and **truncated**
   to integers, with no clipping.
3. **Boxes at a threshold** (:func:`wsol_boxes`; ``evaluation.py``:
   ``compute_bboxes_from_scoremaps``): the map is quantised to 8 bits by truncation,
   ``Q = uint8(M * 255)``; at threshold ``tau`` the mask holds the pixels with
   ``Q > int(tau * max(Q))`` (**strictly** above; ``max(Q)`` is 255 for a normalised map);
   ``cv2.findContours(mask, RETR_TREE, CHAIN_APPROX_SIMPLE)`` gives every contour, holes
   included; with one contour per threshold (``multi_contour=False``) the kept one is the first
   with the largest ``cv2.contourArea`` (the polygon area through the boundary pixels' centres,
   **not** the pixel count: a ``w x h`` block has area ``(w - 1) * (h - 1)``); each kept contour's
   ``cv2.boundingRect`` ``(x, y, w, h)`` becomes the box ``(x, y, min(x + w, W - 1),
   min(y + h, H - 1))`` (right and bottom edges **clipped** to the last column and row); no
   contour at all gives the box ``(0, 0, 0, 0)``.
4. **IoU** (:func:`wsol_iou`; ``evaluation.py``: ``calculate_multiple_iou``): inclusive corners,
   ``area = (x1 - x0 + 1) * (y1 - y0 + 1)``; a pair whose union is not positive has IoU 0.
5. **Accumulation** (:class:`WsolBoxAccuracy`; ``evaluation.py``: ``BoxEvaluator.accumulate``
   and ``compute``): the CAM thresholds are ``np.arange(0, 1, step)`` (step 0.001 by default,
   as ``CAMComputer`` and ``evaluate_wsol``; wsolevaluation's ``evaluation.py`` command line
   defaults to 0.01); an image counts at ``(tau, delta)`` when the best IoU between its boxes at
   ``tau`` and its ground-truth boxes is at least ``delta / 100``; BoxAcc is the fraction of
   images that count, and MaxBoxAcc(delta) the best BoxAcc over ``tau``.

Metrics (fractions in [0, 1]; wsolevaluation prints percentages, 100 times these):

* ``maxboxacc_v1`` (:data:`MAXBOXACC_V1`): MaxBoxAcc at IoU 0.5 with the single largest contour.
  wsolevaluation with ``multi_contour_eval=False, multi_iou_eval=False``; the ``MaxBoxAcc`` of
  the CVPR 2020 paper. It is wsolevaluation's "GT-known localization" (the ground-truth class is
  given, the best threshold is chosen), a different measure from camdeploy's fixed-threshold
  GT-known localization at ``tau = 0.2``.
* ``maxboxacc_v2`` (:data:`MAXBOXACC_V2`): the mean over IoU 0.3, 0.5 and 0.7 of MaxBoxAcc with
  every contour's box. wsolevaluation with ``box_v2_metric=True`` (``multi_contour_eval=True,
  multi_iou_eval=True``); the ``MaxBoxAccV2`` of the journal version and of wsolevaluation's
  README table. ``maxboxacc_v2_iou30`` etc. (:func:`maxboxacc_v2_name`) are its terms.

Published figures are on the full ImageNet validation set (or CUB) with the authors' models and
this very CAM computer; comparing with them needs the same score maps (:func:`wsol_scoremap` on a
224x224 stretched input), not only the same metric.

Speed: at step 0.001 the 1000 thresholds give at most ``max(Q)`` different integer thresholds,
and two integer thresholds give the same mask when no pixel value lies between them.
:func:`wsol_best_ious` finds the contours once per distinct mask (at most 255 per image) with the
very same OpenCV calls; ``tests/eval/test_wsol.py`` checks that it equals the per-threshold rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from camdeploy.errors import CamdeployError

WSOL_FRAME = (224, 224)
"""``(H, W)`` of wsolevaluation's input frame (``_RESIZE_LENGTH``): images are stretched to it."""
WSOL_STEP = 0.001
"""Default CAM threshold step (``cam_curve_interval``)."""
WSOL_IOU_THRESHOLDS = (30, 50, 70)
"""IoU thresholds in percent (``iou_threshold_list``)."""
V1_IOU = 50
"""The IoU threshold, in percent, of MaxBoxAcc (v1)."""

MAXBOXACC_V1 = "maxboxacc_v1"
MAXBOXACC_V2 = "maxboxacc_v2"
METRIC_KEYS = (MAXBOXACC_V1, MAXBOXACC_V2)


def maxboxacc_v2_name(iou: int) -> str:
    """Name of MaxBoxAccV2's term at one IoU threshold (percent): ``maxboxacc_v2_iou30``."""
    return f"{MAXBOXACC_V2}_iou{iou}"


def wsol_thresholds(step: float = WSOL_STEP) -> np.ndarray:
    """CAM thresholds ``float64 [T]``: ``np.arange(0, 1, step)``, exactly as wsolevaluation builds
    them (``evaluate_wsol``, ``CAMComputer``), floating-point values included."""
    if not 0.0 < step <= 1.0:
        raise CamdeployError(f"wsolevaluation threshold step {step!r}: expected a number in (0, 1], e.g. 0.001")
    return np.arange(0, 1, step)


def wsol_scoremap(low_res: np.ndarray, frame_hw: tuple[int, int] = WSOL_FRAME) -> np.ndarray:
    """wsolevaluation's score map of one CAM: bicubic upsampling, then min-max normalisation.

    Matches ``CAMComputer.compute_and_evaluate_cams`` and ``normalize_scoremap``
    (``inference.py``): the CAM is taken to float64 (``t2n``), resized with ``cv2.INTER_CUBIC``
    and normalised as ``(M - min) / max(M - min)``; a map with any NaN, or a constant map, becomes
    all 0. Bicubic overshoot is removed by the normalisation. (The reference passes the input's
    ``(H, W)`` where OpenCV expects ``(W, H)``; for its square 224x224 frame the two agree, and this
    function takes ``frame_hw`` as ``(H, W)`` and returns that shape.)

    Args:
        low_res: ``float [h, w]``, the CAM at the feature map's resolution (a sum or a mean over
            channels: the normalisation removes the scale).
        frame_hw: ``(H, W)`` of the output.

    Returns:
        ``float64 [H, W]`` in [0, 1].
    """
    cam = np.asarray(low_res)
    if cam.ndim != 2 or cam.size == 0 or not np.issubdtype(cam.dtype, np.number):
        raise CamdeployError(f"CAM: expected a numeric 2-D map [h, w], got {cam.dtype} of shape {cam.shape}")
    height, width = _frame(frame_hw)
    up: np.ndarray = cv2.resize(cam.astype(np.float64), (width, height), interpolation=cv2.INTER_CUBIC)  # [H, W]
    if np.isnan(up).any() or up.min() == up.max():
        return np.zeros((height, width), dtype=np.float64)
    if not np.isfinite(up).all():
        raise CamdeployError("CAM: has infinite values; expected finite class activations")
    up -= up.min()
    up /= up.max()
    return up


def wsol_ground_truth(boxes: np.ndarray, image_hw: tuple[int, int], frame_hw: tuple[int, int] = WSOL_FRAME
                      ) -> np.ndarray:
    """Ground-truth boxes in wsolevaluation's frame: scaled, then truncated to integers.

    Matches ``resize_bbox`` (``evaluation.py``, used by ``BoxEvaluator._load_resized_boxes``):
    ``x' = int(x * W' / W)``, ``y' = int(y * H' / H)``, computed in float64 in that order, with no
    rounding and no clipping. Boxes keep their inclusive-corner convention.

    Args:
        boxes: ``[M, 4]`` (or ``[4]``) inclusive ``x0, y0, x1, y1`` in the original image's pixels,
            integers or fractions.
        image_hw: ``(H, W)`` of the original image (wsolevaluation's ``image_sizes.txt`` stores
            ``W, H``).
        frame_hw: ``(H', W')`` of the evaluation frame.

    Returns:
        ``int64 [M, 4]``.
    """
    truth = np.asarray(boxes, dtype=np.float64)
    if truth.ndim == 1:
        truth = truth[None]
    if truth.ndim != 2 or truth.shape[1] != 4 or len(truth) == 0:
        raise CamdeployError(f"ground truth: expected boxes [M >= 1, 4] x0,y0,x1,y1, got shape {np.shape(boxes)}")
    _check_box_convention(truth, "ground truth")
    image_h, image_w = _frame(image_hw)
    frame_h, frame_w = _frame(frame_hw)
    scaled = np.empty_like(truth)
    scaled[:, 0::2] = truth[:, 0::2] * float(frame_w) / float(image_w)
    scaled[:, 1::2] = truth[:, 1::2] * float(frame_h) / float(image_h)
    return np.trunc(scaled).astype(np.int64)  # Python's int(): toward zero


def wsol_quantise(scoremap: np.ndarray) -> np.ndarray:
    """The 8-bit map ``uint8(M * 255)`` (truncation) of a score map in [0, 1], after the checks of
    ``check_scoremap_validity`` (``util.py``): 2-D, no NaN, no value outside [0, 1]. A float32
    map is widened to float64 first, as ``t2n`` does."""
    m = np.asarray(scoremap)
    if m.ndim != 2 or m.size == 0:
        raise CamdeployError(f"score map: expected a 2-D map [H, W], got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.floating):
        raise CamdeployError(f"score map: expected floats in [0, 1], got {m.dtype}; use wsol_scoremap")
    m = m.astype(np.float64, copy=False)
    if np.isnan(m).any():
        raise CamdeployError("score map: has NaN values; wsol_scoremap turns such a map into zeros")
    if m.min() < 0.0 or m.max() > 1.0:
        raise CamdeployError(f"score map: values from {m.min()} to {m.max()}; expected [0, 1] (use wsol_scoremap)")
    return (m * 255).astype(np.uint8)


def _integer_thresholds(thresholds: Sequence[float] | np.ndarray, peak: int) -> np.ndarray:
    """``int(tau * peak)`` for every ``tau``: the product in float64, truncated toward zero."""
    taus = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if not np.isfinite(taus).all():
        raise CamdeployError("CAM thresholds: expected finite numbers")
    return np.trunc(taus * float(peak)).astype(np.int64)


def _contour_boxes(quantised: np.ndarray, level: int) -> tuple[np.ndarray, int]:
    """Every contour's clipped box ``int64 [B, 4]`` of ``quantised > level`` and the index of
    the first contour with the largest ``cv2.contourArea``; no contour: ``[[0, 0, 0, 0]]``, 0."""
    height, width = quantised.shape
    _, mask = cv2.threshold(quantised, level, 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) == 0:
        return np.zeros((1, 4), dtype=np.int64), 0
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64)  # [B, 4] x, y, w, h
    largest = int(np.argmax([cv2.contourArea(c) for c in contours]))  # argmax keeps the first maximum
    boxes = np.empty_like(rects)
    boxes[:, :2] = rects[:, :2]
    boxes[:, 2] = np.minimum(rects[:, 0] + rects[:, 2], width - 1)
    boxes[:, 3] = np.minimum(rects[:, 1] + rects[:, 3], height - 1)
    return boxes, largest


def wsol_boxes(scoremap: np.ndarray, thresholds: Sequence[float] | np.ndarray, multi_contour: bool = True
               ) -> list[np.ndarray]:
    """wsolevaluation's boxes at each CAM threshold, one threshold at a time (the plain rule).

    Matches ``compute_bboxes_from_scoremaps`` (``evaluation.py``): see step 3 of the module
    docstring.

    Args:
        scoremap: ``float [H, W]`` in [0, 1] (from :func:`wsol_scoremap`).
        thresholds: CAM thresholds ``tau`` (from :func:`wsol_thresholds`).
        multi_contour: every contour's box (MaxBoxAccV2), or only the largest contour's (v1).

    Returns:
        One ``int64 [B, 4]`` array of inclusive ``x0, y0, x1, y1`` per threshold (``B = 1`` with
        ``multi_contour=False``).
    """
    quantised = wsol_quantise(scoremap)
    out = []
    for level in _integer_thresholds(thresholds, int(quantised.max())):
        boxes, largest = _contour_boxes(quantised, int(level))
        out.append(boxes if multi_contour else boxes[largest:largest + 1])
    return out


def wsol_iou(boxes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of every box in ``boxes [P, 4]`` with every box in ``truth [G, 4]`` -> ``float64 [P, G]``.

    Matches ``calculate_multiple_iou`` (``evaluation.py``): inclusive corners, integer areas
    ``(x1 - x0 + 1) * (y1 - y0 + 1)``, and 0 where the union is not positive.
    """
    a = np.asarray(boxes, dtype=np.int64).reshape(-1, 1, 4)
    b = np.asarray(truth, dtype=np.int64).reshape(1, -1, 4)
    w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = w * h  # [P, G]
    union = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1) \
        + (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1) - inter
    degenerate = union <= 0
    iou = inter / np.where(degenerate, 1, union)
    iou[degenerate] = 0.0
    return iou


def wsol_best_ious(scoremap: np.ndarray, truth: np.ndarray, thresholds: Sequence[float] | np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU with the ground truth at each threshold, largest contour and all contours.

    Equal to taking, for each threshold, ``wsol_iou(wsol_boxes(...)[t], truth).max()`` with
    ``multi_contour=False`` and ``True``, but OpenCV runs once per distinct mask: the mask at
    integer threshold ``k`` is ``Q > k``, so every ``k`` between two consecutive pixel values of
    ``Q`` gives the same mask, found with the same calls.

    Args:
        scoremap: ``float [H, W]`` in [0, 1] (from :func:`wsol_scoremap`).
        truth: ``int [M, 4]`` ground truth in the map's frame (from :func:`wsol_ground_truth`).
        thresholds: CAM thresholds ``[T]``.

    Returns:
        ``(single, multi)``, each ``float64 [T]``.
    """
    quantised = wsol_quantise(scoremap)
    truth = _truth(truth)
    levels = _integer_thresholds(thresholds, int(quantised.max()))  # [T]
    present = np.flatnonzero(np.bincount(quantised.ravel(), minlength=256))  # pixel values, ascending
    # Mask identity: the smallest pixel value above the level (len(present): empty mask).
    mask_ids = np.searchsorted(present, levels, side="right")  # [T]
    _, first, inverse = np.unique(mask_ids, return_index=True, return_inverse=True)
    all_boxes, starts, largest = [], [], []
    count = 0
    for t in first:  # one representative threshold per distinct mask
        boxes, big = _contour_boxes(quantised, int(levels[t]))
        all_boxes.append(boxes)
        starts.append(count)
        largest.append(count + big)
        count += len(boxes)
    best = wsol_iou(np.concatenate(all_boxes), truth).max(axis=1)  # [B total]
    multi = np.maximum.reduceat(best, np.array(starts))  # [len(ids)]
    single = best[np.array(largest)]
    inverse = inverse.reshape(-1)
    return single[inverse], multi[inverse]


class WsolBoxAccuracy:
    """BoxAcc curves of wsolevaluation's ``BoxEvaluator``, for both contour rules, one image at a time.

    One pass gives MaxBoxAcc (v1: largest contour, IoU 0.5) and MaxBoxAccV2 (every contour,
    mean over ``iou_thresholds``): both rules use the same contours.

    Args:
        step: CAM threshold step (``cam_curve_interval``); thresholds ``np.arange(0, 1, step)``.
        iou_thresholds: IoU thresholds in percent (``iou_threshold_list``); must include 50.
    """

    def __init__(self, step: float = WSOL_STEP, iou_thresholds: Sequence[int] = WSOL_IOU_THRESHOLDS) -> None:
        self.step = step
        self.thresholds = wsol_thresholds(step)
        ious = tuple(int(i) for i in iou_thresholds)
        if V1_IOU not in ious or any(not 0 < i <= 100 for i in ious) or len(set(ious)) != len(ious):
            raise CamdeployError(f"IoU thresholds {list(iou_thresholds)}: expected distinct percentages in "
                                 f"(0, 100] including {V1_IOU}, e.g. {list(WSOL_IOU_THRESHOLDS)}")
        self.iou_thresholds = ious
        self._deltas = np.array([i / 100 for i in ious])[:, None]  # [I, 1], as delta / 100 in the reference
        self.single_hits = np.zeros((len(ious), len(self.thresholds)), dtype=np.int64)
        self.multi_hits = np.zeros((len(ious), len(self.thresholds)), dtype=np.int64)
        self.count = 0

    def add(self, scoremap: np.ndarray, truth: np.ndarray) -> None:
        """One image: its score map ``[H, W]`` (:func:`wsol_scoremap`) and its ground truth
        ``int [M, 4]`` in the same frame (:func:`wsol_ground_truth`)."""
        single, multi = wsol_best_ious(scoremap, truth, self.thresholds)
        self.single_hits += single[None, :] >= self._deltas
        self.multi_hits += multi[None, :] >= self._deltas
        self.count += 1

    def curves(self, multi_contour: bool = True) -> np.ndarray:
        """BoxAcc ``float64 [len(iou_thresholds), len(thresholds)]`` (0 before any image)."""
        hits = self.multi_hits if multi_contour else self.single_hits
        return hits / max(self.count, 1)

    def maxboxacc(self, iou: int, multi_contour: bool = True) -> float:
        """MaxBoxAcc at IoU ``iou`` percent: the best BoxAcc over the thresholds."""
        return float(self.curves(multi_contour)[self._row(iou)].max())

    def best_threshold(self, iou: int, multi_contour: bool = True) -> float:
        """The first CAM threshold that reaches :meth:`maxboxacc`."""
        return float(self.thresholds[int(np.argmax(self.curves(multi_contour)[self._row(iou)]))])

    def maxboxacc_v1(self) -> float:
        """MaxBoxAcc (v1): IoU 0.5, largest contour."""
        return self.maxboxacc(V1_IOU, multi_contour=False)

    def maxboxacc_v2(self) -> float:
        """MaxBoxAccV2: the mean over the IoU thresholds of MaxBoxAcc with every contour."""
        return float(np.mean([self.maxboxacc(i) for i in self.iou_thresholds]))

    def metrics(self) -> dict[str, float]:
        """``maxboxacc_v1``, ``maxboxacc_v2`` and ``maxboxacc_v2_iou{delta}`` for each IoU threshold."""
        out = {MAXBOXACC_V1: self.maxboxacc_v1(), MAXBOXACC_V2: self.maxboxacc_v2()}
        out.update({maxboxacc_v2_name(i): self.maxboxacc(i) for i in self.iou_thresholds})
        return out

    def _row(self, iou: int) -> int:
        if iou not in self.iou_thresholds:
            raise CamdeployError(f"IoU threshold {iou}: not accumulated; expected one of {list(self.iou_thresholds)}")
        return self.iou_thresholds.index(iou)


def _frame(hw: tuple[int, int]) -> tuple[int, int]:
    if len(hw) != 2 or any(int(v) != v or v < 1 for v in hw):
        raise CamdeployError(f"frame size {hw!r}: expected (height, width) as positive integers")
    return int(hw[0]), int(hw[1])


def _check_box_convention(boxes: np.ndarray, what: str) -> None:
    """``check_box_convention`` (``util.py``): finite, non-negative, ``x1 >= x0`` and ``y1 >= y0``."""
    if not np.isfinite(boxes).all() or (boxes < 0).any():
        raise CamdeployError(f"{what}: boxes {boxes.tolist()} must be finite and non-negative")
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise CamdeployError(f"{what}: boxes {boxes.tolist()} have x1 < x0 or y1 < y0; expected x0,y0,x1,y1")


def _truth(truth: np.ndarray) -> np.ndarray:
    boxes = np.asarray(truth)
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise CamdeployError(f"ground truth: expected boxes [M >= 1, 4] x0,y0,x1,y1, got shape {np.shape(truth)}")
    if not np.issubdtype(boxes.dtype, np.integer):
        raise CamdeployError(f"ground truth: expected integer boxes in the map's frame, got {boxes.dtype}; "
                             "use wsol_ground_truth")
    _check_box_convention(boxes, "ground truth")
    return boxes.astype(np.int64)
