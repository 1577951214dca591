"""camdeploy's cache folder (``$CAMDEPLOY_CACHE_DIR``, else ``$XDG_CACHE_HOME/camdeploy``, else
``~/.cache/camdeploy``) and the exports of built-in models kept there (TensorRT engines are cached
under it too, see :mod:`camdeploy.runtime.tensorrt_engine`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import camdeploy
from camdeploy.errors import CamdeployError


def cache_dir() -> Path:
    explicit = os.environ.get("CAMDEPLOY_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "camdeploy"


def exporter_fingerprint() -> str:
    """A short hash of the code that writes exported files (the exporter, the box graph, the
    metadata), so that a cached export is redone when that code changes, not only the version."""
    import hashlib

    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*(root / "export").glob("*.py"), root / "graph.py", root / "metadata.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def cached_export(model: str = "efficientnet_lite0", topk: int = 5) -> Path:
    """Export ``model`` into the cache unless an export by this camdeploy (version and exporter
    code) is there."""
    target = cache_dir() / f"{model}-top{topk}-camdeploy{camdeploy.__version__}-{exporter_fingerprint()}.onnx"
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
