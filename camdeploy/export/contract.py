"""The model contract: find a classifier's final feature map, its global pooling and its linear head.

CAM needs ``logits = W @ pool(F) + b`` with ``F`` the last convolutional feature map
``[N, C, h, w]``, ``pool`` a *global* average (GAP) or max (GMP) pooling and ``W [K, C]`` a
single linear layer. :func:`find_contract` locates ``F`` and ``W`` by the model's shape, then
checks the decomposition numerically on a probe input, so a model that only looks right (an
activation after the feature trunk, a second linear layer) is refused with the assumption that
failed named.

Supported shapes, tried in this order:

* explicit override: ``feature_module`` and ``linear_module`` name submodules;
* timm style: ``forward_features(x)`` and ``get_classifier()``;
* ResNet style: ``layer4``, ``avgpool``, ``fc``;
* torchvision style: a ``features`` trunk and a ``classifier`` whose last layer is ``nn.Linear``.

For path-named feature modules, the features are computed by running the model's children in
registration order up to and including that module (descending into containers for dotted
paths); the numeric check guarantees that this reproduces the model's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from camdeploy.errors import CamdeployError

_NEUTRAL = (nn.Dropout, nn.Identity, nn.Flatten)
POOLINGS = ("avg", "max")


class _ForwardFeatures(nn.Module):
    """Features from a timm-style ``forward_features`` method."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)  # type: ignore[operator]


class _PrefixFeatures(nn.Module):
    """Features from running a model's children in order, up to and including a named module."""

    def __init__(self, model: nn.Module, path: str):
        super().__init__()
        self.model = model
        self.path = path.split(".")
        self._steps = self._plan(model, self.path)

    @staticmethod
    def _plan(model: nn.Module, path: list[str]) -> list[nn.Module]:
        steps: list[nn.Module] = []
        parent = model
        for depth, name in enumerate(path):
            names = [n for n, _ in parent.named_children()]
            if name not in names:
                raise CamdeployError(
                    f"--feature-module {'.'.join(path)}: {type(parent).__name__} has no child "
                    f"{name!r}; its children are {', '.join(names) or '(none)'}"
                )
            children = dict(parent.named_children())
            steps.extend(children[n] for n in names[: names.index(name)])
            if depth == len(path) - 1:
                steps.append(children[name])
            parent = children[name]
        return steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self._steps:
            x = step(x)
        return x


@dataclass
class GapContract:
    """A classifier seen as ``linear(pool(features(x)))``."""

    features: nn.Module
    """Module mapping the input ``[N, 3, H, W]`` to the feature map ``[N, C, h, w]``."""
    linear: nn.Linear
    """The linear head ``W [K, C], b [K]``."""
    pooling: str
    """``avg`` (GAP) or ``max`` (GMP)."""
    shape: str
    """Which supported shape matched, in words."""


def _single_linear(head: nn.Module, where: str) -> nn.Linear:
    if isinstance(head, nn.Linear):
        return head
    if isinstance(head, nn.Sequential) and len(head) > 0:
        layers = list(head)
        linears = [m for m in layers if isinstance(m, nn.Linear)]
        others = [type(m).__name__ for m in layers if not isinstance(m, (nn.Linear, *_NEUTRAL))]
        if len(linears) != 1 or others or not isinstance(layers[-1], nn.Linear):
            raise CamdeployError(
                f"{where} must end in a single nn.Linear with only Dropout/Flatten/Identity before "
                f"it (CAM needs one linear layer on the pooled features); found "
                f"{', '.join(type(m).__name__ for m in layers)}"
            )
        return layers[-1]
    raise CamdeployError(f"{where} is {type(head).__name__}; CAM needs a single nn.Linear head")


def _locate(model: nn.Module, feature_module: str | None, linear_module: str | None
            ) -> tuple[nn.Module, nn.Linear, str]:
    if feature_module or linear_module:
        if not (feature_module and linear_module):
            raise CamdeployError("--feature-module and --linear-module go together; give both")
        try:
            head = model.get_submodule(linear_module)
        except AttributeError:
            raise CamdeployError(f"--linear-module {linear_module}: {type(model).__name__} has no "
                                 "such submodule") from None
        return (_PrefixFeatures(model, feature_module),
                _single_linear(head, f"--linear-module {linear_module}"),
                f"override: features {feature_module!r}, linear {linear_module!r}")
    get_classifier = getattr(model, "get_classifier", None)
    if callable(getattr(model, "forward_features", None)) and callable(get_classifier):
        return (_ForwardFeatures(model), _single_linear(get_classifier(), "get_classifier()"),
                "timm style: forward_features() + get_classifier()")
    children = dict(model.named_children())
    if "layer4" in children and "fc" in children:
        return (_PrefixFeatures(model, "layer4"), _single_linear(children["fc"], "model.fc"),
                "ResNet style: layer4 + avgpool + fc")
    if "features" in children and "classifier" in children:
        return (_PrefixFeatures(model, "features"),
                _single_linear(children["classifier"], "model.classifier"),
                "torchvision style: features + classifier")
    raise CamdeployError(
        f"model {type(model).__name__} matches none of the supported GAP classifier shapes: "
        "(1) forward_features() + get_classifier() (timm), (2) layer4 + avgpool + fc (ResNet), "
        "(3) features + classifier ending in nn.Linear (torchvision); name its last feature "
        "module and its linear head with --feature-module and --linear-module"
    )


