"""Network Dissection's tally: each unit's mask against each concept, counted as NetDissect-Lite
counts it (``feature_operation.py``, ``FeatureOperator.tally``), with exact integer counts.

For unit ``u``, label ``l`` of primary category ``c(l)``, over the images ``i``:

* ``M[u, i]``: the unit's mask on image ``i`` at its segmentation size ``(sh, sw)``: the map
  upsampled (:func:`camdeploy.units.upsample.unit_masks`) and ``> T[u]``; images whose map never
  exceeds ``T[u]`` are skipped (their mask is empty);
* ``I[u, l]``: pixels of ``M[u, i]`` labelled ``l``, summed over images and label layers (a
  pixel with ``l`` in two layers counts twice); an image-level label counts every mask pixel;
* ``G[l]``: pixels labelled ``l`` (``sh * sw`` per image-level label), whatever the units do;
* ``A[u, c]``: pixels of ``M[u, i]`` summed over the images where the mask hits a pixel label of
  category ``c`` or that have an image-level label of category ``c``;
* ``IoU[u, l] = I[u, l] / (A[u, c(l)] + G[l] - I[u, l] + 1e-10)``.

A unit's label in category ``c`` is its label of highest IoU among those of primary category
``c`` (the first on a tie), its label overall that of its best category (the later category on a
tie, as the reference's reversed ``argsort``), and it is a detector when that IoU is at least the
IoU threshold (0.04).

Deliberate differences from the reference, and their bounds:

* thresholds are exact quantiles (:mod:`camdeploy.units.stats`) where the reference reads a
  sketch: the tally itself takes ``T`` as given, and ``tests/units/test_netdissect_port.py``
  holds this module to a port of the reference's loop on the same maps, labels and thresholds:
  equal counts, IoUs and labels;
* on an image with image-level labels and no pixel label in any chosen category, the
  reference's loop adds the image-level categories to ``tally_cat`` left over from the previous
  unit (a stale variable; on the first such unit of a run it raises ``NameError``). Here each
  unit starts from no category. Only such images are affected (with Broden's ``color`` category
  chosen, every image has pixel labels), and only ``A``;
* ties between units of equal score are ordered by unit number (the reference's order is that
  of an unstable sort).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.units.concepts import ConceptMap
from camdeploy.units.upsample import unit_masks

DEFAULT_IOU_THRESHOLD = 0.04
EPSILON = 1e-10


class Tally:
    """Counts of one model's units against ``labels`` labels of ``categories`` categories."""

    def __init__(self, units: int, primary: np.ndarray, categories: int):
        labels = len(primary)
        self.primary = np.asarray(primary, dtype=np.int64)
        self.categories = categories
        self.labelcat = np.zeros((labels, categories), dtype=np.float32)  # one-hot primary category
        self.labelcat[np.arange(labels), self.primary] = 1
        self.intersection = np.zeros((units, labels), dtype=np.int64)  # I
        self.label_pixels = np.zeros(labels, dtype=np.int64)  # G
        self.unit_pixels = np.zeros(units, dtype=np.int64)  # sum of |M|
        self.unit_category_pixels = np.zeros((units, categories), dtype=np.int64)  # A
        self.label_images = np.zeros(labels, dtype=np.int64)  # images where each label occurs
        self.images = 0

    @classmethod
    def total(cls, parts: list[Tally]) -> Tally:
        """The counts of several tallies of the same units and labels, over their images together."""
        first = parts[0]
        out = cls(first.intersection.shape[0], first.primary, first.categories)
        for part in parts:
            for name in ("intersection", "label_pixels", "unit_pixels", "unit_category_pixels", "label_images"):
                getattr(out, name)[...] += getattr(part, name)
            out.images += part.images
        return out

    def add(self, maps: np.ndarray, thresholds: np.ndarray, concepts: ConceptMap) -> None:
        """Count one image: ``maps float32 [U, h, w]``, ``thresholds float32 [U]``."""
        labels = len(self.primary)
        sh, sw = concepts.shape
        layers = concepts.layers
        if layers.size and (layers.min() < 0 or layers.max() >= labels):
            bad = int(layers.max() if layers.max() >= labels else layers.min())
            raise CamdeployError(f"concepts: label {bad} in a label image; label.csv has labels 0..{labels - 1}")
        for scalar in concepts.scalars:
            if not 0 < scalar < labels:
                raise CamdeployError(f"concepts: image-level label {scalar}; label.csv has labels 1..{labels - 1}")
        self.images += 1
        if layers.size:
            counts = np.bincount(layers.ravel(), minlength=labels)
            counts[0] = 0
            self.label_pixels += counts
        for scalar in concepts.scalars:
            self.label_pixels[scalar] += sh * sw
        occurring = np.unique(np.concatenate([layers.ravel(), np.asarray(concepts.scalars, dtype=layers.dtype)]))
        self.label_images[occurring[occurring > 0]] += 1
        peaks = maps.reshape(maps.shape[0], -1).max(axis=1)
        fire = np.flatnonzero(peaks > thresholds)
        if not fire.size:
            return
        masks = unit_masks(maps[fire], thresholds[fire], (sh, sw)).reshape(len(fire), -1)  # [n, sh*sw]
        sizes = masks.sum(axis=1, dtype=np.int64)
        self.unit_pixels[fire] += sizes
        hit = np.zeros((len(fire), self.categories), dtype=bool)
        present = np.unique(layers)
        present = present[present > 0]
        if present.size:
            flat = layers.reshape(layers.shape[0], -1)
            onehot = np.zeros((flat.shape[1], present.size), dtype=np.float32)  # label layers per pixel
            pixels = np.arange(flat.shape[1])
            for layer in flat:
                labelled = layer > 0
                np.add.at(onehot, (pixels[labelled], np.searchsorted(present, layer[labelled])), 1)
            inter = np.rint(masks.astype(np.float32) @ onehot).astype(np.int64)  # [n, p], exact below 2^24
            self.intersection[np.ix_(fire, present)] += inter
            hit |= (inter.astype(np.float32) @ self.labelcat[present]) > 0
        for scalar in concepts.scalars:
            self.intersection[fire, scalar] += sizes
            hit[:, self.primary[scalar]] = True
        self.unit_category_pixels[fire] += sizes[:, None] * hit

    def result(self, category_names: list[str], label_names: list[str],
               iou_threshold: float = DEFAULT_IOU_THRESHOLD, min_images: int = 1) -> TallyResult:
        """IoUs and labels; a label found in fewer than ``min_images`` images cannot be a unit's
        label (1: any label, as the reference)."""
        activation = self.unit_category_pixels[:, self.primary]  # A[u, c(l)]  [U, L]
        iou = self.intersection / (activation + self.label_pixels[None, :] - self.intersection + EPSILON)
        eligible = self.label_images >= min_images
        per_category = np.stack([np.where((self.primary == c) & eligible, iou, 0.0)
                                 for c in range(self.categories)])  # [C, U, L]
        labels = per_category.argmax(axis=2)  # [C, U]
        scores = np.take_along_axis(per_category, labels[:, :, None], axis=2)[:, :, 0]  # [C, U]
        best = self.categories - 1 - scores[::-1].argmax(axis=0)  # the later category on a tie
        units = np.arange(iou.shape[0])
        return TallyResult(category_names=list(category_names), label_names=list(label_names),
                           iou_threshold=iou_threshold, iou=iou, activation=activation,
                           intersection=self.intersection.copy(), label_pixels=self.label_pixels.copy(),
                           unit_pixels=self.unit_pixels.copy(), category_labels=labels, category_scores=scores,
                           best_category=best, label=labels[best, units], score=scores[best, units],
                           images=self.images, label_images=self.label_images.copy(), min_images=min_images)


