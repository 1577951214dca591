"""Concepts to dissect units against: the Broden data set's pixel and image-level labels, or the
ground-truth boxes of a localization data set as object masks (box masks, not segmentation).

A :class:`ConceptSource` lists its images and, for image ``i``, gives a :class:`ConceptMap`: the
label layers at the image's segmentation size ``(sh, sw)`` and its image-level labels. Label 0 is
"no label". Each label has one *primary* category, which decides the unit-mask pixels its IoU
counts (see :mod:`camdeploy.units.tally`).

Broden layout (``broden1_224`` and the like, as NetDissect-Lite reads it):

* ``index.csv``: ``image, split, ih, iw, sh, sw`` and one column per category. A cell holds
  entries separated by ``;``: PNG files under ``images/`` whose label is ``R + 256 * G`` per pixel
  (several files: several layers, each a label per pixel), or label numbers. A cell of numbers
  only is a set of image-level labels (scenes, textures), which count as whole-image masks; a
  number among files is a constant layer. Images with no entry in any chosen category are left out.
* ``label.csv``: ``number, name, category, frequency, coverage, syns``.
* ``c_<category>.csv``: ``code, number, name, frequency, coverage`` of the labels in a category.
  A label's primary category is the one where its ``coverage`` is largest (on a tie, or in none,
  the later category in the chosen order), as NetDissect-Lite decides it.
* ``category.csv`` (optional): gives the order of the categories; else ``index.csv``'s columns.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.runtime.images import Frame

BRODEN_META = ("image", "split", "ih", "iw", "sh", "sw")
NETDISSECT_LITE_CATEGORIES = ("object", "part", "scene", "texture", "color")
"""The categories NetDissect-Lite dissects by default (its ``settings.CATAGORIES``): Broden's six
without ``material``."""
BOX_CATEGORY = "box"


@dataclass
class ConceptMap:
    """Labels of one image: ``layers int32 [n, sh, sw]`` (0: none) and image-level ``scalars``."""

    layers: np.ndarray
    scalars: list[int]
    shape: tuple[int, int]


@dataclass
class ConceptSource:
    """Images and, optionally, concepts (an images-only source has no categories).

    Attributes:
        kind: ``broden``, ``boxes`` or ``images``.
        images: the image files, in analysis order.
        categories: category names, in order.
        labels: label names; ``labels[0]`` is ``-`` (no label).
        primary: ``int64 [L]``, the primary category of each label.
        description: what the concepts are, for reports.
    """

    kind: str
    images: list[Path]
    categories: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=lambda: ["-"])
    primary: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    description: str = ""
    resize: str | None = None
    """The resize concepts need (``stretch`` for Broden: its masks cover the whole image), or None."""

    @property
    def has_concepts(self) -> bool:
        return bool(self.categories)

    def concept_map(self, index: int, frame: Frame) -> ConceptMap:
        """The labels of image ``index``, which the model saw through ``frame``."""
        raise CamdeployError(f"{self.kind}: this source has no concepts")


# -- Broden ---------------------------------------------------------------------------------------

def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except OSError as exc:
        raise CamdeployError(f"--broden: cannot read {path} ({exc.strerror or exc}); expected the Broden "
                             "layout (index.csv, label.csv, c_<category>.csv, images/)") from None


def _int(value: str, path: Path, line: int, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise CamdeployError(f"--broden {path}, line {line}: {column} {value!r} is not an integer") from None


def _float(value: str, path: Path, line: int, column: str) -> float:
    try:
        return float(value) if value.strip() else 0.0
    except ValueError:
        raise CamdeployError(f"--broden {path}, line {line}: {column} {value!r} is not a number") from None


@dataclass
class BrodenSource(ConceptSource):
    """A Broden-layout folder (see the module docstring)."""

    root: Path = Path()
    rows: list[dict[str, object]] = field(default_factory=list)

    def concept_map(self, index: int, frame: Frame) -> ConceptMap:
        row = self.rows[index]
        shape = (int(row["sh"]), int(row["sw"]))  # type: ignore[call-overload]
        layers: list[np.ndarray] = []
        scalars: list[int] = []
        for category in self.categories:
            entries = row[category]
            assert isinstance(entries, list)
            if all(isinstance(e, int) for e in entries):
                scalars += entries
                continue
            for entry in entries:
                if isinstance(entry, int):
                    layers.append(np.full(shape, entry, dtype=np.int32))
                else:
                    layers.append(self._read_png(str(entry), shape))
        stacked = np.stack(layers) if layers else np.zeros((0, *shape), dtype=np.int32)
        return ConceptMap(stacked, scalars, shape)

    def _read_png(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        path = self.root / "images" / name
        pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)  # BGR
        if pixels is None:
            raise CamdeployError(f"--broden {self.root}: cannot read the label image {path}; expected a PNG whose "
                                 "label is R + 256 * G")
        if pixels.shape[:2] != shape:
            raise CamdeployError(f"--broden {path}: {pixels.shape[1]}x{pixels.shape[0]} pixels; index.csv says "
                                 f"sw x sh = {shape[1]}x{shape[0]}")
        return pixels[:, :, 2].astype(np.int32) + 256 * pixels[:, :, 1].astype(np.int32)


def _entries(cell: str) -> list[int | str]:
    out: list[int | str] = []
    for part in cell.split(";"):
        if part:
            out.append(int(part) if re.fullmatch(r"\d+", part) else part)
    return out


def read_broden(root: str | Path, categories: tuple[str, ...] | None = None) -> BrodenSource:
    """Read a Broden-layout folder; ``categories`` (default: those of
    :data:`NETDISSECT_LITE_CATEGORIES` that the data has) chooses and orders nothing else: the
    order is ``category.csv``'s, else ``index.csv``'s columns."""
    root = Path(root)
    if not (root / "index.csv").is_file():
        raise CamdeployError(f"--broden {root}: no index.csv there; expected a Broden-layout folder (index.csv, "
                             "label.csv, c_<category>.csv, images/), e.g. broden1_224")
    columns, index_rows = _read_rows(root / "index.csv")
    missing = [c for c in BRODEN_META if c not in columns]
    if missing:
        raise CamdeployError(f"--broden {root / 'index.csv'}: columns {', '.join(missing)} are missing; expected "
                             f"{', '.join(BRODEN_META)} and one column per category")
    present = [c for c in columns if c not in BRODEN_META]
    if (root / "category.csv").is_file():
        _, category_rows = _read_rows(root / "category.csv")
        ordered = [r.get("name", "") for r in category_rows]
        present = [c for c in ordered if c in present] + [c for c in present if c not in ordered]
    if categories is None:
        chosen = [c for c in present if c in NETDISSECT_LITE_CATEGORIES] or present
    else:
        unknown = [c for c in categories if c not in present]
        if unknown:
            raise CamdeployError(f"--categories {','.join(categories)}: {', '.join(unknown)} not in "
                                 f"{root / 'index.csv'}; expected some of {', '.join(present)}")
        chosen = [c for c in present if c in categories]
    _, label_rows = _read_rows(root / "label.csv")
    numbers = [_int(r.get("number", ""), root / "label.csv", i + 2, "number") for i, r in enumerate(label_rows)]
    if not numbers:
        raise CamdeployError(f"--broden {root / 'label.csv'}: no labels")
    size = max(numbers) + 1
    names = ["" for _ in range(size)]
    for number, row in zip(numbers, label_rows, strict=True):
        names[number] = row.get("name", "")
    names[0] = names[0] or "-"
    # primary category: the largest coverage among the categories holding the label (ties and none: the later)
    coverage = np.zeros((len(chosen), size), dtype=np.float64)
    member = np.zeros((len(chosen), size), dtype=bool)
    for ci, category in enumerate(chosen):
        path = root / f"c_{category}.csv"
        if not path.is_file():
            raise CamdeployError(f"--broden {root}: c_{category}.csv is missing; each category needs one")
        _, rows = _read_rows(path)
        for line, row in enumerate(rows, start=2):
            code = _int(row.get("code", ""), path, line, "code")
            number = _int(row.get("number", ""), path, line, "number")
            if not 0 <= number < size:
                raise CamdeployError(f"--broden {path}, line {line}: label number {number} is not in label.csv")
            if code != 0:  # NetDissect-Lite's category map reads code 0 as "not in this category"
                member[ci, number] = True
                coverage[ci, number] = _float(row.get("coverage", ""), path, line, "coverage")
    primary = np.zeros(size, dtype=np.int64)
    for label in range(size):
        best = max((coverage[ci, label] if member[ci, label] else 0.0, ci) for ci in range(len(chosen)))
        primary[label] = best[1]
    rows_kept: list[dict[str, object]] = []
    images: list[Path] = []
    for line, row in enumerate(index_rows, start=2):
        parsed: dict[str, object] = {"image": row["image"], "split": row["split"]}
        for key in ("ih", "iw", "sh", "sw"):
            parsed[key] = _int(row[key], root / "index.csv", line, key)
        anything = False
        for category in chosen:
            entries = _entries(row.get(category) or "")
            for entry in entries:
                if isinstance(entry, int) and not 0 <= entry < size:
                    raise CamdeployError(f"--broden {root / 'index.csv'}, line {line}: label {entry} of {category} is "
                                         "not in label.csv")
            parsed[category] = entries
            anything = anything or bool(entries)
        if anything:
            rows_kept.append(parsed)
            images.append(root / "images" / row["image"])
    if not rows_kept:
        raise CamdeployError(f"--broden {root}: no image has labels in {', '.join(chosen)}")
    return BrodenSource(kind="broden", images=images, categories=chosen, labels=names, primary=primary,
                        description=f"Broden-layout concepts from {root} ({', '.join(chosen)})", resize="stretch",
                        root=root, rows=rows_kept)


# -- box masks ------------------------------------------------------------------------------------

@dataclass
class BoxSource(ConceptSource):
    """Ground-truth boxes of a localization data set as masks, one concept per class, in one
    category named ``box``. A mask pixel is labelled when its centre lies in one of the image's
    boxes (inclusive corners: a box covers ``[x0, x1 + 1)``), mapped into the model's input."""

    boxes: list[np.ndarray] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    mask_size: tuple[int, int] = (112, 112)
    input_size: tuple[int, int] = (224, 224)

    def concept_map(self, index: int, frame: Frame) -> ConceptMap:
        sh, sw = self.mask_size
        height, width = self.input_size
        ys = ((np.arange(sh) + 0.5) * (height / sh)) * frame.scale_y + frame.offset_y  # centres, original pixels
        xs = ((np.arange(sw) + 0.5) * (width / sw)) * frame.scale_x + frame.offset_x
        layer = np.zeros((sh, sw), dtype=np.int32)
        for x0, y0, x1, y1 in self.boxes[index]:
            rows = (ys >= y0) & (ys < y1 + 1)
            cols = (xs >= x0) & (xs < x1 + 1)
            layer[np.ix_(rows, cols)] = self.classes[index] + 1
        return ConceptMap(layer[None], [], (sh, sw))


