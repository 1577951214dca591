"""Where a model to export comes from: a built-in name, or ``module:callable`` from the user."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from camdeploy.errors import CamdeployError
from camdeploy.metadata import LITE_NORMALIZATION, Normalization
from camdeploy.models import BUILTIN_MODELS

DEFAULT_MODEL = "efficientnet_lite0"
MAX_INPUT_SIZE = 4096
# torchvision convention, the default for user models.
IMAGENET_NORMALIZATION = Normalization.from_mean_std((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class ModelSource:
    """A loaded PyTorch classifier and the defaults that come with it."""

    module: nn.Module
    name: str
    input_size: tuple[int, int]
    normalization: Normalization
    imagenet: bool
    """True for built-in ImageNet models: their class names are the bundled ImageNet list."""


def load_callable(spec: str) -> nn.Module:
    """Import ``module:callable`` (the working directory is importable) and call it."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CamdeployError(
            f"--model {spec!r}: expected a built-in name ({', '.join(BUILTIN_MODELS)}) or "
            "module:callable, e.g. mymodels:build_classifier"
        )
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, but also whatever the module raises while importing
        raise CamdeployError(f"--model {spec}: cannot import module {module_name!r} "
                             f"({type(exc).__name__}: {exc})") from exc
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise CamdeployError(f"--model {spec}: module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(factory, nn.Module) or not callable(factory):
        model = factory  # an instance (modules are callable too: do not call it)
    else:
        try:
            model = factory()
        except Exception as exc:
            raise CamdeployError(f"--model {spec}: {attr}() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise CamdeployError(
            f"--model {spec}: {attr}() returned {type(model).__name__}; expected a torch.nn.Module"
        )
    return model


def load_model(spec: str, *, input_size: int | None = None,
               normalization: Normalization | None = None) -> ModelSource:
    """Resolve ``--model``: a built-in name or ``module:callable``.

    Built-in models default to their native input size and EfficientNet-Lite normalisation
    ``(pixel - 127) / 128``; user models to 224 and ImageNet mean/std.
    """
    if input_size is not None and not 8 <= input_size <= MAX_INPUT_SIZE:
        raise CamdeployError(f"--input-size {input_size}: expected 8 to {MAX_INPUT_SIZE} pixels")
    if spec in BUILTIN_MODELS:
        from camdeploy.models.efficientnet_lite import VARIANTS, efficientnet_lite

        size = input_size or VARIANTS[spec].resolution
        return ModelSource(efficientnet_lite(spec, input_size=size), spec, (size, size),
                           normalization or LITE_NORMALIZATION, imagenet=True)
    size = input_size or 224
    return ModelSource(load_callable(spec), spec, (size, size),
                       normalization or IMAGENET_NORMALIZATION, imagenet=False)
