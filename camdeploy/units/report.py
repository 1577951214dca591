"""The files of ``camdeploy units``: montages, a static HTML report, JSON and CSV numbers.

``OUT/`` receives:

* ``units.json``: the model, concepts, settings, the summary ("X of Y units are detectors of Z
  unique concepts", per category), and per unit (``unit`` is the 0-based channel of ``features``)
  its threshold, top images with their spatial maxima, label, category, IoU, best label per
  category and montage; class-specific units; variant comparisons;
* ``units.csv``: one row per unit; ``tally.csv``: NetDissect-Lite's columns (``unit`` 1-based, as
  there); ``compare.csv``: one row per unit and variant;
* ``montages/unit_NNNN.jpg``: the unit's top images as the model saw them (the input frame), the
  region outside its mask dimmed to 20 % (``(0.8 * mask + 0.2) * image``, as NetDissect draws it);
* ``bargraph.svg``: detectors per concept, by category; ``index.html``: everything above, units
  sorted by IoU (by unit without concepts).
"""

from __future__ import annotations

import csv
import functools
import html
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

import camdeploy
from camdeploy.atomic import write_bytes, write_json, write_text
from camdeploy.errors import CamdeployError
from camdeploy.runtime.images import DecodeOptions, read_image, resize_for_model
from camdeploy.units.analysis import Analysis, ModelUnits
from camdeploy.units.classes import class_units
from camdeploy.units.concepts import describe_source
from camdeploy.units.upsample import unit_masks

CATEGORY_ORDER = ("object", "scene", "part", "material", "texture", "color")
"""The bar chart's category order (NetDissect's); others follow."""
PALETTE = ("#4B4CBF", "#55B05B", "#50BDAC", "#D4CF24", "#F0883B", "#D92E2B")
GAP = 3


@dataclass(frozen=True)
class ReportOptions:
    montages: bool = True
    tile: int = 112
    """Side of each image in a montage, in pixels."""
    classes: tuple[int, ...] = ()
    class_units: int = 5
    cache_images: int = 2048
    """Decoded montage tiles kept in memory."""


class _Tiles:
    """Images as the model saw them (its input frame, resized to ``tile``), decoded once each while
    they stay in an LRU cache."""

    def __init__(self, analysis: Analysis, height: int, width: int, resize: str, tile: int, cache: int):
        self.analysis, self.height, self.width, self.resize, self.tile = analysis, height, width, resize, tile
        self.get = functools.lru_cache(maxsize=cache)(self._load)

    def _load(self, position: int) -> np.ndarray:
        path = self.analysis.image_path(position)
        loaded = read_image(path, DecodeOptions(target=(self.height, self.width), resize=self.resize))
        seen, _ = resize_for_model(loaded.pixels, self.height, self.width, self.resize)
        return cv2.resize(seen, (self.tile, self.tile), interpolation=cv2.INTER_AREA)


