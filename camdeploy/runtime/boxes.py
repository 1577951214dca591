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

import functools
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from camdeploy.errors import CamdeployError

try:  # the same rule in C (camdeploy/native/), built at install where a C compiler is present
    from camdeploy import _boxes as _native
except ImportError:  # pragma: no cover - depends on the install
    _native = None  # type: ignore[assignment]

NATIVE = _native is not None
"""Whether camdeploy's C extension is installed: :func:`cam_boxes` and
:func:`camdeploy.runtime.map_boxes.map_boxes` then run in C (several times faster, threads side by
side without the GIL); else with OpenCV and NumPy. Both give the same boxes."""


def use_native(native: bool | None) -> bool:
    """Resolve a ``native`` argument: None means the C extension when installed; True without it is
    an error that says how to get it."""
    if native is None:
        return NATIVE
    if native and not NATIVE:
        raise CamdeployError("native=True: camdeploy's C extension (camdeploy._boxes) is not installed; "
                             "reinstall camdeploy where a C compiler and Python's headers are present")
    return native


def check_threshold(threshold: float) -> None:
    """Refuse a box threshold outside [0, 1], naming the flag."""
    if not 0.0 <= threshold <= 1.0:
        raise CamdeployError(f"--box-threshold {threshold}: expected a value in [0, 1]")


def threshold_mask(cams: np.ndarray, threshold: float, peaks: np.ndarray | float | None = None) -> np.ndarray:
    """``uint8`` mask of ``cam >= threshold * max(cam)`` for maps ``[..., H, W]``, the product taken
    in float32 as the graph takes it; ``peaks`` (``[...]``) are the maps' maxima when known."""
    peaks = np.max(cams, axis=(-2, -1)) if peaks is None else peaks
    with np.errstate(invalid="ignore"):  # an infinite peak times 0: NaN, the whole frame anyway
        levels = np.float32(threshold) * np.asarray(peaks, dtype=np.float32)
    return (cams >= levels[..., None, None]).view(np.uint8)


def components(mask: np.ndarray) -> int:
    """How many 8-connected components a ``uint8`` mask has.

    Counted from the components' outer borders (OpenCV's border following, Suzuki and Abe 1985:
    8-connected foreground, 4-connected background; ``RETR_CCOMP`` puts every outer border at the
    top level, holes at the second, a component inside a hole at the top again), which on masks
    of a few blobs costs less than labelling every pixel. The mask is padded with a zero border
    first, so that foreground on its edge is traced like any other.
    """
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    _, hierarchy = cv2.findContours(padded, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return 0 if hierarchy is None else int(np.count_nonzero(hierarchy[0][:, 3] == -1))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``x0, y0, x1, y1`` of the largest 8-connected component of a ``uint8`` mask (ties: first
    pixel in raster order); the whole frame for an empty mask."""
    height, width = mask.shape
    left, top, w, h = cv2.boundingRect(mask)
    if w == 0:  # no foreground: cannot happen for a finite map, kept for safety
        return 0, 0, width, height
    # Labelling costs in proportion to the pixels: label the mask's bounding rectangle only (the
    # raster order of pixels inside it is theirs in the whole mask).
    crop = mask[top:top + h, left:left + w]
    if components(crop) == 1:  # most maps: the component's box is the mask's
        return left, top, left + w, top + h
    # connectedComponents without stats: OpenCV's statistics cost about 5x the labelling itself.
    count, labels = cv2.connectedComponents(crop, connectivity=8, ltype=cv2.CV_32S)
    areas = np.bincount(labels.ravel(), minlength=count)[1:]
    tied = 1 + np.flatnonzero(areas == areas.max())
    if len(tied) == 1:
        best = int(tied[0])
    else:  # OpenCV's label order is not raster order: find each tied component's first pixel
        flat = labels.ravel()
        best = min((int(np.argmax(flat == label)), int(label)) for label in tied)[1]
    x, y, w, h = cv2.boundingRect((labels == best).view(np.uint8))
    return left + x, top + y, left + x + w, top + y + h


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
    return cam_boxes(cam[None, None], threshold)[0, 0]


MAPS_PER_WORKER = 8
"""Fewest maps per thread of :func:`cam_boxes`."""


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool for the labelling (OpenCV releases the GIL), made once per size."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="camdeploy-boxes")


def cam_boxes(cams: np.ndarray, threshold: float = 0.2, workers: int = 1, native: bool | None = None
              ) -> np.ndarray:
    """:func:`cam_box` over ``cams [N, T, H, W]``; returns ``float32 [N, T, 4]``.

    In ``workers`` threads when there are several maps. ``native``: with the C extension (see
    :data:`NATIVE`; default: when installed), each map in one pass over its pixels and runs of
    pixels; else with NumPy (peaks and masks of all maps in one pass each) and OpenCV (per map).
    """
    if cams.ndim != 4:
        raise CamdeployError(f"cams: expected [N, T, H, W], got shape {cams.shape}")
    check_threshold(threshold)
    n, t, height, width = cams.shape
    if use_native(native):
        assert _native is not None
        flat = np.ascontiguousarray(cams, dtype=np.float32).reshape(n * t, height, width)
        out = np.empty((n * t, 4), dtype=np.float32)
        split_work(lambda a, b: _native.cam_boxes(flat[a:b], b - a, height, width, threshold, out[a:b]),
                   n * t, workers)
        return out.reshape(n, t, 4)
    maps = cams.reshape(n * t, height, width)
    peaks = maps.reshape(n * t, height * width).max(axis=1, initial=-np.inf)  # [M]
    masks = threshold_mask(maps, threshold, peaks)  # [M, H, W]
    boxes = np.empty((n * t, 4), dtype=np.float32)

    def label(start: int, stop: int) -> None:
        for m in range(start, stop):
            # A map with NaN or infinity (never produced by an exported graph) gives the whole frame.
            boxes[m] = mask_box(masks[m]) if np.isfinite(peaks[m]) else (0, 0, width, height)

    split_work(label, n * t, workers)
    return boxes.reshape(n, t, 4)


def split_work(work: Callable[[int, int], None], count: int, workers: int) -> None:
    """``work(start, stop)`` over maps ``0 .. count``, in up to ``workers`` threads of at least
    :data:`MAPS_PER_WORKER` maps each (OpenCV and NumPy release the GIL)."""
    # Below a few maps per thread, starting threads costs more than it saves (measured: 5 maps).
    chunks = min(max(workers, 1), count // MAPS_PER_WORKER)
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)  # OpenCV's own parallel labelling spends more CPU for less: split by maps instead
    try:
        if chunks <= 1:
            work(0, count)
        else:
            edges = np.linspace(0, count, chunks + 1).astype(int)
            for done in [_pool(chunks).submit(work, a, b) for a, b in itertools.pairwise(edges)]:
                done.result()
    finally:
        cv2.setNumThreads(previous)
