"""The box rule from the low-resolution maps, without the graph's full-resolution CAMs.

A deployment that needs classes, scores and boxes, but not the maps themselves, need not have the
graph upsample and normalise ``T`` maps of ``S_h x S_w`` floats per image and copy them out: the
graph can stop at the raw maps ``[N, T, h, w]`` (7x7 for Lite0) and the host finds the boxes.

**Exact, not approximately equal.** The box must be the one :func:`~camdeploy.runtime.boxes.cam_box`
gives on the graph's own CAM, which is float32 arithmetic done by the runtime (ONNX Runtime's
``Resize``, then ``(R - min R) / span``). The host upsamples the same maps with OpenCV, in float32
too, and bounds how far the two can disagree: a pixel is in the graph's mask when
``R >= min R + tau * span``, and that comparison cannot go the other way for a pixel whose host
value is farther than a margin ``E`` from the host's level. So the host draws two masks, ``certain``
(above the level by more than ``E``) and ``possible`` (above it less ``E``); the graph's mask lies
between them. When they are equal (two maps in three on the dev images), its box is the host
rule's. When they differ, the box is still decided if the largest component of ``certain`` (``C``,
unique) grows, in ``possible``, into a component with the same bounding box and less than twice its
area, and every other component of ``possible`` is smaller than ``C``: whatever the undecided
pixels do, the graph's largest component contains ``C``, has that box and nothing can outgrow it.
Otherwise (8 of the 3,495 maps of the dev images) the map is not decided, and the caller runs the
graph's own head on those maps alone (:func:`camdeploy.graph.cam_head`) and boxes its CAMs. The
counts, the disagreements below and the host's time per map: ``python benchmarks/map_boxes.py``
(benchmarks/results/MAP_BOXES.md).

**Two implementations.** :func:`map_box` here, with OpenCV and NumPy, and the C extension
(``camdeploy/native/boxes.c``, used by :func:`map_boxes` when installed), which upsamples each map
in float32 with the same operations (so within the same ``e``), draws the same two masks as runs
of pixels from the same margin, and labels the runs; its certificate is the general one above,
where this module's shortcut for a single component of ``certain`` also asks every undecided pixel
to lie in ``C``'s box.

**The margin.** With ``u = 2**-24``, ``A`` the largest magnitude of the map, and ``eps`` the error
of a float32 source coordinate (zero when the upsampling factor is a power of two, as 7 -> 224 is:
every coordinate and weight is then exact; ``4 u (h + 1)`` otherwise), one float32 bilinear
upsampling is within ``e = (12 u + 2 (eps_y + eps_x)) A`` of the exact one (two passes of two
products and a sum, plus the weights' error times a difference of at most ``2 A``). In one such
computation a pixel's value is off by at most ``e`` and the level ``min + tau * span`` by at most
``(1 + 2 tau) e``, so the comparison moves by ``(2 + 2 tau) e``; the graph and the host are two such
computations, and the graph's subtraction and division add ``4 u span <= 8 u A``. So
``E = (2 + 2 tau) 2 e + 8 u A``. Measured disagreement on the dev maps: 6.4 ``u A`` for ONNX
Runtime's normalised maps, 2.3 ``u A`` for OpenCV's upsampling and 3.3 for the C extension's, against
``E`` of 66 ``u A``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.runtime.boxes import _native, cam_boxes, check_threshold, components, mask_box, split_work, use_native

UNIT = 2.0 ** -24
"""Unit roundoff of float32."""


def coordinate_error(source: int, target: int) -> float:
    """Bound on the error of a float32 source coordinate (and so of a weight) of a half-pixel
    upsampling from ``source`` to ``target`` samples: 0 when ``target / source`` is a power of two
    (all exact), else ``4 u (source + 1)``."""
    factor, rest = divmod(target, source)
    if rest == 0 and factor & (factor - 1) == 0:
        return 0.0
    return 4 * UNIT * (source + 1)


def decision_margin(amplitude: float, source: tuple[int, int], target: tuple[int, int], threshold: float
                    ) -> float:
    """``E``: how far from the level a host value must be for the graph's mask to agree with it."""
    eps = coordinate_error(source[0], target[0]) + coordinate_error(source[1], target[1])
    one_upsampling = (12 * UNIT + 2 * eps) * amplitude
    return (2 + 2 * threshold) * 2 * one_upsampling + 8 * UNIT * amplitude


