"""Class-specific units (Zhou et al., CVPR 2016, "Visualizing class-specific units"), and the units
behind one prediction.

For a GAP classifier ``logit[c] = sum_k W[c, k] * p[k] + b[c]``, where ``p[k]`` is unit ``k``'s
map pooled over its positions (mean for GAP, max for GMP). So:

* the units that matter for class ``c`` are those of largest ``W[c, k]`` (:func:`class_units`);
* for one image, unit ``k`` contributes ``W[c, k] * p[k]`` to the logit of ``c``; its *share* is
  that contribution over ``sum_k W[c, k] * p[k]`` (the logit without the bias, which is the CAM's
  total: ``sum`` over positions of the CAM equals it times ``h * w`` for GAP), so that the shares of
  all units sum to 1 (:func:`contributions`, :func:`why`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camdeploy.atomic import file_sha256
from camdeploy.console import warn
from camdeploy.errors import CamdeployError
from camdeploy.runtime.result import CamResult
from camdeploy.runtime.runner import Runner

DEFAULT_CLASS_UNITS = 5
DEFAULT_WHY_UNITS = 3


def class_units(weight: np.ndarray, class_index: int, count: int = DEFAULT_CLASS_UNITS) -> list[tuple[int, float]]:
    """The ``count`` units of largest ``W[c, k]`` for class ``class_index``: ``[(unit, weight)]``,
    largest first (ties: lower unit first). ``weight float32 [K, U]``."""
    if not 0 <= class_index < weight.shape[0]:
        raise CamdeployError(f"--classes {class_index}: expected a class index 0..{weight.shape[0] - 1}")
    row = weight[class_index]
    order = np.lexsort((np.arange(len(row)), -row))[:count]
    return [(int(u), float(row[u])) for u in order]


def pooled(features: np.ndarray, pooling: str = "avg") -> np.ndarray:
    """``features [N, U, h, w]`` pooled as the classifier pools them: ``float64 [N, U]``."""
    if pooling not in ("avg", "max"):
        raise CamdeployError(f"pooling {pooling!r}: expected avg or max")
    flat = features.reshape(features.shape[0], features.shape[1], -1).astype(np.float64)
    return flat.mean(axis=2) if pooling == "avg" else flat.max(axis=2)


def contributions(features: np.ndarray, weight: np.ndarray, classes: np.ndarray, pooling: str = "avg") -> np.ndarray:
    """``W[c_n, k] * p[n, k]``: ``float64 [N, U]``, for the class ``classes[n]`` of each image."""
    return weight[np.asarray(classes, dtype=np.int64)].astype(np.float64) * pooled(features, pooling)


@dataclass(frozen=True)
class UnitConcepts:
    """Concepts of a model's units, read from the ``units.json`` of ``camdeploy units``."""

    labels: list[str | None]
    """Per unit: ``label (category)`` when the unit is a detector, else None."""
    model_sha256: str | None
    source: str


def read_unit_concepts(path: str | Path) -> UnitConcepts:
    """The unit concepts in ``units.json`` (or a ``camdeploy units`` output folder holding it)."""
    path = Path(path)
    file = path / "units.json" if path.is_dir() else path
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
        units = document["units"]
        labels: list[str | None] = [None] * len(units)
        for record in units:
            if record.get("detector"):
                labels[int(record["unit"])] = f"{record['label']} ({record['category']})"
        sha = document.get("model", {}).get("sha256")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CamdeployError(f"--why-concepts {path}: not the units.json of `camdeploy units` ({exc}); expected "
                             "the --out folder of `camdeploy units` or its units.json") from None
    return UnitConcepts(labels, sha, str(file))


def why(features: np.ndarray, weight: np.ndarray, classes: np.ndarray, pooling: str = "avg",
        count: int = DEFAULT_WHY_UNITS, concepts: UnitConcepts | None = None) -> list[list[dict[str, object]]]:
    """For each image, the ``count`` units contributing most to the logit of ``classes[n]``:
    ``{"unit", "share"}`` and, with ``concepts``, ``"concept"`` (the unit's label when it is a
    detector, else None)."""
    if concepts is not None and len(concepts.labels) != weight.shape[1]:
        raise CamdeployError(f"--why-concepts {concepts.source}: {len(concepts.labels)} units; the model has "
                             f"{weight.shape[1]}")
    parts = contributions(features, weight, classes, pooling)  # [N, U]
    totals = parts.sum(axis=1)
    out = []
    for n in range(parts.shape[0]):
        order = np.lexsort((np.arange(parts.shape[1]), -parts[n]))[:count]
        records: list[dict[str, object]] = []
        for unit in order:
            share = round(float(parts[n, unit] / totals[n]), 4) if totals[n] != 0 else None
            record: dict[str, object] = {"unit": int(unit), "share": share}
            if concepts is not None:
                record["concept"] = concepts.labels[unit]
            records.append(record)
        out.append(records)
    return out


def explainer(runner: Runner, count: int, concepts_path: str | Path | None = None
              ) -> Callable[[CamResult], list[list[dict[str, object]]]]:
    """``run --why``: a function from a result (inferred with ``features=True``) to the ``why`` of
    each record, the ``count`` units behind its top class, named from ``concepts_path`` (the
    ``camdeploy units`` report of this model) when given."""
    concepts = read_unit_concepts(concepts_path) if concepts_path else None
    weight = runner.class_weight()
    if concepts is not None and len(concepts.labels) != weight.shape[1]:
        raise CamdeployError(f"--why-concepts {concepts_path}: describes {len(concepts.labels)} units; MODEL has "
                             f"{weight.shape[1]}; run `camdeploy units` on this model")
    made_from = concepts.model_sha256 if concepts is not None else None
    if made_from and runner.model_path and made_from != file_sha256(runner.model_path):
        warn(f"--why-concepts {concepts_path}: made from another model file (SHA-256 {made_from[:12]}...); its "
             "unit labels are used as they are")

    def explain(result: CamResult) -> list[list[dict[str, object]]]:
        if result.features is None:
            raise CamdeployError("--why: the result has no features (infer with features=True)")
        return why(result.features, weight, result.classes[:, 0], runner.spec.pooling, count, concepts)

    return explain
