"""Readers for localization datasets: images with a class and ground-truth boxes.

Every reader returns a :class:`Dataset` of :class:`Sample`. Ground-truth boxes are
``x0, y0, x1, y1`` in the image's own pixels with **inclusive** corners (the ILSVRC and
wsolevaluation convention: a box's width is ``x1 - x0 + 1``). Malformed annotations raise
:class:`~camdeploy.errors.CamdeployError` naming the file and the line; images that do not exist
are listed in ``Dataset.missing`` and left out, not fatal.

Formats (``--format``, detected from the path when not given):

* ``json``: the ``annotations.json`` of ``../shared/data/imagenet-val`` (``images`` records with
  ``file``, ``class_index``, ``boxes``); image paths are relative to the file's folder.
* ``voc``: a folder of PASCAL-VOC-style XML files (``ILSVRC2012_val_XXXXXXXX.xml``), images beside
  them or under ``--images``; the class is the ``name`` (a WordNet id) of the first object, and the
  boxes are those of every object of that class.
* ``loc``: Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` with ``wnid x0 y0 x1 y1``
  groups); images ``ImageId.JPEG`` under ``--images``.
* ``wsol``: a folder with wsolevaluation's ``image_ids.txt``, ``class_labels.txt``,
  ``localization.txt`` and ``image_sizes.txt``; image paths relative to ``--images``. Boxes are in
  the frame ``image_sizes.txt`` states (``image_id,width,height``), which wsolevaluation scales them
  from, whatever size the image files are stored at: each sample keeps that size
  (:attr:`Sample.size`). Without ``image_sizes.txt`` the boxes are taken to be in the image files'
  own pixels (``Sample.size`` None), and :func:`read_wsol` says so.
* ``csv``: ``file,class_index,x0,y0,x1,y1``, one row per box, with or without that header (other
  columns are ignored when there is a header); image paths relative to the CSV's folder or
  ``--images``.
"""

from __future__ import annotations

import csv
import functools
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.labels import imagenet_wnids

FORMATS = ("json", "voc", "loc", "wsol", "csv")
WSOL_FILES = ("image_ids.txt", "class_labels.txt", "localization.txt")
WSOL_SIZES = "image_sizes.txt"


@dataclass(frozen=True)
class Sample:
    """One image: where it is, its class index and its ground-truth boxes ``float64 [M, 4]``."""

    path: Path
    class_index: int
    boxes: np.ndarray
    size: tuple[int, int] | None = None
    """``(width, height)`` of the frame the boxes are in, when the annotations state one
    (wsolevaluation's ``image_sizes.txt``); None: the image file's own pixels."""


@dataclass
class Dataset:
    samples: list[Sample]
    source: str
    format: str
    missing: list[str] = field(default_factory=list)
    """Images named by the annotations but absent on disk."""
    notes: list[str] = field(default_factory=list)
    """What a reader assumed where the annotations were silent (printed by ``eval``)."""

    def __len__(self) -> int:
        return len(self.samples)


def _malformed(path: Path, line: int | None, what: str) -> CamdeployError:
    where = f"{path}, line {line}" if line is not None else str(path)
    return CamdeployError(f"--data {where}: {what}")


def _box(values: object, path: Path, line: int | None) -> list[float]:
    if not isinstance(values, (list, tuple)):
        raise _malformed(path, line, f"box {values!r} is not a list of four numbers x0,y0,x1,y1")
    try:
        box = [float(v) for v in values]
    except (TypeError, ValueError):
        raise _malformed(path, line, f"box {list(values)!r} is not four numbers x0,y0,x1,y1") from None
    if len(box) != 4:
        raise _malformed(path, line, f"box has {len(box)} numbers; expected x0,y0,x1,y1")
    if box[2] < box[0] or box[3] < box[1]:
        raise _malformed(path, line, f"box {box} has x1 < x0 or y1 < y0")
    return box


def _class_index(value: str, path: Path, line: int | None) -> int:
    wnids = _wnid_index()
    if value in wnids:
        return wnids[value]
    try:
        index = int(value)
    except ValueError:
        raise _malformed(path, line, f"class {value!r} is neither a class index nor an ImageNet wnid") from None
    if index < 0:
        raise _malformed(path, line, f"class index {index} is negative")
    return index


@functools.cache
def _wnid_index() -> dict[str, int]:
    return {wnid: i for i, wnid in enumerate(imagenet_wnids())}


def _collect(entries: dict[Path, tuple[int, list[list[float]]]], source: Path, fmt: str,
             sizes: dict[Path, tuple[int, int]] | None = None) -> Dataset:
    dataset = Dataset([], str(source), fmt)
    for path, (label, boxes) in entries.items():
        if not path.is_file():
            dataset.missing.append(str(path))
            continue
        dataset.samples.append(Sample(path, label, np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                                      (sizes or {}).get(path)))
    return dataset


