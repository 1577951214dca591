"""``camdeploy demo``: the default model on real photos bundled with scikit-image."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import camdeploy
from camdeploy.cache import cache_dir
from camdeploy.errors import CamdeployError

# scikit-image ships these photos in its wheel (no download): a cat, a cup of coffee, a
# photographer with a camera on a tripod (grayscale) and a motorcycle.
DEMO_PHOTOS = ("chelsea.png", "coffee.png", "camera.png", "motorcycle_left.png")


def demo_photos() -> list[Path]:
    """Paths of the bundled demo photos; needs the ``demo`` extra (scikit-image)."""
    try:
        folder = resources.files("skimage") / "data"
    except ModuleNotFoundError as exc:
        raise CamdeployError(
            "camdeploy demo needs scikit-image's bundled photos: install the 'demo' extra "
            "(pip install 'camdeploy[demo]')"
        ) from exc
    paths = [Path(str(folder / name)) for name in DEMO_PHOTOS]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise CamdeployError(f"scikit-image's data folder {folder} lacks {', '.join(missing)}; "
                             "reinstall scikit-image (the 'demo' extra)")
    return paths


def cached_export(model: str = "efficientnet_lite0", topk: int = 5) -> Path:
    """Export ``model`` into the cache unless an export of this camdeploy version is there."""
    target = cache_dir() / f"{model}-top{topk}-camdeploy{camdeploy.__version__}.onnx"
    if target.is_file():
        return target
    try:
        from camdeploy.export.exporter import ExportOptions, export_onnx
        from camdeploy.export.sources import load_model
    except ImportError as exc:
        raise CamdeployError(
            f"no cached export at {target}, and exporting needs PyTorch: install the 'export' extra "
            "(pip install 'camdeploy[export]')"
        ) from exc
    from camdeploy.labels import imagenet_classes

    print(f"camdeploy: exporting {model} to {target} (once; later runs reuse it)", file=sys.stderr)
    source = load_model(model)
    export_onnx(source.module, target, ExportOptions(
        input_size=source.input_size, normalization=source.normalization,
        class_names=tuple(imagenet_classes()), topk=topk, source_model=source.name))
    return target
