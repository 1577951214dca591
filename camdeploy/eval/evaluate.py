"""Evaluate one or more runners on a localization dataset, in lockstep on the same images.

Each batch of images is read and prepared once and given to every runner, so that a comparison
(``camdeploy eval --compare``) sees identical inputs and needs no second pass.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.eval.box_modes import BOX_MODES, guesses
from camdeploy.eval.datasets import Dataset, Sample
from camdeploy.eval.metrics import (
    IOU_THRESHOLD,
    MaxBoxAcc,
    best_iou,
    classification_errors,
    edge_to_inclusive,
    iou_matrix,
    localization_errors,
    localization_hits,
)
from camdeploy.runtime.boxes import cam_box
from camdeploy.runtime.cams import host_cams
from camdeploy.runtime.images import Frame, load_image, prepare
from camdeploy.runtime.result import CamResult
from camdeploy.runtime.runner import Runner

METRIC_KEYS = ("top1_cls_err", "top5_cls_err", "top1_loc_err", "top5_loc_err", "gt_known_loc", "maxboxacc_v2")


@dataclass(frozen=True)
class EvalOptions:
    batch_size: int = 16
    box_mode: str = "paper"
    resize: str | None = None
    limit: int | None = None
    """Evaluate only the first ``limit`` images (for quick looks; report on the full set)."""
    progress: bool = True


@dataclass
class _BackendScores:
    """Everything one runner contributes, accumulated image by image."""

    weight: np.ndarray
    classes: list[np.ndarray] = field(default_factory=list)
    top1_boxes: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    loc_hits: list[np.ndarray] = field(default_factory=list)
    gt_known: list[bool] = field(default_factory=list)
    maxboxacc: MaxBoxAcc = field(default_factory=MaxBoxAcc)

    def add(self, result: CamResult, i: int, sample: Sample, frame: Frame, mode: str, threshold: float) -> None:
        classes, truth = result.classes[i], sample.boxes
        self.classes.append(classes)
        self.top1_boxes.append(result.boxes[i, 0])
        self.labels.append(sample.class_index)
        guess_classes, guess_boxes = guesses(mode, classes, result.cams[i], result.boxes[i])
        if mode != "paper":  # heuristic boxes are in the CAM's frame
            guess_boxes = frame.to_original(guess_boxes)
        self.loc_hits.append(localization_hits(guess_classes, edge_to_inclusive(guess_boxes), sample.class_index,
                                               truth))
        assert result.features is not None  # evaluation always asks for features
        size = result.cams.shape[2:]
        gt_cam = host_cams(result.features[i:i + 1], self.weight, np.array([[sample.class_index]]), size)[0, 0]
        gt_box = edge_to_inclusive(frame.to_original(cam_box(gt_cam, threshold)))
        self.gt_known.append(bool(best_iou(gt_box[None], truth)[0] >= IOU_THRESHOLD))
        self.maxboxacc.add(gt_cam, frame.to_tensor(truth))

    def metrics(self) -> dict[str, float | None]:
        classes, labels = np.stack(self.classes), np.array(self.labels)
        enough = classes.shape[1] >= 5
        top1_cls, top5_cls = classification_errors(classes, labels) if enough else (
            1.0 - float((classes[:, 0] == labels).mean()), None)
        hits = np.stack(self.loc_hits)
        top1_loc, top5_loc = localization_errors(hits) if hits.shape[1] >= 5 else (
            1.0 - float(hits[:, 0].mean()), None)
        return {"top1_cls_err": top1_cls, "top5_cls_err": top5_cls, "top1_loc_err": top1_loc,
                "top5_loc_err": top5_loc, "gt_known_loc": float(np.mean(self.gt_known)),
                "maxboxacc_v2": self.maxboxacc.value()}


@dataclass
class EvalReport:
    """Per-backend metrics, and agreement of every backend with the first (the baseline)."""

    metrics: dict[str, dict[str, float | None]]
    agreement: dict[str, dict[str, object]]
    curves: dict[str, np.ndarray]
    """BoxAcc ``[3 IoU thresholds, 100 CAM thresholds]`` per backend."""
    n_images: int
    failed: list[tuple[str, str]]
    missing: list[str]
    seconds: float


@dataclass
class _Agreement:
    top1_same: list[bool] = field(default_factory=list)
    top5_same: list[bool] = field(default_factory=list)
    cam_max: float = 0.0
    cam_sum: float = 0.0
    cam_count: int = 0
    box_iou: list[float] = field(default_factory=list)

    def add(self, base: CamResult, other: CamResult) -> None:
        same1 = base.classes[:, 0] == other.classes[:, 0]
        self.top1_same.extend(same1.tolist())
        self.top5_same.extend((np.sort(base.classes[:, :5], 1) == np.sort(other.classes[:, :5], 1)).all(1).tolist())
        if same1.any():
            diff = np.abs(base.cams[same1, 0] - other.cams[same1, 0])
            self.cam_max = max(self.cam_max, float(diff.max()))
            self.cam_sum += float(diff.sum())
            self.cam_count += diff.size
        for i in np.flatnonzero(same1):
            inclusive = edge_to_inclusive(np.stack([base.boxes[i, 0], other.boxes[i, 0]]))
            self.box_iou.append(float(iou_matrix(inclusive[:1], inclusive[1:])[0, 0]))

    def summary(self) -> dict[str, object]:
        ious = np.array(self.box_iou) if self.box_iou else np.zeros(0)
        quantiles = {f"p{q}": float(np.percentile(ious, q)) for q in (0, 1, 5, 50)} if ious.size else {}
        return {
            "top1_identical": float(np.mean(self.top1_same)),
            "top5_identical": float(np.mean(self.top5_same)),
            "cam_max_abs_diff": self.cam_max,
            "cam_mean_abs_diff": self.cam_sum / max(self.cam_count, 1),
            "top1_box_iou": {"n": int(ious.size), "min": float(ious.min()) if ious.size else None,
                             "mean": float(ious.mean()) if ious.size else None,
                             "fraction_ge_0.99": float((ious >= 0.99).mean()) if ious.size else None,
                             "fraction_ge_0.5": float((ious >= 0.5).mean()) if ious.size else None,
                             **quantiles},
        }


def _warn(message: str) -> None:
    print(f"camdeploy: warning: {message}", file=sys.stderr)


def evaluate(runners: Mapping[str, Runner], dataset: Dataset, options: EvalOptions = EvalOptions(),
             report: Callable[[str], None] = _warn) -> EvalReport:
    """Run every (open) runner on ``dataset``; the first runner is the comparison baseline."""
    if not runners:
        raise CamdeployError("evaluate: no backend to run")
    if options.box_mode not in BOX_MODES:
        raise CamdeployError(f"--box-mode {options.box_mode!r}: expected one of {', '.join(BOX_MODES)}")
    if options.batch_size < 1:
        raise CamdeployError(f"--batch-size {options.batch_size}: expected a positive number")
    names = list(runners)
    first = runners[names[0]]
    for name, runner in runners.items():
        if runner.spec.input_height != first.spec.input_height or runner.spec.input_width != first.spec.input_width \
                or runner.spec.normalization != first.spec.normalization:
            raise CamdeployError(f"--compare: {name} expects other inputs than {names[0]} (size or normalisation); "
                                 "compare variants of the same model")
    samples = dataset.samples[: options.limit] if options.limit else dataset.samples
    num_classes = len(first.spec.class_names)
    for sample in samples:
        if not 0 <= sample.class_index < num_classes:
            raise CamdeployError(f"--data {dataset.source}: {sample.path} has class {sample.class_index}, "
                                 f"outside the model's {num_classes} classes")
    for name in dataset.missing:
        report(f"missing image {name}")
    scores = {name: _BackendScores(runner.class_weight()) for name, runner in runners.items()}
    agreements = {name: _Agreement() for name in names[1:]}
    failed: list[tuple[str, str]] = []
    from tqdm import tqdm

    start = time.perf_counter()
    with tqdm(total=len(samples), unit="img", disable=not options.progress or None, file=sys.stderr) as bar:
        for begin in range(0, len(samples), options.batch_size):
            batch: list[tuple[Sample, np.ndarray, Frame]] = []
            for sample in samples[begin:begin + options.batch_size]:
                try:
                    tensor, frame = prepare(load_image(sample.path), first.spec, options.resize)
                except CamdeployError as exc:
                    failed.append((str(sample.path), str(exc)))
                    report(f"skipped {exc}")
                    continue
                batch.append((sample, tensor, frame))
            bar.update(min(options.batch_size, len(samples) - begin))
            if not batch:
                continue
            x = np.stack([b[1] for b in batch])
            frames = [b[2] for b in batch]
            results = {name: runner.infer_images(x, frames, features=True) for name, runner in runners.items()}
            for name, result in results.items():
                for i, (sample, _, frame) in enumerate(batch):
                    scores[name].add(result, i, sample, frame, options.box_mode, runners[name].box_threshold)
            for name, agreement in agreements.items():
                agreement.add(results[names[0]], results[name])
    seconds = time.perf_counter() - start
    n_images = len(samples) - len(failed)
    if n_images == 0:
        raise CamdeployError(f"--data {dataset.source}: no image could be read")
    metrics = {name: s.metrics() for name, s in scores.items()}
    summaries: dict[str, dict[str, object]] = {}
    for name, agreement in agreements.items():
        summary = agreement.summary()
        summary["metric_deltas"] = {key: (None if metrics[name][key] is None or metrics[names[0]][key] is None
                                          else metrics[name][key] - metrics[names[0]][key])  # type: ignore[operator]
                                    for key in METRIC_KEYS}
        summaries[name] = summary
    curves = {name: s.maxboxacc.accuracy() for name, s in scores.items()}
    return EvalReport(metrics, summaries, curves, n_images, failed, list(dataset.missing), seconds)