def _float32_above(value: float) -> np.float32:
    """The smallest float32 >= ``value``."""
    rounded = np.float32(value)
    return rounded if float(rounded) >= value else np.nextafter(rounded, np.float32(np.inf))


def _float32_below(value: float) -> np.float32:
    """The largest float32 <= ``value``."""
    rounded = np.float32(value)
    return rounded if float(rounded) <= value else np.nextafter(rounded, np.float32(-np.inf))


def _certified_box(certain: np.ndarray, possible: np.ndarray, area: int, possible_area: int
                   ) -> tuple[int, int, int, int] | None:
    """The box every mask between ``certain`` and ``possible`` gets from the rule, or None."""
    rect = cv2.boundingRect(certain)
    left, top, w, h = rect
    if components(certain[top:top + h, left:left + w]) == 1:  # `certain` is one component C (most maps):
        # a component of undecided pixels alone is smaller than C when they are fewer than C's
        # pixels, and C's box stays if they lie in it.
        return _edges(rect) if possible_area - area < area and cv2.boundingRect(possible) == rect else None
    count, labels = cv2.connectedComponents(certain[top:top + h, left:left + w], connectivity=8, ltype=cv2.CV_32S)
    full = np.zeros(certain.shape, dtype=np.int32)
    full[top:top + h, left:left + w] = labels
    areas = np.bincount(labels.ravel(), minlength=count)[1:]
    best = 1 + int(np.argmax(areas))
    if (areas == areas[best - 1]).sum() > 1:  # a tie in `certain` could go either way
        return None
    count_wide, labels_wide = cv2.connectedComponents(possible, connectivity=8, ltype=cv2.CV_32S)
    first = int(np.argmax(full.ravel() == best))
    grown = int(labels_wide.ravel()[first])
    areas_wide = np.bincount(labels_wide.ravel(), minlength=count_wide)[1:]
    others = np.delete(areas_wide, grown - 1)
    if areas_wide[grown - 1] >= 2 * areas[best - 1] or (others >= areas[best - 1]).any():
        return None
    box = cv2.boundingRect((full == best).view(np.uint8))
    wide = cv2.boundingRect((labels_wide == grown).view(np.uint8))
    return _edges(box) if box == wide else None


def _edges(rect: Sequence[int]) -> tuple[int, int, int, int]:
    """``x0, y0, x1, y1`` of OpenCV's ``x, y, w, h``."""
    x, y, w, h = rect
    return x, y, x + w, y + h