@dataclass
class TallyResult:
    """IoUs and labels of every unit; arrays indexed ``[unit]``, ``[unit, label]`` or ``[category, unit]``."""

    category_names: list[str]
    label_names: list[str]
    iou_threshold: float
    iou: np.ndarray
    """``float64 [U, L]``."""
    activation: np.ndarray
    """``int64 [U, L]``: ``A[u, c(l)]``."""
    intersection: np.ndarray
    label_pixels: np.ndarray
    unit_pixels: np.ndarray
    category_labels: np.ndarray
    """``[C, U]``: each unit's best label in each category."""
    category_scores: np.ndarray
    best_category: np.ndarray
    label: np.ndarray
    score: np.ndarray
    images: int
    label_images: np.ndarray
    """``int64 [L]``: images where each label occurs."""
    min_images: int = 1

    @property
    def detectors(self) -> np.ndarray:
        """``bool [U]``: IoU of the unit's label at least the threshold."""
        return self.score >= self.iou_threshold

    def order(self) -> np.ndarray:
        """Units by score, best first (ties: lower unit first)."""
        return np.lexsort((np.arange(len(self.score)), -self.score))

    def summary(self) -> dict[str, object]:
        """``X of Y units are detectors of Z unique concepts``, overall and per category."""
        detectors = self.detectors
        per_category = []
        for c, name in enumerate(self.category_names):
            chosen = detectors & (self.best_category == c)
            per_category.append({"category": name, "detectors": int(chosen.sum()),
                                 "concepts": len(set(self.label[chosen].tolist()))})
        units = len(self.score)
        concepts = len(set(self.label[detectors].tolist()))
        return {"units": units, "detectors": int(detectors.sum()), "concepts": concepts,
                "iou_threshold": self.iou_threshold, "min_images": self.min_images, "per_category": per_category,
                "sentence": f"{int(detectors.sum())} of {units} units are detectors of {concepts} unique concepts "
                            f"(IoU >= {self.iou_threshold:g})"}

    def unit_record(self, unit: int) -> dict[str, object]:
        """One unit's concept: label, category, IoU, detector, and its best label per category."""
        return {"label": self.label_names[self.label[unit]], "category": self.category_names[self.best_category[unit]],
                "iou": float(self.score[unit]), "detector": bool(self.detectors[unit]),
                "label_images": int(self.label_images[self.label[unit]]),
                "per_category": {name: {"label": self.label_names[self.category_labels[c, unit]],
                                        "iou": float(self.category_scores[c, unit])}
                                 for c, name in enumerate(self.category_names)}}

    def tally_csv(self) -> str:
        """``tally.csv`` with NetDissect-Lite's columns (``unit`` 1-based there, as in the reference;
        rows by score, best first)."""
        fields = ["unit", "category", "label", "score"]
        for name in self.category_names:
            fields += [f"{name}-label", f"{name}-truth", f"{name}-activation", f"{name}-intersect", f"{name}-iou"]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(fields)
        for unit in self.order():
            row: list[object] = [int(unit) + 1, self.category_names[self.best_category[unit]],
                                 self.label_names[self.label[unit]], repr(float(self.score[unit]))]
            for c in range(len(self.category_names)):
                label = self.category_labels[c, unit]
                row += [self.label_names[label], int(self.label_pixels[label]), int(self.activation[unit, label]),
                        int(self.intersection[unit, label]), repr(float(self.category_scores[c, unit]))]
            writer.writerow(row)
        return out.getvalue()
