"""Precision variants against the model they came from: does an INT8 or FP16 file keep its units?

Per unit ``u``, with ``b`` the base model and ``v`` the variant, each analysed on the same images
with its own thresholds and tally:

* ``threshold_drift = T_v[u] - T_b[u]`` and ``relative_threshold_drift`` (over ``|T_b[u]|``);
* ``top_overlap``: the fraction of the base's top-k images among the variant's;
* with concepts: ``kept`` (the same label), ``iou_drift = IoU_v[u, l] - IoU_b[u, l]`` for the
  base's label ``l``, and the variant's own label and IoU.

The summary counts labels kept (over all units and over the base's detectors, which must also stay
detectors), and gives the distribution of the drifts.
"""

from __future__ import annotations

import numpy as np

from camdeploy.units.analysis import ModelUnits


def _spread(values: np.ndarray) -> dict[str, float]:
    magnitude = np.abs(values)
    return {"median_abs": float(np.median(magnitude)), "p90_abs": float(np.quantile(magnitude, 0.9)),
            "max_abs": float(magnitude.max()), "mean": float(values.mean())}


def compare_units(base: ModelUnits, variant: ModelUnits) -> dict[str, object]:
    """Per-unit rows and a summary (see the module docstring)."""
    units = base.units
    drift = variant.thresholds.astype(np.float64) - base.thresholds.astype(np.float64)
    scale = np.abs(base.thresholds.astype(np.float64))
    relative = np.divide(drift, scale, out=np.zeros_like(drift), where=scale > 0)
    k = base.top_images.shape[1]
    overlap = np.array([len(set(base.top_images[u].tolist()) & set(variant.top_images[u].tolist())) / k
                        for u in range(units)])
    rows: list[dict[str, object]] = []
    for u in range(units):
        rows.append({"unit": u, "threshold": float(base.thresholds[u]),
                     "variant_threshold": float(variant.thresholds[u]), "threshold_drift": float(drift[u]),
                     "relative_threshold_drift": float(relative[u]),
                     "top_overlap": float(overlap[u])})
    summary: dict[str, object] = {
        "model": base.name, "variant": variant.name, "execution": variant.description.get("execution"),
        "units": units, "relative_threshold_drift": _spread(relative), "top_overlap_mean": float(overlap.mean())}
    b, v = base.tally, variant.tally
    if b is not None and v is not None:
        labels = np.arange(units)
        kept = b.label == v.label
        iou_of_base_label = v.iou[labels, b.label]
        iou_drift = iou_of_base_label - b.score
        for u, row in enumerate(rows):
            row.update({"label": b.label_names[b.label[u]], "iou": float(b.score[u]), "detector": bool(b.detectors[u]),
                        "variant_label": v.label_names[v.label[u]], "variant_iou": float(v.score[u]),
                        "variant_detector": bool(v.detectors[u]), "kept": bool(kept[u]),
                        "iou_drift": float(iou_drift[u])})
        detectors = b.detectors
        still = detectors & kept & v.detectors
        summary.update({
            "labels_kept": int(kept.sum()),
            "detectors": int(detectors.sum()), "variant_detectors": int(v.detectors.sum()),
            "detectors_kept": int(still.sum()),
            "detectors_changed": [{"unit": int(u), "label": b.label_names[b.label[u]], "iou": float(b.score[u]),
                                   "variant_label": v.label_names[v.label[u]], "variant_iou": float(v.score[u])}
                                  for u in np.flatnonzero(detectors & ~still)],
            "iou_drift": _spread(iou_drift), "iou_drift_detectors": _spread(iou_drift[detectors]) if detectors.any()
            else None,
            "sentence": f"{variant.name}: {int(still.sum())} of {int(detectors.sum())} detectors keep their label "
                        f"(IoU >= {b.iou_threshold:g}), {int(kept.sum())} of {units} units keep their label; "
                        f"median |IoU drift| {float(np.median(np.abs(iou_drift))):.4f}, median |relative threshold "
                        f"drift| {float(np.median(np.abs(relative))):.4f}"})
    else:
        summary["sentence"] = (f"{variant.name}: median |relative threshold drift| "
                               f"{float(np.median(np.abs(relative))):.4f}, top-image overlap {overlap.mean():.3f}")
    return {"summary": summary, "units": rows}
