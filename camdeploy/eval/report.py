"""Presenting an :class:`~camdeploy.eval.evaluate.EvalReport`: terminal table, JSON, plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from camdeploy import atomic
from camdeploy.eval.evaluate import METRIC_KEYS, WSOLEVALUATION, EvalReport
from camdeploy.eval.metrics import GT_KNOWN_LOC_TAU, MAXBOXACC_V2_CAMDEPLOY
from camdeploy.eval.wsol import MAXBOXACC_V1, MAXBOXACC_V2, WSOL_IOU_THRESHOLDS, maxboxacc_v2_name

WSOL_REFERENCE = "clovaai/wsolevaluation@96f4b88"
"""The code whose conventions ``--protocol wsolevaluation`` reproduces."""

LABELS = {"top1_cls_err": "top-1 cls err", "top5_cls_err": "top-5 cls err", "top1_loc_err": "top-1 loc err",
          "top5_loc_err": "top-5 loc err", GT_KNOWN_LOC_TAU: "GT-known loc (tau {tau})",
          MAXBOXACC_V2_CAMDEPLOY: "MaxBoxAccV2 (camdeploy)", MAXBOXACC_V1: "MaxBoxAcc v1 (wsolevaluation)",
          MAXBOXACC_V2: "MaxBoxAccV2 (wsolevaluation)",
          **{maxboxacc_v2_name(i): f"MaxBoxAcc IoU {i / 100:.1f}, all contours" for i in WSOL_IOU_THRESHOLDS}}
"""Table labels; each says which definition its metric is."""


def _pct(value: object) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}"  # type: ignore[arg-type]


def _taus(report: EvalReport) -> str:
    return "/".join(f"{t:g}" for t in sorted(set(report.box_thresholds.values()))) or "?"


def label(key: str, report: EvalReport) -> str:
    """The table label of metric ``key``; GT-known's names its ``tau``."""
    return LABELS[key].format(tau=_taus(report))


def _ious(report: EvalReport) -> str:
    first = next(iter(report.curves.values()), None)
    return "/".join(str(i) for i in (first.iou_thresholds if first else WSOL_IOU_THRESHOLDS))


def protocol_description(report: EvalReport) -> str:
    """Which definitions the report's box metrics follow, in one line."""
    if report.protocol == WSOLEVALUATION:
        return f"wsolevaluation ({WSOL_REFERENCE} conventions; step {report.wsol_step:g}; IoU {_ious(report)})"
    return (f"camdeploy (GT-known loc at tau {_taus(report)}; MaxBoxAccV2 on the runtime's maps, step 0.01, "
            f"IoU {_ious(report)}; for published MaxBoxAcc figures use --protocol wsolevaluation)")


def format_table(report: EvalReport) -> str:
    names = list(report.metrics)
    keys = METRIC_KEYS[report.protocol]
    width = max(len("metric (%)"), *(len(label(k, report)) for k in keys)) + 2
    lines = [f"Protocol: {protocol_description(report)}",
             f"{'metric (%)':<{width}}" + "".join(f"{n:>16}" for n in names)]
    for key in keys:
        lines.append(f"{label(key, report):<{width}}" + "".join(f"{_pct(report.metrics[n][key]):>16}" for n in names))
    lines.append(f"{report.n_images} images in {report.seconds:.1f} s"
                 + (f"; {len(report.failed)} unreadable" if report.failed else "")
                 + (f"; {len(report.missing)} missing" if report.missing else ""))
    for name, agreement in report.agreement.items():
        box: dict = agreement["top1_box_iou"]  # type: ignore[assignment]
        worst = "-" if box["min"] is None else f"{box['min']:.4f}"
        lines.append(f"{name} against {names[0]}: top-1 identical {_pct(agreement['top1_identical'])} %, "
                     f"top-5 identical {_pct(agreement['top5_identical'])} %, CAM |diff| max "
                     f"{agreement['cam_max_abs_diff']:.2g} mean {agreement['cam_mean_abs_diff']:.2g}, top-1 box IoU "
                     f">= 0.99 on {_pct(box['fraction_ge_0.99'])} % (min {worst})")
        deltas: dict = agreement["metric_deltas"]  # type: ignore[assignment]
        lines.append("  metric deltas (points): " + ", ".join(
            f"{label(k, report)} {'-' if v is None else f'{100 * v:+.2f}'}" for k, v in deltas.items()))
    return "\n".join(lines)


def to_json(report: EvalReport, config: dict[str, dict[str, object]]) -> dict[str, object]:
    """``metrics``: the first backend's metrics plus its configuration; ``backends``: all of them;
    ``agreement``: each other backend against the first; ``boxacc_curves``: BoxAcc against CAM
    threshold per backend (``iou_30``... with every contour; under ``wsolevaluation`` also
    ``largest_contour``, MaxBoxAcc v1's rule)."""
    names = list(report.metrics)
    backends = {name: {**report.metrics[name], "n_images": report.n_images, **config[name],
                       "best_thresholds": report.best_thresholds(name)} for name in names}
    curves: dict[str, dict[str, object]] = {}
    for name, c in report.curves.items():
        curves[name] = {"cam_thresholds": c.cam_thresholds.tolist(),
                        **{f"iou_{i}": row.tolist() for i, row in zip(c.iou_thresholds, c.every_contour, strict=True)}}
        if c.largest_contour is not None:
            curves[name]["largest_contour"] = {f"iou_{i}": row.tolist()
                                               for i, row in zip(c.iou_thresholds, c.largest_contour, strict=True)}
    return {"protocol": report.protocol, "protocol_description": protocol_description(report),
            "metrics": backends[names[0]], "backends": backends, "agreement": report.agreement,
            "failed": [{"file": f, "reason": r} for f, r in report.failed], "missing": report.missing,
            "resized": [{"file": f, "decoded": list(decoded), "stated": list(stated)}
                        for f, decoded, stated in report.resized],
            "seconds": report.seconds, "boxacc_curves": curves}


def write_json(report: EvalReport, config: dict[str, dict[str, object]], path: Path) -> None:
    """The report as JSON at ``path``, written atomically."""
    atomic.write_json(path, to_json(report, config), label=f"--json {path}")


def plot(report: EvalReport, path: Path) -> bool:
    """BoxAcc against CAM threshold, per IoU threshold and backend; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4))
    styles = ["-", "--", ":", "-."]
    for j, (name, curves) in enumerate(report.curves.items()):
        for k, iou in enumerate(curves.iou_thresholds):
            ax.plot(curves.cam_thresholds, 100 * np.asarray(curves.every_contour[k]), styles[j % len(styles)],
                    color=f"C{k}", label=f"IoU {iou / 100:.1f} {name}")
        if curves.largest_contour is not None and 50 in curves.iou_thresholds:
            ax.plot(curves.cam_thresholds, 100 * np.asarray(curves.largest_contour[curves.iou_thresholds.index(50)]),
                    styles[j % len(styles)], color="black", linewidth=0.8,
                    label=f"IoU 0.5 largest contour (v1) {name}")
    ax.set_xlabel("CAM threshold")
    ax.set_ylabel("BoxAcc (%)")
    ax.set_title(f"BoxAcc against CAM threshold ({report.n_images} images, protocol {report.protocol})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic.write_checked(path, lambda temporary: fig.savefig(temporary, dpi=110, format="png"), label=f"--plot {path}")
    plt.close(fig)
    return True
