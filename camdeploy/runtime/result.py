"""The one result type every runner returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CamResult:
    """Outputs for a batch of N images with the top T classes each.

    Attributes:
        logits: ``float32 [N, K]``.
        classes: ``int64 [N, T]``, best first.
        scores: ``float32 [N, T]`` softmax probabilities of ``classes``.
        cams: ``float32 [N, T, S_h, S_w]`` min-max normalised maps at the input size; None unless
            all outputs were asked for.
        boxes: ``float32 [N, T, 4]``, ``x0, y0, x1, y1`` pixel-edge coordinates of each class's
            box: in input-tensor pixels from :meth:`Runner.infer`, in original-image pixels from
            :meth:`Runner.infer_images`; None when only classes were asked for.
        features: ``float32 [N, C, h, w]``, the last feature map, when asked for.
    """

    logits: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    cams: np.ndarray | None
    boxes: np.ndarray | None
    features: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.classes.shape[0])
