"""Tiny deterministic GAP classifiers of every supported shape, and some that must be refused."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _trunk(channels: int = 8) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(6, channels, 3, stride=2, padding=1), nn.ReLU(),
    )


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    return model.eval()


class TorchvisionStyle(nn.Module):
    """``features`` + ``avgpool`` + ``classifier`` (Dropout, Linear), like torchvision's EfficientNet."""

    def __init__(self, classes: int = 10, pool: str = "avg"):
        super().__init__()
        self.features = _trunk()
        self.avgpool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class FunctionalPool(nn.Module):
    """``features`` + ``classifier`` with the pooling in forward(), like torchvision's MobileNetV2."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = _trunk()
        self.classifier = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class ResNetStyle(nn.Module):
    def __init__(self, classes: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.layer4 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=4, padding=1), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.relu(self.conv1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TimmStyle(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = _trunk()
        self.head = nn.Linear(8, classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean((2, 3)))


class Custom(nn.Module):
    """Unusual names: found only through the explicit override."""

    def __init__(self, classes: int = 6):
        super().__init__()
        self.body = nn.Sequential(_trunk(), nn.Conv2d(8, 8, 1))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.out = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.pool(self.body(x)).flatten(1))


class TwoLinearHeads(TorchvisionStyle):
    """A VGG-like classifier: refused, CAM needs a single linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 10))


class ActivationAfterFeatures(TorchvisionStyle):
    """A DenseNet-like forward with a ReLU between features and pooling: refused by the check."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.features(x) - 0.5
        return self.classifier(F.relu(fmap).mean((2, 3)))


class NoHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def build_torchvision_style() -> nn.Module:
    """Used as ``--model tiny_models:build_torchvision_style`` by the CLI tests."""
    return seeded(TorchvisionStyle())


def write_rejected_by_tensorrt(path):
    """Write an ONNX graph TensorRT refuses, and return its path: an int32 tensor fed to a
    DequantizeLinear named ``bias_dq``, as ONNX Runtime writes quantized biases (TensorRT
    dequantizes only 8-bit and narrower types)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor("x", TensorProto.INT32, [2], [1, 2])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.5])
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["x", "s"], ["y"], name="bias_dq")], "g",
                              [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [x, scale])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path
