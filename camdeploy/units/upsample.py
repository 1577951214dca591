"""A unit's mask: its activation map resized bilinearly (half-pixel centres), then ``> T``.

This is the resize NetDissect-Lite applies (``scipy.misc.imresize(map, (sh, sw), mode='F')``,
that is Pillow's ``Image.resize(..., BILINEAR)`` on a 32-bit float image), computed with the same
coefficients and the same order of operations, so that a mask equals the reference's pixel for
pixel:

* output pixel ``X`` of ``out`` has its centre at ``center = (X + 0.5) * in / out`` in input
  coordinates, where input pixel ``x`` covers ``[x, x + 1)`` (half-pixel centres);
* its weights are the triangle filter ``max(0, 1 - |x + 0.5 - center| / s)`` with
  ``s = max(in / out, 1)`` (``s = 1`` when upsampling: plain bilinear interpolation between the
  two nearest input centres, the edge value beyond the outermost centres), over input pixels
  ``x`` in ``[int(center - s + 0.5), int(center + s + 0.5))`` clipped to the image, divided by
  their sum. When downsampling (``s > 1``) the triangle widens: Pillow's antialiasing;
* rows are resized first (horizontal pass, accumulated in float64, stored as float32), then
  columns (vertical pass, the same).

Matrix form, up to the rounding of sums: ``out = R_h @ float32(M @ R_w.T)`` with ``R [out, in]``
(:func:`resize_matrix`); the code sums each window in order instead, to round as Pillow does.
"""

from __future__ import annotations

import functools

import numpy as np

from camdeploy.errors import CamdeployError


@functools.lru_cache(maxsize=64)
def _coefficients(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """``(first [size_out], weights [size_out, taps])``: output pixel ``X`` is the sum over ``j`` of
    input pixel ``first[X] + j`` times ``weights[X, j]`` (zero past the window)."""
    if size_in < 1 or size_out < 1:
        raise CamdeployError(f"resize: sizes {size_in} -> {size_out}; expected positive sizes")
    scale = size_in / size_out
    support = max(scale, 1.0)
    taps = int(np.ceil(support)) * 2 + 1
    first = np.zeros(size_out, dtype=np.int64)
    weights = np.zeros((size_out, taps), dtype=np.float64)
    for out in range(size_out):
        center = (out + 0.5) * scale
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), size_in)
        row = [max(0.0, 1.0 - abs((x - center + 0.5) * (1.0 / support))) for x in range(low, high)]
        total = 0.0
        for w in row:  # summed in order, as Pillow does
            total += w
        if total != 0.0:
            row = [w / total for w in row]
        first[out] = low
        weights[out, :len(row)] = row
    first.flags.writeable = False
    weights.flags.writeable = False
    return first, weights


def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``R float64 [size_out, size_in]``: row ``X`` holds the weights of output pixel ``X``."""
    first, weights = _coefficients(size_in, size_out)
    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    for out in range(size_out):
        for j, w in enumerate(weights[out]):
            if w:
                matrix[out, first[out] + j] = w
    return matrix


def _resize_last_axis(values: np.ndarray, size_out: int) -> np.ndarray:
    """One pass of Pillow's resize along the last axis: products and sums in float64, in the
    window's order (no fused multiply-add, as Pillow's generic x86-64 build), then float32."""
    first, weights = _coefficients(values.shape[-1], size_out)
    source = values.astype(np.float64)
    last = values.shape[-1] - 1
    total = np.zeros((*values.shape[:-1], size_out), dtype=np.float64)
    for j in range(weights.shape[1]):
        used = weights[:, j] != 0
        if not used.any():
            continue
        index = np.minimum(first + j, last)
        total += source[..., index] * weights[:, j]  # a zero weight adds an exact zero
    return total.astype(np.float32)


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``maps float32 [..., h, w]`` resized to ``size = (H, W)``: ``float32 [..., H, W]``."""
    maps = np.asarray(maps, dtype=np.float32)
    height, width = size
    across = maps if maps.shape[-1] == width else _resize_last_axis(maps, width)  # Pillow skips an unchanged axis
    if maps.shape[-2] == height:
        return across
    return np.swapaxes(_resize_last_axis(np.swapaxes(across, -1, -2), height), -1, -2)


def unit_masks(maps: np.ndarray, thresholds: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Masks ``bool [N, H, W]`` of maps ``[N, h, w]`` at ``size``: upsampled, then ``> thresholds [N]``
    (float32, compared as float32)."""
    up = upsample(maps, size)
    return up > np.asarray(thresholds, dtype=np.float32).reshape(-1, 1, 1)
