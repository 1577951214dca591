"""Class names: the bundled ImageNet-1k list and user label files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from camdeploy.errors import CamdeployError


def _synsets() -> list[tuple[str, str]]:
    text = resources.files("camdeploy.data").joinpath("imagenet_synsets.txt").read_text("utf-8")
    return [(line.partition(" ")[0], line.partition(" ")[2]) for line in text.splitlines()]


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids (``n01440764`` ...) in class-index order."""
    return [wnid for wnid, _ in _synsets()]


# Two pairs of classes share their first synonym; these names tell them apart.
_DISTINCT = {"n02012849": "crane (bird)", "n03126707": "crane (machine)", "n03710721": "tank suit"}


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard sorted-wnid order (torchvision, timm, Caffe).

    Each name is the first synonym of the class's WordNet entry, e.g. ``"tench"`` for n01440764,
    except for the two cranes (bird, machine) and the second maillot ("tank suit"), so that every
    name is unique.
    """
    return [_DISTINCT.get(wnid, words.split(",")[0].strip()) for wnid, words in _synsets()]


def read_labels(path: str | Path) -> list[str]:
    """Read a label file: one class name per line, in class-index order.

    Blank lines at the end are ignored; a blank line before the last name is refused.
    """
    path = Path(path)
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError as exc:
        raise CamdeployError(f"--labels {path}: cannot read the file ({exc.strerror})") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise CamdeployError(
                f"--labels {path}: line {number} is blank; expected one class name per line"
            )
    if not lines:
        raise CamdeployError(f"--labels {path}: the file is empty; expected one class name per line")
    return [line.strip() for line in lines]