def global_pool(features: torch.Tensor, pooling: str) -> torch.Tensor:
    """``[N, C, h, w]`` -> ``[N, C]`` by global average or max pooling."""
    if pooling == "avg":
        return features.mean(dim=(2, 3))
    return features.amax(dim=(2, 3))


def _probe(module: nn.Module, probe: torch.Tensor, shape: str, input_size: tuple[int, int]) -> torch.Tensor:
    try:
        return module(probe)
    except Exception as exc:
        raise CamdeployError(
            f"model ({shape}) failed on a probe input [2, 3, {input_size[0]}, {input_size[1]}]: "
            f"{type(exc).__name__}: {exc}; is --input-size right for this model?"
        ) from exc


def find_contract(model: nn.Module, input_size: tuple[int, int], *,
                  feature_module: str | None = None, linear_module: str | None = None,
                  pooling: str | None = None) -> GapContract:
    """Detect and verify the GAP/GMP contract of ``model`` (put in eval mode).

    Args:
        model: the classifier.
        input_size: ``(H, W)`` of the probe input.
        feature_module, linear_module: explicit override, both or neither.
        pooling: ``avg`` or ``max``; by default the one that reproduces the model's output.

    Raises:
        CamdeployError: naming the assumption that failed.
    """
    if not isinstance(model, nn.Module):
        raise CamdeployError(f"--model: expected a torch.nn.Module, got {type(model).__name__}")
    if pooling is not None and pooling not in POOLINGS:
        raise CamdeployError(f"--pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    model.eval()
    features, linear, shape = _locate(model, feature_module, linear_module)
    if not all(8 <= side <= 4096 for side in input_size):
        raise CamdeployError(f"--input-size {input_size}: expected 8 to 4096 pixels per side")
    parameter = next(model.parameters(), None)
    if parameter is not None and (parameter.dtype != torch.float32 or parameter.device.type != "cpu"):
        raise CamdeployError(f"--model: parameters are {parameter.dtype} on {parameter.device}; export needs a "
                             "float32 model on the CPU (call model.float().cpu() first)")
    probe = torch.randn(2, 3, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fmap = _probe(features, probe, shape, input_size)
        if not isinstance(fmap, torch.Tensor) or fmap.ndim != 4:
            got = tuple(fmap.shape) if isinstance(fmap, torch.Tensor) else type(fmap).__name__
            raise CamdeployError(
                f"the feature module ({shape}) returned {got}; CAM needs a 4-D feature map "
                "[N, C, h, w]"
            )
        if fmap.shape[1] != linear.in_features:
            raise CamdeployError(
                f"the feature map has {fmap.shape[1]} channels but the linear head expects "
                f"{linear.in_features} inputs; CAM needs the head applied to the pooled feature map"
            )
        logits = _probe(model, probe, shape, input_size)
        if not isinstance(logits, torch.Tensor) or logits.shape != (2, linear.out_features):
            raise CamdeployError(
                f"model(x) returned {getattr(logits, 'shape', type(logits).__name__)}; expected "
                f"logits [N, {linear.out_features}] from the linear head"
            )
        errors = {}
        for kind in ([pooling] if pooling else POOLINGS):
            predicted = linear(global_pool(fmap, kind))
            errors[kind] = float((predicted - logits).abs().max())
    tolerance = 1e-4 * (1.0 + float(logits.abs().max()))
    matching = [kind for kind, err in errors.items() if err <= tolerance]
    if not matching:
        tried = ", ".join(f"global {k} pooling: max |diff| {e:.3g}" for k, e in errors.items())
        raise CamdeployError(
            f"model(x) is not linear(global_pool(features(x))) for the {shape} decomposition "
            f"({tried}; tolerance {tolerance:.3g}); CAM needs the linear head applied directly to "
            "the globally pooled last feature map, with nothing (activation, second linear layer) "
            "in between"
        )
    return GapContract(features, linear, matching[0], shape)
