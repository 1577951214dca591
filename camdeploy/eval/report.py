"""Presenting an :class:`~camdeploy.eval.evaluate.EvalReport`: terminal table, JSON, plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from camdeploy import atomic
from camdeploy.eval.evaluate import METRIC_KEYS, EvalReport
from camdeploy.eval.metrics import CAM_THRESHOLDS, MAXBOXACC_IOUS

LABELS = {"top1_cls_err": "top-1 cls err", "top5_cls_err": "top-5 cls err", "top1_loc_err": "top-1 loc err",
          "top5_loc_err": "top-5 loc err", "gt_known_loc": "GT-known loc", "maxboxacc_v2": "MaxBoxAccV2"}


def _pct(value: object) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}"  # type: ignore[arg-type]


def format_table(report: EvalReport) -> str:
    names = list(report.metrics)
    lines = [f"{'metric (%)':<16}" + "".join(f"{n:>16}" for n in names)]
    for key in METRIC_KEYS:
        lines.append(f"{LABELS[key]:<16}" + "".join(f"{_pct(report.metrics[n][key]):>16}" for n in names))
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
            f"{LABELS[k]} {'-' if v is None else f'{100 * v:+.2f}'}" for k, v in deltas.items()))
    return "\n".join(lines)


def to_json(report: EvalReport, config: dict[str, dict[str, object]]) -> dict[str, object]:
    """``metrics``: the first backend's metrics plus its configuration; ``backends``: all of them;
    ``agreement``: each other backend against the first."""
    names = list(report.metrics)
    backends = {name: {**report.metrics[name], "n_images": report.n_images, **config[name]} for name in names}
    return {"metrics": backends[names[0]], "backends": backends, "agreement": report.agreement,
            "failed": [{"file": f, "reason": r} for f, r in report.failed], "missing": report.missing,
            "seconds": report.seconds,
            "boxacc_curves": {name: {"cam_thresholds": CAM_THRESHOLDS.tolist(),
                                     **{f"iou_{int(100 * d)}": curve[k].tolist() for k, d in enumerate(MAXBOXACC_IOUS)}}
                              for name, curve in report.curves.items()}}


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
    for k, delta in enumerate(MAXBOXACC_IOUS):
        for j, (name, curve) in enumerate(report.curves.items()):
            ax.plot(CAM_THRESHOLDS, 100 * np.asarray(curve[k]), styles[j % len(styles)], color=f"C{k}",
                    label=f"IoU {delta:.1f} {name}")
    ax.set_xlabel("CAM threshold")
    ax.set_ylabel("BoxAcc (%)")
    ax.set_title(f"BoxAcc against CAM threshold ({report.n_images} images)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic.write_checked(path, lambda temporary: fig.savefig(temporary, dpi=110, format="png"), label=f"--plot {path}")
    plt.close(fig)
    return True
