"""CAM as math on explicit tensors: a pure function, and the module that puts it in the graph.

For the last feature map ``F [N, C, h, w]`` and the linear head ``W [K, C]``, the class activation
map of class ``k`` is (Zhou et al., CVPR 2016, eq. 2, without the bias, which min-max removes)::

    M_k[y, x] = sum_c W[k, c] * F[c, y, x]

:class:`CamModel` wraps a model's :class:`~camdeploy.export.contract.GapContract` and returns, for
an input ``images [N, 3, S_h, S_w]``:

* ``logits [N, K]`` = ``W @ pool(F) + b``
* ``features [N, C, h, w]``
* ``classes [N, T]`` int64, the top-T classes by score, best first
* ``scores [N, T]`` their softmax probabilities
* ``cams [N, T, S_h, S_w]`` the CAM of each top-T class, bilinearly upsampled (half-pixel
  centres) to the input size and min-max normalised to [0, 1] per map; a constant map is all 0.

The same :class:`CamModel` is the PyTorch reference (run eagerly) and the exported graph.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from camdeploy.export.contract import GapContract, global_pool
from camdeploy.graph import CAM_OUTPUTS

OUTPUT_NAMES = CAM_OUTPUTS


def class_activation_maps(features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor
                          ) -> torch.Tensor:
    """CAMs of the given classes: ``M[n, t] = sum_c weight[classes[n, t], c] * features[n, c]``.

    Args:
        features (Tensor[N, C, h, w]): last convolutional feature map.
        weight (Tensor[K, C]): weight of the linear head.
        classes (Tensor[N, T]): int64 class indices.

    Returns:
        Tensor[N, T, h, w]: the raw (unnormalised, low-resolution) maps.
    """
    n, c, h, w = features.shape
    selected = F.embedding(classes, weight)  # [N, T, C]: rows of W, one Gather in the graph
    maps = torch.matmul(selected, features.reshape(n, c, h * w))  # [N, T, h*w]
    return maps.reshape(n, classes.shape[1], h, w)


def upsample_and_normalize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``maps [N, T, h, w]`` to ``size``, then min-max to [0, 1] per map."""
    up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)  # [N, T, S_h, S_w]
    low = up.amin(dim=(2, 3), keepdim=True)  # [N, T, 1, 1]
    span = up.amax(dim=(2, 3), keepdim=True) - low
    span = torch.where(span > 0, span, torch.ones_like(span))  # a constant map becomes all 0
    return (up - low) / span


class CamModel(nn.Module):
    """A GAP classifier plus its CAM head; outputs are :data:`OUTPUT_NAMES`, in that order."""

    def __init__(self, contract: GapContract, topk: int, input_size: tuple[int, int]):
        super().__init__()
        self.features = contract.features
        self.linear = contract.linear
        self.pooling = contract.pooling
        self.topk = topk
        self.input_size = input_size

    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The classifier alone: ``logits, features, classes, scores``."""
        fmap = self.features(images)  # [N, C, h, w]
        logits = self.linear(global_pool(fmap, self.pooling))  # [N, K]
        scores, classes = torch.softmax(logits, dim=1).topk(self.topk, dim=1)  # [N, T] each
        return logits, fmap, classes, scores

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, fmap, classes, scores = self.classify(images)
        maps = class_activation_maps(fmap, self.linear.weight, classes)  # [N, T, h, w]
        cams = upsample_and_normalize(maps, self.input_size)
        return logits, fmap, classes, scores, cams