def read_json(path: Path) -> Dataset:
    try:
        document = json.loads(path.read_text("utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise _malformed(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    records = document.get("images") if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise _malformed(path, None, "expected an object with an 'images' list")
    entries: dict[Path, tuple[int, list[list[float]]]] = {}
    for number, record in enumerate(records):
        where = f"images[{number}]"
        try:
            file, label, boxes = record["file"], int(record["class_index"]), record["boxes"]
        except (KeyError, TypeError, ValueError):
            raise _malformed(path, None, f"{where} needs 'file', an integer 'class_index' and 'boxes'") from None
        if label < 0:
            raise _malformed(path, None, f"{where}: class index {label} is negative")
        if not isinstance(boxes, list):
            raise _malformed(path, None, f"{where}: 'boxes' is {boxes!r}; expected a list of [x0, y0, x1, y1]")
        try:
            parsed = [_box(b, path, None) for b in boxes]
        except CamdeployError as exc:
            raise _malformed(path, None, f"{where}: {str(exc).split(': ', 1)[1]}") from None
        entries[path.parent / file] = (label, parsed)
    return _collect(entries, path, "json")


def _text_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text("utf-8-sig")  # a spreadsheet's byte-order mark is not part of the header
    except OSError as exc:
        raise CamdeployError(f"--data {path}: cannot read ({exc.strerror})") from exc
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_csv(path: Path, images: Path | None = None) -> Dataset:
    root = images or path.parent
    lines = _text_lines(path)
    rows = list(csv.reader(line for _, line in lines))
    numbers = [n for n, _ in lines]
    if not rows:
        raise _malformed(path, None, "the file is empty")
    header = [h.strip() for h in rows[0]]
    columns = ["file", "class_index", "x0", "y0", "x1", "y1"]
    if "file" in header:
        missing = [c for c in columns if c not in header]
        if missing:
            raise _malformed(path, 1, f"header lacks {', '.join(missing)}; expected {','.join(columns)}")
        picks = [header.index(c) for c in columns]
        body = list(zip(numbers[1:], rows[1:], strict=True))
        if not body:
            raise _malformed(path, None, "the header is followed by no rows")
    else:
        picks = list(range(6))
        body = list(zip(numbers, rows, strict=True))
    entries: dict[Path, tuple[int, list[list[float]]]] = {}
    for number, row in body:
        if len(row) <= max(picks):
            raise _malformed(path, number, f"{len(row)} fields; expected {','.join(columns)}")
        file, label = row[picks[0]].strip(), _class_index(row[picks[1]].strip(), path, number)
        box = _box([row[i] for i in picks[2:]], path, number)
        key = root / file
        if key in entries and entries[key][0] != label:
            raise _malformed(path, number, f"{file} has class {label} here but {entries[key][0]} earlier")
        entries.setdefault(key, (label, []))[1].append(box)
    return _collect(entries, path, "csv")


def read_loc_solution(path: Path, images: Path | None = None) -> Dataset:
    root = images or path.parent
    lines = _text_lines(path)
    if not lines or not lines[0][1].startswith("ImageId"):
        raise _malformed(path, 1, "expected the header ImageId,PredictionString")
    entries: dict[Path, tuple[int, list[list[float]]]] = {}
    for number, line in lines[1:]:
        image_id, _, prediction = line.partition(",")
        fields = prediction.split()
        if not fields or len(fields) % 5:
            raise _malformed(path, number, "PredictionString must be groups of 'wnid x0 y0 x1 y1'")
        label = _class_index(fields[0], path, number)
        boxes = [_box(fields[i + 1:i + 5], path, number) for i in range(0, len(fields), 5)
                 if fields[i] == fields[0]]
        entries[root / f"{image_id}.JPEG"] = (label, boxes)
    return _collect(entries, path, "loc")


def read_wsol(folder: Path, images: Path | None = None) -> Dataset:
    if images is None:
        raise CamdeployError(f"--data {folder}: wsolevaluation metadata names images relative to "
                             "the dataset root; give it with --images DIR")
    ids = [line for _, line in _text_lines(folder / "image_ids.txt")]
    labels: dict[str, int] = {}
    for number, line in _text_lines(folder / "class_labels.txt"):
        name, _, label = line.rpartition(",")
        if not name:
            raise _malformed(folder / "class_labels.txt", number, "expected 'image_id,class_index'")
        labels[name] = _class_index(label.strip(), folder / "class_labels.txt", number)
    boxes: dict[str, list[list[float]]] = {}
    for number, line in _text_lines(folder / "localization.txt"):
        fields = line.split(",")
        if len(fields) != 5:
            raise _malformed(folder / "localization.txt", number, "expected 'image_id,x0,y0,x1,y1'")
        boxes.setdefault(fields[0], []).append(_box(fields[1:], folder / "localization.txt", number))
    sizes = _wsol_sizes(folder / WSOL_SIZES) if (folder / WSOL_SIZES).is_file() else None
    entries: dict[Path, tuple[int, list[list[float]]]] = {}
    for image_id in ids:
        if image_id not in labels:
            raise _malformed(folder / "class_labels.txt", None, f"no class for {image_id}")
        if image_id not in boxes:
            raise _malformed(folder / "localization.txt", None, f"no box for {image_id}")
        if sizes is not None and image_id not in sizes:
            raise _malformed(folder / WSOL_SIZES, None, f"no size for {image_id}")
        entries[images / image_id] = (labels[image_id], boxes[image_id])
    stated = {images / key: size for key, size in sizes.items()} if sizes is not None else None
    dataset = _collect(entries, folder, "wsol", stated)
    if sizes is None:
        dataset.notes.append(f"--data {folder}: no {WSOL_SIZES}; the boxes are taken to be in the image files' own "
                             "pixels (wsolevaluation scales them from the sizes that file states)")
    return dataset


def _wsol_sizes(path: Path) -> dict[str, tuple[int, int]]:
    """wsolevaluation's ``image_sizes.txt``: ``image_id,width,height`` per line."""
    sizes: dict[str, tuple[int, int]] = {}
    for number, line in _text_lines(path):
        name, _, rest = line.partition(",")
        fields = rest.split(",")
        try:
            width, height = (int(v) for v in fields)
        except ValueError:
            raise _malformed(path, number, "expected 'image_id,width,height' with whole numbers") from None
        if width < 1 or height < 1:
            raise _malformed(path, number, f"size {width}x{height}: expected positive numbers")
        sizes[name] = (width, height)
    return sizes


def read_voc(folder: Path, images: Path | None = None) -> Dataset:
    root = images or folder
    entries: dict[Path, tuple[int, list[list[float]]]] = {}
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise CamdeployError(f"--data {folder}: no .xml annotation files")
    for xml in files:
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            raise _malformed(xml, exc.position[0], f"not valid XML ({exc})") from None
        name = tree.findtext("filename") or xml.stem
        objects = tree.findall("object")
        if not objects:
            raise _malformed(xml, None, "no <object> element")
        wnid = (objects[0].findtext("name") or "").strip()
        label = _class_index(wnid, xml, None)
        boxes = []
        for obj in objects:
            if (obj.findtext("name") or "").strip() != wnid:
                continue
            box = obj.find("bndbox")
            if box is None:
                raise _malformed(xml, None, "an <object> has no <bndbox>")
            boxes.append(_box([box.findtext(k) or "" for k in ("xmin", "ymin", "xmax", "ymax")], xml, None))
        path = root / name
        if not path.suffix:
            path = path.with_suffix(".JPEG")
        entries[path] = (label, boxes)
    return _collect(entries, folder, "voc")


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "annotations.json").is_file():
            return "json"
        if all((path / name).is_file() for name in WSOL_FILES):
            return "wsol"
        if any(path.glob("*.xml")):
            return "voc"
        raise CamdeployError(
            f"--data {path}: found no annotations.json, wsolevaluation metadata ({', '.join(WSOL_FILES)}) "
            "or .xml files; give an annotation file or --format"
        )
    if path.suffix == ".json":
        return "json"
    if path.suffix == ".csv":
        with open(path, encoding="utf-8-sig") as handle:
            return "loc" if handle.readline().startswith("ImageId") else "csv"
    raise CamdeployError(f"--data {path}: cannot tell the format; expected one of {', '.join(FORMATS)} (--format)")


def open_dataset(path: str | Path, images: str | Path | None = None, fmt: str | None = None) -> Dataset:
    """Read a dataset in any supported format (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise CamdeployError(f"--data {path}: no such file or folder")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise CamdeployError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    image_root = Path(images) if images else None
    if fmt == "json":
        dataset = read_json(path / "annotations.json" if path.is_dir() else path)
    elif fmt == "csv":
        dataset = read_csv(path, image_root)
    elif fmt == "loc":
        dataset = read_loc_solution(path, image_root)
    elif fmt == "wsol":
        dataset = read_wsol(path, image_root)
    else:
        dataset = read_voc(path, image_root)
    if not dataset.samples:
        raise CamdeployError(f"--data {path}: none of the {len(dataset.missing)} annotated images exists "
                             f"(first: {dataset.missing[:1]}); check --images")
    return dataset