def montage(images: list[np.ndarray], masks: list[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Tiles side by side on white, each ``(0.8 * mask + 0.2) * image`` (RGB uint8)."""
    tile = images[0].shape[0]
    out = np.full((tile, len(images) * (tile + gap) - gap, 3), 255, dtype=np.uint8)
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        shaded = (mask[:, :, None] * 0.8 + 0.2) * image.astype(np.float32)
        out[:, i * (tile + gap):i * (tile + gap) + tile] = np.clip(np.rint(shaded), 0, 255).astype(np.uint8)
    return out


def unit_montage(model: ModelUnits, unit: int, tiles: _Tiles) -> np.ndarray:
    """The montage of ``unit``: its top images with their masks at the tile size."""
    count = int(np.isfinite(model.top_values[unit]).sum())
    images = [tiles.get(int(p)) for p in model.top_images[unit, :count]]
    thresholds = np.full(count, model.mask_thresholds[unit], dtype=np.float32)
    masks = unit_masks(model.top_maps[unit, :count], thresholds, (tiles.tile, tiles.tile))
    return montage(images, list(masks))


def bar_graph_svg(model: ModelUnits) -> str:
    """Detectors per concept (one bar per unique label, grouped by category, tallest first)."""
    tally = model.tally
    if tally is None:
        return ""
    counts: Counter[tuple[int, int]] = Counter()
    best: dict[tuple[int, int], float] = {}
    for unit in np.flatnonzero(tally.detectors):
        key = (int(tally.best_category[unit]), int(tally.label[unit]))
        counts[key] += 1
        best[key] = max(best.get(key, 0.0), float(tally.score[unit]))
    names = tally.category_names
    order = [names.index(c) for c in CATEGORY_ORDER if c in names] + \
        [i for i, c in enumerate(names) if c not in CATEGORY_ORDER]
    bars = sorted(counts, key=lambda k: (order.index(k[0]), -counts[k], -best[k], k[1]))
    width, bar_height, label_room = 14, 100, 110
    top = max(counts.values(), default=1)
    total_width = max(200, len(bars) * width + 40)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_width}" height="{bar_height + label_room + 30}" '
             'font-family="Arial" font-size="10">']
    parts.append(f'<text x="4" y="12">units per concept (IoU &gt;= {tally.iou_threshold:g}); {len(bars)} concepts'
                 '</text>')
    for i, key in enumerate(bars):
        h = bar_height * counts[key] / top
        x, y = 30 + i * width, 20 + bar_height - h
        colour = PALETTE[order.index(key[0]) % len(PALETTE)]
        label = html.escape(tally.label_names[key[1]])
        parts.append(f'<rect x="{x}" y="{y:.1f}" width="{width - 2}" height="{h:.1f}" fill="{colour}">'
                     f'<title>{label} ({html.escape(names[key[0]])}): {counts[key]}</title></rect>')
        parts.append(f'<text transform="translate({x + width / 2:.1f},{24 + bar_height}) rotate(60)">{label}</text>')
    parts.append(f'<text x="2" y="{24}" font-size="9">{top}</text>')
    legend_x = 30
    for position, category in enumerate(order):
        colour = PALETTE[position % len(PALETTE)]
        parts.append(f'<rect x="{legend_x}" y="{bar_height + label_room + 18}" width="8" height="8" fill="{colour}"/>'
                     f'<text x="{legend_x + 11}" y="{bar_height + label_room + 26}">{html.escape(names[category])}'
                     '</text>')
        legend_x += 11 + 7 * len(names[category]) + 14
    parts.append("</svg>\n")
    return "\n".join(parts)


def _unit_records(analysis: Analysis, model: ModelUnits, montages: bool) -> list[dict[str, object]]:
    records = []
    for unit in range(model.units):
        count = int(np.isfinite(model.top_values[unit]).sum())
        record: dict[str, object] = {
            "unit": unit, "threshold": float(model.thresholds[unit]), "saturated": bool(model.saturated[unit]),
            "mask_rule": ">" if model.mask_thresholds[unit] == model.thresholds[unit] else ">=",
            "top_images": [{"file": str(analysis.image_path(int(p))), "max": float(v)} for p, v in
                           zip(model.top_images[unit, :count], model.top_values[unit, :count], strict=True)],
            "montage": f"montages/unit_{unit:04d}.jpg" if montages else None}
        if model.tally is not None:
            record.update(model.tally.unit_record(unit))
        records.append(record)
    return records


def _class_records(analysis: Analysis, model: ModelUnits, options: ReportOptions,
                   class_names: tuple[str, ...]) -> list[dict[str, object]]:
    out = []
    for c in options.classes:
        units = []
        for unit, weight in class_units(model.class_weight, c, options.class_units):
            entry: dict[str, object] = {"unit": unit, "weight": weight}
            if model.tally is not None:
                concept = model.tally.unit_record(unit)
                entry.update({"label": concept["label"], "category": concept["category"], "iou": concept["iou"],
                              "detector": concept["detector"]})
            units.append(entry)
        out.append({"class": c, "name": class_names[c], "units": units})
    return out


def _csv(rows: list[dict[str, object]], fields: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_report(analysis: Analysis, out_dir: str | Path, options: ReportOptions, *, model_info: dict[str, object],
                 class_names: tuple[str, ...], settings: dict[str, object],
                 comparisons: list[dict[str, object]] | None = None) -> dict[str, object]:
    """Write every file (see the module docstring) for the first model of ``analysis``; return
    the ``units.json`` document."""
    out_dir = Path(out_dir)
    model = analysis.models[0]
    label = f"--out {out_dir}"
    if options.montages:
        size: list[int] = settings["input_size"]  # type: ignore[assignment]
        tiles = _Tiles(analysis, int(size[0]), int(size[1]), str(settings["resize"]), options.tile,
                       options.cache_images)
        folder = out_dir / "montages"
        for unit in range(model.units):
            picture = unit_montage(model, unit, tiles)
            ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(picture[:, :, ::-1]),
                                       [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                raise CamdeployError(f"{label}: cannot encode the montage of unit {unit}")
            write_bytes(folder / f"unit_{unit:04d}.jpg", encoded.tobytes(), label=label)
    units = _unit_records(analysis, model, options.montages)
    classes = _class_records(analysis, model, options, class_names)
    document: dict[str, object] = {
        "camdeploy": camdeploy.__version__, "model": model_info, "runner": model.description,
        "concepts": describe_source(analysis.source), "settings": settings,
        "images": {"listed": len(analysis.source.images), "read": len(analysis.images),
                   "skipped": [{"file": str(p), "reason": r} for p, r in analysis.skipped]},
        "units_count": model.units, "map_shape": list(analysis.map_shape),
        "saturated": {"units": int(model.saturated.sum()), "rule": analysis.options.saturated,
                      "note": "units, not constant, whose threshold equals their largest value: their top quantile "
                              "lies at one value (e.g. ReLU6's 6), so no position is > T; with rule 'empty' (the "
                              "reference's > T) their masks are empty, with 'include' they are >= T"},
        "summary": model.tally.summary() if model.tally is not None else None,
        "seconds": {k: round(v, 3) for k, v in analysis.seconds.items()},
        "classes": classes, "compare": [c["summary"] for c in comparisons or []], "units": units}
    write_json(out_dir / "units.json", document, label=label)
    fields = ["unit", "threshold", "label", "category", "iou", "detector", "top_max", "top_image"]
    rows = [{**r, "top_max": r["top_images"][0]["max"] if r["top_images"] else "",  # type: ignore[index]
             "top_image": r["top_images"][0]["file"] if r["top_images"] else ""} for r in units]  # type: ignore[index]
    write_text(out_dir / "units.csv", _csv(rows, fields), label=label)
    if model.tally is not None:
        write_text(out_dir / "tally.csv", model.tally.tally_csv(), label=label)
        write_text(out_dir / "bargraph.svg", bar_graph_svg(model), label=label)
    if comparisons:
        rows = [{"variant": c["summary"]["variant"], **row} for c in comparisons for row in c["units"]]  # type: ignore
        compare_fields = ["variant", "unit", "threshold", "variant_threshold", "threshold_drift",
                          "relative_threshold_drift", "top_overlap", "label", "variant_label", "kept", "iou",
                          "variant_iou", "iou_drift", "detector", "variant_detector"]
        write_text(out_dir / "compare.csv", _csv(rows, compare_fields), label=label)
    write_text(out_dir / "index.html", render_html(document, model, options), label=label)
    return document


_STYLE = """body{font-family:Arial,sans-serif;margin:1.5em;color:#222}
.unit{margin:0 0 14px 0}.unit .info{font-size:14px;margin-bottom:2px}.label{font-weight:bold;font-size:16px}
.low{opacity:.55}img.montage{height:72px;display:block}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}.class{margin-bottom:1.2em}.note{color:#555}"""


def _unit_html(record: dict[str, object], options: ReportOptions, extra: str = "") -> str:
    e = html.escape
    has_concept = "label" in record
    low = "" if not has_concept or record.get("detector") else " low"
    parts = [f'<div class="unit{low}"><div class="info">']
    if has_concept:
        parts.append(f'<span class="label">{e(str(record["label"]))}</span> ({e(str(record["category"]))}) '
                     f'IoU {float(record["iou"]):.3f} · ')  # type: ignore[arg-type]
    parts.append(f'unit {record["unit"]} · T = {float(record["threshold"]):.4g}{extra}</div>')  # type: ignore[arg-type]
    if options.montages and record.get("montage"):
        parts.append(f'<img class="montage" src="{e(str(record["montage"]))}" loading="lazy" alt="unit '
                     f'{record["unit"]}">')
    parts.append("</div>")
    return "".join(parts)


def render_html(document: dict[str, object], model: ModelUnits, options: ReportOptions) -> str:
    """The static report: summary, bar chart, class-specific units, variants, every unit by score."""
    e = html.escape
    units: list[dict[str, object]] = document["units"]  # type: ignore[assignment]
    summary = document["summary"]
    concepts = document["concepts"]
    images = document["images"]
    parts = ["<!doctype html>", '<html><head><meta charset="utf-8"><title>camdeploy units: '
             f'{e(model.name)}</title><style>{_STYLE}</style></head><body>',
             f"<h1>What the units of {e(model.name)} see</h1>",
             f'<p class="note">{e(str(concepts["description"]))}; {images["read"]} of '  # type: ignore[index]
             f'{images["listed"]} images read; {len(units)} units of a '  # type: ignore[index]
             f'{"x".join(map(str, document["map_shape"]))} feature map; threshold: the top '  # type: ignore[call-overload]
             f'{100 * float(document["settings"]["quantile"]):g} % of positions '  # type: ignore[index]
             f'(exact); execution {e(str(model.description.get("execution")))}.</p>']
    saturated: dict[str, object] = document["saturated"]  # type: ignore[assignment]
    if saturated["units"]:
        parts.append(f'<p class="note">{saturated["units"]} units saturate: {e(str(saturated["note"]))} (rule used '
                     f'here: {e(str(saturated["rule"]))}).</p>')
    if summary is not None:
        parts.append(f"<h2>{e(str(summary['sentence']))}</h2>")  # type: ignore[index]
        parts.append("<table><tr><th>category</th><th>detectors</th><th>unique concepts</th></tr>")
        for row in summary["per_category"]:  # type: ignore[index]
            parts.append(f"<tr><td>{e(row['category'])}</td><td>{row['detectors']}</td><td>{row['concepts']}</td></tr>")
        parts.append('</table><p><img src="bargraph.svg" alt="detectors per concept"></p>')
    by_unit = {int(r["unit"]): r for r in units}  # type: ignore[call-overload]
    classes: list[dict[str, object]] = document["classes"]  # type: ignore[assignment]
    if classes:
        parts.append("<h2>Class-specific units (largest weights W[c, k])</h2>")
        for entry in classes:
            parts.append(f'<div class="class"><h3>{e(str(entry["name"]))} (class {entry["class"]})</h3>')
            for unit in entry["units"]:  # type: ignore[attr-defined]
                parts.append(_unit_html(by_unit[unit["unit"]], options, f' · W = {unit["weight"]:.4g}'))
            parts.append("</div>")
    comparisons: list[dict[str, object]] = document["compare"]  # type: ignore[assignment]
    if comparisons:
        parts.append("<h2>Precision variants</h2><ul>")
        for comparison in comparisons:
            parts.append(f"<li>{e(str(comparison['sentence']))}</li>")
        parts.append("</ul>")
        for comparison in comparisons:
            changed = comparison.get("detectors_changed") or []
            if changed:
                parts.append(f"<h3>{e(str(comparison['variant']))}: detectors that lose their label</h3><table><tr>"
                             "<th>unit</th><th>label</th><th>IoU</th><th>variant label</th><th>variant IoU</th></tr>")
                for row in changed:  # type: ignore[attr-defined]
                    parts.append(f"<tr><td>{row['unit']}</td><td>{e(row['label'])}</td><td>{row['iou']:.3f}</td>"
                                 f"<td>{e(row['variant_label'])}</td><td>{row['variant_iou']:.3f}</td></tr>")
                parts.append("</table>")
    heading = "Units by IoU" if summary is not None else "Units"
    parts.append(f"<h2>{heading}</h2>")
    order = model.tally.order() if model.tally is not None else range(model.units)
    for unit in order:
        parts.append(_unit_html(by_unit[int(unit)], options))
    parts.append("</body></html>\n")
    return "\n".join(parts)