def bracket(raw: np.ndarray, size: tuple[int, int], threshold: float, amplitude: float | None = None,
            margin_per_unit: float | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Masks ``certain`` and ``possible`` (``uint8 [S_h, S_w]``) between which the graph's mask of
    the raw map ``raw [h, w]`` (float32) upsampled to ``size = (S_h, S_w)`` lies, or None for a map
    the graph's normalisation decides (constant to rounding, or not finite). ``amplitude`` is
    ``max |raw|`` and ``margin_per_unit`` the margin of amplitude 1, when known."""
    height, width = size
    amplitude = float(np.max(np.abs(raw))) if amplitude is None else amplitude
    if not np.isfinite(amplitude):
        return None
    up = cv2.resize(raw, (width, height), interpolation=cv2.INTER_LINEAR)
    low, high, _, _ = cv2.minMaxLoc(up)
    if margin_per_unit is None:
        margin_per_unit = decision_margin(1.0, raw.shape, size, threshold)
    margin = margin_per_unit * amplitude  # the margin is linear in the amplitude
    span = high - low
    if span <= 4 * margin:  # (nearly) constant: the graph's normalisation decides
        return None
    level = low + float(np.float32(threshold)) * span
    certain = np.greater(up, _float32_above(level + margin)).view(np.uint8)
    possible = np.greater_equal(up, _float32_below(level - margin)).view(np.uint8)
    return certain, possible


def map_box(raw: np.ndarray, size: tuple[int, int], threshold: float, amplitude: float | None = None,
            margin_per_unit: float | None = None) -> tuple[int, int, int, int] | None:
    """The host rule's box on the graph's CAM of the raw map ``raw [h, w]`` (float32), upsampled to
    ``size = (S_h, S_w)``, or None when float32 rounding in the graph could decide it (see the
    module's docstring and :func:`bracket` for the optional arguments)."""
    masks = bracket(raw, size, threshold, amplitude, margin_per_unit)
    if masks is None:
        return None
    certain, possible = masks
    area, possible_area = cv2.countNonZero(certain), cv2.countNonZero(possible)
    if area == 0:  # nothing certain: the graph's rounding could decide every pixel
        return None
    if area == possible_area:
        return mask_box(certain)
    return _certified_box(certain, possible, area, possible_area)


def map_boxes(maps: np.ndarray, size: tuple[int, int], threshold: float = 0.2, workers: int = 1,
              native: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`map_box` over ``maps [N, T, h, w]``, in ``workers`` threads.

    ``native``: compute with the C implementation (camdeploy/native/boxes.c, see
    :data:`~camdeploy.runtime.boxes.NATIVE`), which upsamples, thresholds and labels each map with
    no Python between maps; or with OpenCV and NumPy (:func:`map_box`); default: C when installed.
    Both draw the same two masks from the same margin and apply the same tests (the C one's
    certificate also accepts components of ``possible`` outside ``C``'s box that are smaller than
    ``C``); only their float32 upsamplings differ, each within the bound.

    Returns:
        ``boxes float32 [N, T, 4]`` (pixel-edge coordinates of ``size``) and ``decided bool [N, T]``:
        where False, the box is left at 0 and the caller boxes the graph's own CAM of that map.
    """
    if maps.ndim != 4:
        raise CamdeployError(f"maps: expected [N, T, h, w], got shape {maps.shape}")
    check_threshold(threshold)
    native = use_native(native)
    n, t, h, w = maps.shape
    flat = np.ascontiguousarray(maps, dtype=np.float32).reshape(n * t, h, w)
    boxes = np.zeros((n * t, 4), dtype=np.float32)
    decided = np.zeros(n * t, dtype=bool)
    per_unit = decision_margin(1.0, maps.shape[2:], size, threshold)
    if not native:
        with np.errstate(invalid="ignore"):
            amplitudes = np.abs(flat).max(axis=(1, 2)).tolist()

    def work(start: int, stop: int) -> None:
        if native:
            assert _native is not None
            _native.map_boxes(flat[start:stop], stop - start, h, w, size[0], size[1], threshold, per_unit,
                              boxes[start:stop], decided[start:stop])
            return
        for m in range(start, stop):
            box = map_box(flat[m], size, threshold, amplitudes[m], per_unit)
            if box is not None:
                boxes[m], decided[m] = box, True

    split_work(work, n * t, workers)
    return boxes.reshape(n, t, 4), decided.reshape(n, t)


def exact_map_boxes(maps: np.ndarray, size: tuple[int, int], threshold: float,
                    head: Callable[[np.ndarray], np.ndarray], workers: int = 1, native: bool | None = None
                    ) -> np.ndarray:
    """:func:`map_boxes`, with the maps it leaves undecided boxed on the graph's own CAMs:
    ``head(maps [k, 1, h, w]) -> cams [k, 1, S_h, S_w]`` runs the graph's CAM head on them alone.
    Returns ``float32 [N, T, 4]``: the host rule's boxes on the graph's CAMs, every one."""
    boxes, decided = map_boxes(maps, size, threshold, workers, native)
    undecided = np.argwhere(~decided)
    if len(undecided):
        rows, ranks = undecided[:, 0], undecided[:, 1]
        cams = head(np.ascontiguousarray(maps[rows, ranks][:, None], dtype=np.float32))
        boxes[rows, ranks] = cam_boxes(cams, threshold, native=native)[:, 0]
    return boxes