def read_boxes(data: str | Path, class_names: tuple[str, ...], input_size: tuple[int, int],
               mask_size: tuple[int, int], images: str | Path | None = None, fmt: str | None = None) -> BoxSource:
    """The boxes of a data set ``camdeploy eval --data`` reads, as concepts (labels: ``class_names``)."""
    from camdeploy.eval.datasets import open_dataset

    dataset = open_dataset(data, images, fmt)
    for sample in dataset.samples:
        if sample.class_index >= len(class_names):
            raise CamdeployError(f"--boxes {data}: class index {sample.class_index} of {sample.path}; the model has "
                                 f"{len(class_names)} classes")
    labels = ["-", *class_names]
    return BoxSource(kind="boxes", images=[s.path for s in dataset.samples], categories=[BOX_CATEGORY],
                     labels=labels, primary=np.zeros(len(labels), dtype=np.int64),
                     description=f"ground-truth boxes of {data} as object masks, one concept per class (box masks, "
                     "not segmentation)",
                     boxes=[s.boxes for s in dataset.samples], classes=[s.class_index for s in dataset.samples],
                     mask_size=mask_size, input_size=input_size)


def image_source(files: list[Path]) -> ConceptSource:
    """Images without concepts: top images, thresholds and montages only."""
    return ConceptSource(kind="images", images=files, description="images without concepts")


def describe_source(source: ConceptSource) -> dict[str, object]:
    """What reports say about the concepts."""
    return {"kind": source.kind, "description": source.description, "categories": source.categories,
            "labels": len(source.labels) - 1, "images": len(source.images)}

