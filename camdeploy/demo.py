"""The photos of ``camdeploy demo``: real photos bundled with scikit-image."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

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
