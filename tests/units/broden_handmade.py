"""A Broden-layout data set made by hand, where every answer is known by construction.

Eight 32x32 images on an 8x8 grid of 4x4-pixel cells; label images at ``sh = sw = 8`` (one label
pixel per cell, so a feature cell maps to one label pixel and no interpolation blurs the masks):

* ``object``, two layers per image: ``square`` (label 1, painted red, cells rows 2-3, columns 2-3)
  and ``box`` (label 300, so that ``G`` of ``R + 256 * G`` is used: the square and the blue cells
  at rows 2-3, column 4), on images 0-5;
* ``part``: ``corner`` (label 3, the square's top-left cell), on images 0-5; it is also listed in
  ``c_object.csv`` with a smaller coverage, so its primary category is ``part``;
* ``scene``, image-level: ``outdoor`` (label 4, green background) on images 0-1, ``indoor``
  (label 5, grey-green background) on images 2-7.

:class:`HandmadeRunner` computes six units from the pixels, one value per cell:
0 red (the square exactly), 1 red or blue (the box exactly), 2 an outdoor image (every cell of it),
3 red but the square's bottom-right cell (IoU 0.75 with the square), 4 nothing, 5 the corner.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from camdeploy.metadata import ModelSpec, Normalization
from camdeploy.runtime.runner import Runner

CELL, GRID = 4, 8
RED, BLUE, GREEN, GREY = (255, 0, 0), (0, 0, 255), (0, 200, 0), (40, 60, 40)
SQUARE, BOX, CORNER, OUTDOOR, INDOOR = 1, 300, 3, 4, 5
SQUARE_CELLS = [(2, 2), (2, 3), (3, 2), (3, 3)]
BLUE_CELLS = [(2, 4), (3, 4)]
EXPECTED = {0: ("square", "object", 1.0), 1: ("box", "object", 1.0), 2: ("outdoor", "scene", 1.0),
            3: ("square", "object", 0.75), 4: ("-", "scene", 0.0), 5: ("corner", "part", 1.0)}
"""unit -> (label, category, IoU). Unit 4 never fires: every IoU is 0, and the tie between
categories goes to the last one, as in NetDissect-Lite."""
QUANTILE = 0.3
"""Every unit is 1 on fewer than 30 % of its positions and 0 elsewhere: T = 0, masks = cells > 0."""


def _paint(cells: list[tuple[int, int]], colour: tuple[int, int, int], image: np.ndarray) -> None:
    for r, c in cells:
        image[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = colour


def _label_png(path: Path, labels: np.ndarray) -> None:
    bgr = np.zeros((*labels.shape, 3), dtype=np.uint8)
    bgr[:, :, 2] = labels % 256  # R
    bgr[:, :, 1] = labels // 256  # G
    assert cv2.imwrite(str(path), bgr)


def write_broden(root: Path, images: int = 8) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(images):
        outdoor = i < 2
        picture = np.zeros((GRID * CELL, GRID * CELL, 3), dtype=np.uint8)
        picture[:] = GREEN if outdoor else GREY
        object_layers, part = "", ""
        if i < 6:
            _paint(SQUARE_CELLS, RED, picture)
            _paint(BLUE_CELLS, BLUE, picture)
            square = np.zeros((GRID, GRID), dtype=np.int64)
            box = np.zeros((GRID, GRID), dtype=np.int64)
            corner = np.zeros((GRID, GRID), dtype=np.int64)
            for r, c in SQUARE_CELLS:
                square[r, c] = SQUARE
            for r, c in SQUARE_CELLS + BLUE_CELLS:
                box[r, c] = BOX
            corner[2, 2] = CORNER
            _label_png(root / "images" / f"im{i}_square.png", square)
            _label_png(root / "images" / f"im{i}_box.png", box)
            _label_png(root / "images" / f"im{i}_corner.png", corner)
            object_layers, part = f"im{i}_square.png;im{i}_box.png", f"im{i}_corner.png"
        assert cv2.imwrite(str(root / "images" / f"im{i}.png"), picture[:, :, ::-1])
        rows.append({"image": f"im{i}.png", "split": "train", "ih": 32, "iw": 32, "sh": GRID, "sw": GRID,
                     "object": object_layers, "part": part, "scene": str(OUTDOOR if outdoor else INDOOR)})
    _csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", "object", "part", "scene"], rows)
    _csv(root / "category.csv", ["name", "first", "last", "count", "frequency"],
         [{"name": n, "first": 0, "last": 0, "count": 0, "frequency": 0} for n in ("object", "part", "scene")])
    labels = [(SQUARE, "square", "object(1)"), (CORNER, "corner", "object(1);part(1)"),
              (OUTDOOR, "outdoor", "scene(1)"), (INDOOR, "indoor", "scene(1)"), (BOX, "box", "object(1)")]
    _csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
         [{"number": n, "name": name, "category": cat, "frequency": 6, "coverage": 1.0, "syns": ""}
          for n, name, cat in labels])
    fields = ["code", "number", "name", "frequency", "coverage"]

    def codes(*entries: tuple[int, int, str, float]) -> list[dict]:
        return [dict(zip(fields, (code, number, name, 6, coverage), strict=True))
                for code, number, name, coverage in entries]

    _csv(root / "c_object.csv", fields, codes((1, SQUARE, "square", 0.4), (2, BOX, "box", 0.6),
                                              (3, CORNER, "corner", 0.05)))
    _csv(root / "c_part.csv", fields, codes((1, CORNER, "corner", 0.1)))
    _csv(root / "c_scene.csv", fields, codes((1, OUTDOOR, "outdoor", 2.0), (2, INDOOR, "indoor", 6.0)))
    return root


def _csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(rows)


SPEC = ModelSpec(class_names=("outdoor thing", "indoor thing"), input_height=GRID * CELL, input_width=GRID * CELL,
                 normalization=Normalization((1 / 255,) * 3, (0.0,) * 3), topk=1, box_threshold=0.5,
                 source_model="handmade")


class HandmadeRunner(Runner):
    """Six units computed from the pixels (see the module docstring), through the runner interface."""

    name = "handmade"

    def __init__(self) -> None:
        super().__init__(SPEC)

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def class_weight(self) -> np.ndarray:
        return np.array([[0, 0, 2, 0, 0, 0], [1, 0.5, -1, 0, 0, 3]], dtype=np.float32)

    def features(self, images: np.ndarray) -> np.ndarray:
        n = images.shape[0]
        cells = images.reshape(n, 3, GRID, CELL, GRID, CELL).mean(axis=(3, 5))  # [N, 3, 8, 8]
        r, g, b = cells[:, 0], cells[:, 1], cells[:, 2]
        red = (r > 0.5) & (g < 0.5) & (b < 0.5)
        blue = (b > 0.5) & (r < 0.5) & (g < 0.5)
        outdoor = ((g > 0.5) & (r < 0.5)).mean(axis=(1, 2)) > 0.5
        rows, cols = np.indices((GRID, GRID))
        everywhere = np.broadcast_to(outdoor[:, None, None], red.shape)
        units = [red, red | blue, everywhere, red & ~((rows == 3) & (cols == 3)), np.zeros_like(red),
                 red & (rows == 2) & (cols == 2)]
        return np.stack(units, axis=1).astype(np.float32)

    def _run(self, images: np.ndarray, features: bool, outputs: str) -> dict[str, np.ndarray]:
        maps = self.features(images)
        logits = np.einsum("nkhw,ck->nc", maps, self.class_weight()) / (GRID * GRID)
        out = {"logits": logits.astype(np.float32), "classes": logits.argmax(axis=1)[:, None],
               "scores": np.ones((len(images), 1), dtype=np.float32)}
        if features:
            out["features"] = maps
        return out
