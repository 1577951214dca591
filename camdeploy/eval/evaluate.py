"""Evaluate one or more runners on a localization dataset, in lockstep on the same images.

Each batch of images is read and prepared once and given to every runner, so that a comparison
(``camdeploy eval --compare``) sees identical inputs and needs no second pass. The baseline of the
comparison is the PyTorch reference when it is among the runners, else the first one.

Two protocols (``EvalOptions.protocol``, ``camdeploy eval --protocol``) decide the box metrics of
the ground-truth class's CAM; classification error and top-1/top-5 localization error (ILSVRC
rule, :mod:`camdeploy.eval.metrics`) are the same under both:

* ``camdeploy`` (the default): ``gt_known_loc_tau``, GT-known localization at the runner's box
  threshold ``tau`` (the CAM paper's measure), and ``maxboxacc_v2_camdeploy``, MaxBoxAccV2 with
  camdeploy's conventions (:class:`~camdeploy.eval.metrics.MaxBoxAcc`: the runtime's bilinear map,
  CAM thresholds 0.00..0.99, unclipped boxes, fractional ground truth).
* ``wsolevaluation``: ``maxboxacc_v1`` and ``maxboxacc_v2`` (with its terms
  ``maxboxacc_v2_iou30/50/70``), as clovaai/wsolevaluation computes them
  (:mod:`camdeploy.eval.wsol`: bicubic score map on the 224x224 stretched input, integer ground
  truth, clipped boxes, CAM thresholds ``np.arange(0, 1, wsol_step)``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camdeploy.backends import BACKENDS, RunnerOptions, make_runner
from camdeploy.console import warn
from camdeploy.errors import CamdeployError
from camdeploy.eval.datasets import Dataset, Sample
from camdeploy.eval.loc_rules import LOC_RULES, guesses
from camdeploy.eval.metrics import (
    GT_KNOWN_LOC_TAU,
    IOU_THRESHOLD,
    MAXBOXACC_V2_CAMDEPLOY,
    MaxBoxAcc,
    best_iou,
    classification_errors,
    edge_to_inclusive,
    localization_errors,
    localization_hits,
    paired_iou,
)
from camdeploy.eval.wsol import (
    MAXBOXACC_V1,
    MAXBOXACC_V2,
    V1_IOU,
    WSOL_FRAME,
    WSOL_IOU_THRESHOLDS,
    WSOL_STEP,
    WsolBoxAccuracy,
    maxboxacc_v2_name,
    wsol_ground_truth,
    wsol_scoremap,
)
from camdeploy.graph import calibration_files
from camdeploy.runtime.batches import BatchOptions, image_batches
from camdeploy.runtime.boxes import cam_box
from camdeploy.runtime.cams import class_maps, host_cams
from camdeploy.runtime.images import Frame
from camdeploy.runtime.result import CamResult
from camdeploy.runtime.runner import Runner
from camdeploy.versions import versions

CAMDEPLOY = "camdeploy"
WSOLEVALUATION = "wsolevaluation"
PROTOCOLS = (CAMDEPLOY, WSOLEVALUATION)
WSOL_MAX_THRESHOLDS = 100_000
"""The most CAM thresholds ``--wsol-step`` may ask for (a step of 0.00001): a guard against typos."""

ERROR_KEYS = ("top1_cls_err", "top5_cls_err", "top1_loc_err", "top5_loc_err")
"""Classification and top-1/top-5 localization error: the same under both protocols."""
METRIC_KEYS = {
    CAMDEPLOY: (*ERROR_KEYS, GT_KNOWN_LOC_TAU, MAXBOXACC_V2_CAMDEPLOY),
    WSOLEVALUATION: (*ERROR_KEYS, MAXBOXACC_V1, MAXBOXACC_V2, *(maxboxacc_v2_name(i) for i in WSOL_IOU_THRESHOLDS)),
}
"""The metrics of each protocol: the table's rows and the deltas of ``--compare``."""


@dataclass(frozen=True)
class EvalOptions:
    batch_size: int = 16
    loc_rule: str = "paper"
    """How CAMs become localization guesses: ``paper`` or ``ilsvrc`` (:mod:`camdeploy.eval.loc_rules`)."""
    protocol: str = CAMDEPLOY
    """The box metrics: ``camdeploy`` or ``wsolevaluation`` (see the module docstring)."""
    wsol_step: float = WSOL_STEP
    """CAM threshold step of the ``wsolevaluation`` protocol (its ``cam_curve_interval``); the
    ``camdeploy`` protocol's thresholds are fixed (0.00..0.99) and it ignores this."""
    resize: str | None = None
    limit: int | None = None
    """Evaluate only the first ``limit`` images (for quick looks; report on the full set)."""
    progress: bool = True
    max_pixels: int | None = None
    prefetch: int = 2


@dataclass(frozen=True)
class BoxAccCurves:
    """BoxAcc against CAM threshold of one backend, under the report's protocol."""

    cam_thresholds: np.ndarray
    """``float64 [T]``: 0.00..0.99 (``camdeploy``) or ``np.arange(0, 1, wsol_step)`` (``wsolevaluation``)."""
    iou_thresholds: tuple[int, ...]
    """IoU thresholds in percent: one row of each curve per threshold."""
    every_contour: np.ndarray
    """``float64 [I, T]``: the boxes of every contour, the rule of the protocol's MaxBoxAccV2."""
    largest_contour: np.ndarray | None = None
    """``float64 [I, T]``: the largest contour's box, the rule of MaxBoxAcc v1 (``wsolevaluation`` only)."""

    def best_thresholds(self, v2_key: str) -> dict[str, float]:
        """The first CAM threshold that reaches each MaxBoxAcc term, by the term's name:
        ``maxboxacc_v1`` (with a largest-contour curve) and ``{v2_key}_iou{delta}``."""
        def first_best(row: np.ndarray) -> float:
            return float(self.cam_thresholds[int(np.argmax(row))])

        best = {}
        if self.largest_contour is not None:
            best[MAXBOXACC_V1] = first_best(self.largest_contour[self.iou_thresholds.index(V1_IOU)])
        best.update({f"{v2_key}_iou{iou}": first_best(row)
                     for iou, row in zip(self.iou_thresholds, self.every_contour, strict=True)})
        return best


@dataclass
class _BackendScores:
    """Everything one runner contributes, accumulated image by image."""

    weight: np.ndarray
    box_threshold: float
    """``tau`` of the runner's box rule: its boxes, and ``gt_known_loc_tau``."""
    protocol: str = CAMDEPLOY
    wsol_step: float = WSOL_STEP
    classes: list[np.ndarray] = field(default_factory=list)
    top1_boxes: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    loc_hits: list[np.ndarray] = field(default_factory=list)
    gt_known: list[bool] = field(default_factory=list)
    maxboxacc: MaxBoxAcc | None = None
    """The ``camdeploy`` protocol's MaxBoxAccV2."""
    wsol: WsolBoxAccuracy | None = None
    """The ``wsolevaluation`` protocol's MaxBoxAcc v1 and MaxBoxAccV2."""

    def __post_init__(self) -> None:
        if self.protocol == WSOLEVALUATION:
            self.wsol = WsolBoxAccuracy(step=self.wsol_step)
        else:
            self.maxboxacc = MaxBoxAcc()

    def add(self, result: CamResult, i: int, sample: Sample, frame: Frame, rule: str) -> None:
        if result.cams is None or result.boxes is None or result.features is None:
            raise CamdeployError("evaluate: a runner returned no maps, boxes or features (infer with outputs 'all')")
        classes, truth = result.classes[i], sample.boxes  # [M, 4] inclusive, in the stated frame
        stated = sample.size or (frame.width, frame.height)  # (W, H) the annotations' boxes are in
        if stated != (frame.width, frame.height):  # stored at another size: the same image, resized whole
            sx, sy = frame.width / stated[0], frame.height / stated[1]
            truth = truth * np.array([sx, sy, sx, sy])  # to the decoded image's pixels
        self.classes.append(classes)
        self.top1_boxes.append(result.boxes[i, 0])
        self.labels.append(sample.class_index)
        guess_classes, guess_boxes = guesses(rule, classes, result.cams[i], result.boxes[i])
        if rule != "paper":  # heuristic boxes are in the CAM's frame
            guess_boxes = frame.to_original(guess_boxes)
        self.loc_hits.append(localization_hits(guess_classes, edge_to_inclusive(guess_boxes), sample.class_index,
                                               truth))
        label = np.array([[sample.class_index]])
        if self.wsol is not None:
            # wsolevaluation's own score map (bicubic, from the raw low-resolution CAM) and its integer
            # ground truth, scaled from the original image to the stretched 224x224 input.
            raw = class_maps(result.features[i:i + 1], self.weight, label)[0, 0]  # [h, w]
            try:
                # from the stated frame, as wsolevaluation's resize_bbox does with image_sizes.txt
                frame_truth = wsol_ground_truth(sample.boxes, (stated[1], stated[0]))
            except CamdeployError as exc:
                raise CamdeployError(f"--protocol wsolevaluation: {sample.path}: {exc}") from None
            self.wsol.add(wsol_scoremap(raw, WSOL_FRAME), frame_truth)
        if self.maxboxacc is not None:
            size = result.cams.shape[2:]
            gt_cam = host_cams(result.features[i:i + 1], self.weight, label, size)[0, 0]  # the runtime's bilinear map
            gt_box = edge_to_inclusive(frame.to_original(cam_box(gt_cam, self.box_threshold)))
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
        out: dict[str, float | None] = {"top1_cls_err": top1_cls, "top5_cls_err": top5_cls,
                                        "top1_loc_err": top1_loc, "top5_loc_err": top5_loc}
        if self.wsol is not None:
            out.update(self.wsol.metrics())
        if self.maxboxacc is not None:
            out[GT_KNOWN_LOC_TAU] = float(np.mean(self.gt_known))
            out[MAXBOXACC_V2_CAMDEPLOY] = self.maxboxacc.value()
        return out

    def curves(self) -> BoxAccCurves:
        if self.wsol is not None:
            return BoxAccCurves(self.wsol.thresholds.copy(), self.wsol.iou_thresholds, self.wsol.curves(True),
                                self.wsol.curves(False))
        if self.maxboxacc is None:
            raise CamdeployError(f"evaluate: protocol {self.protocol!r} has no BoxAcc curves")
        return BoxAccCurves(self.maxboxacc.cam_thresholds.copy(),
                            tuple(round(100 * d) for d in self.maxboxacc.iou_thresholds), self.maxboxacc.accuracy())


@dataclass
class EvalReport:
    """Per-backend metrics, and agreement of every backend with the first (the baseline)."""

    metrics: dict[str, dict[str, float | None]]
    """Per backend, ``METRIC_KEYS[protocol]`` (``wsolevaluation`` also gives ``maxboxacc_v2_iou{delta}``)."""
    agreement: dict[str, dict[str, object]]
    curves: dict[str, BoxAccCurves]
    """BoxAcc against CAM threshold, per backend."""
    n_images: int
    failed: list[tuple[str, str]]
    missing: list[str]
    seconds: float
    protocol: str = CAMDEPLOY
    wsol_step: float | None = None
    """The CAM threshold step of the ``wsolevaluation`` protocol; None under ``camdeploy``."""
    box_thresholds: dict[str, float] = field(default_factory=dict)
    """``tau`` of each backend's box rule, where ``gt_known_loc_tau`` is measured."""
    resized: list[tuple[str, tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    """Images stored at another size than their annotations state: ``(file, (W, H) decoded, (W, H)
    stated)``. Their ground truth is scaled from the stated size (see :func:`evaluate`)."""

    def best_thresholds(self, name: str) -> dict[str, float]:
        """Backend ``name``'s first CAM threshold reaching each MaxBoxAcc term (see :class:`BoxAccCurves`)."""
        return self.curves[name].best_thresholds(MAXBOXACC_V2 if self.protocol == WSOLEVALUATION
                                                 else MAXBOXACC_V2_CAMDEPLOY)


@dataclass
class _Agreement:
    top1_same: list[bool] = field(default_factory=list)
    top5_same: list[bool] = field(default_factory=list)
    cam_max: float = 0.0
    cam_sum: float = 0.0
    cam_count: int = 0
    box_iou: list[float] = field(default_factory=list)

    def add(self, base: CamResult, other: CamResult) -> None:
        if base.cams is None or other.cams is None or base.boxes is None or other.boxes is None:
            raise CamdeployError("evaluate: a runner returned no maps or boxes (infer with outputs 'all')")
        same1 = base.classes[:, 0] == other.classes[:, 0]
        self.top1_same.extend(same1.tolist())
        self.top5_same.extend((np.sort(base.classes[:, :5], 1) == np.sort(other.classes[:, :5], 1)).all(1).tolist())
        if same1.any():
            diff = np.abs(base.cams[same1, 0] - other.cams[same1, 0])
            self.cam_max = max(self.cam_max, float(diff.max()))
            self.cam_sum += float(diff.sum())
            self.cam_count += diff.size
        self.box_iou.extend(paired_iou(base.boxes[same1, 0], other.boxes[same1, 0]).tolist())

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


def _baseline_first(runners: Mapping[str, Runner]) -> list[str]:
    """Runner names, the PyTorch reference (if any) first: the baseline of comparisons."""
    return sorted(runners, key=lambda name: not runners[name].reference)


def evaluate(runners: Mapping[str, Runner], dataset: Dataset, options: EvalOptions = EvalOptions(),
             report: Callable[[str], None] = warn) -> EvalReport:
    """Run every (open) runner on ``dataset``; the reference runner, else the first, is the baseline."""
    if not runners:
        raise CamdeployError("evaluate: no backend to run")
    if options.loc_rule not in LOC_RULES:
        raise CamdeployError(f"--loc-rule {options.loc_rule!r}: expected one of {', '.join(LOC_RULES)}")
    names = _baseline_first(runners)
    first = runners[names[0]]
    for name, runner in runners.items():
        if runner.spec.input_height != first.spec.input_height or runner.spec.input_width != first.spec.input_width \
                or runner.spec.normalization != first.spec.normalization:
            raise CamdeployError(f"--compare: {name} expects other inputs than {names[0]} (size or normalisation); "
                                 "compare variants of the same model")
    check_protocol(options, (first.spec.input_height, first.spec.input_width), options.resize or first.spec.resize)
    samples = dataset.samples[: options.limit] if options.limit else dataset.samples
    num_classes = len(first.spec.class_names)
    for sample in samples:
        if not 0 <= sample.class_index < num_classes:
            raise CamdeployError(f"--data {dataset.source}: {sample.path} has class {sample.class_index}, "
                                 f"outside the model's {num_classes} classes")
    for name in dataset.missing:
        report(f"missing image {name}")
    for note in dataset.notes:
        report(note)
    resized: list[tuple[str, tuple[int, int], tuple[int, int]]] = []
    scores = {name: _BackendScores(runners[name].class_weight(), runners[name].box_threshold, options.protocol,
                                   options.wsol_step) for name in names}
    agreements = {name: _Agreement() for name in names[1:]}
    failed: list[tuple[str, str]] = []
    from tqdm import tqdm

    def on_skip(sample: Sample, reason: str) -> None:
        failed.append((str(sample.path), reason))
        report(f"skipped {reason}")

    start = time.perf_counter()
    loader = BatchOptions(batch_size=options.batch_size, resize=options.resize, max_pixels=options.max_pixels,
                          prefetch=options.prefetch)
    with tqdm(total=len(samples), unit="img", disable=not options.progress or None) as bar:
        counted_failures = 0
        for batch in image_batches(samples, first.spec, loader, path_of=lambda sample: sample.path, on_skip=on_skip):
            results = {name: runners[name].infer_images(batch.tensors, batch.frames, features=True) for name in names}
            for sample, frame in zip(batch.items, batch.frames, strict=True):
                if sample.size is not None and sample.size != (frame.width, frame.height):
                    resized.append((str(sample.path), (frame.width, frame.height), sample.size))
            for name, result in results.items():
                for i, (sample, frame) in enumerate(zip(batch.items, batch.frames, strict=True)):
                    scores[name].add(result, i, sample, frame, options.loc_rule)
            for name, agreement in agreements.items():
                agreement.add(results[names[0]], results[name])
            failures_now = len(failed)
            bar.update(len(batch.items) + failures_now - counted_failures)
            counted_failures = failures_now
        bar.update(len(samples) - bar.n)
    seconds = time.perf_counter() - start
    if resized:
        path, (w, h), (sw, sh) = resized[0]
        report(f"{len(resized)} of {len(samples)} images are stored at another size than their annotations state "
               f"(first: {path}, {w}x{h}, stated {sw}x{sh}): their ground truth is scaled from the stated size, as "
               "wsolevaluation does with image_sizes.txt (each image taken to be the stated one resized whole); the "
               "JSON lists them under 'resized'")
    n_images = len(samples) - len(failed)
    if n_images == 0:
        raise CamdeployError(f"--data {dataset.source}: no image could be read")
    metrics = {name: s.metrics() for name, s in scores.items()}
    summaries: dict[str, dict[str, object]] = {}
    for name, agreement in agreements.items():
        summary = agreement.summary()
        summary["metric_deltas"] = {key: (None if metrics[name][key] is None or metrics[names[0]][key] is None
                                          else metrics[name][key] - metrics[names[0]][key])  # type: ignore[operator]
                                    for key in METRIC_KEYS[options.protocol]}
        summaries[name] = summary
    curves = {name: s.curves() for name, s in scores.items()}
    return EvalReport(metrics, summaries, curves, n_images, failed, list(dataset.missing), seconds,
                      protocol=options.protocol,
                      wsol_step=options.wsol_step if options.protocol == WSOLEVALUATION else None,
                      box_thresholds={name: runners[name].box_threshold for name in names}, resized=resized)


def check_protocol(options: EvalOptions, input_hw: tuple[int, int], resize: str) -> None:
    """Refuse a protocol that is unknown, or that cannot hold for this model and resize.

    wsolevaluation stretches the whole image to 224x224 and scales the ground truth by
    ``224 / W`` and ``224 / H``: its figures are defined only for that input.
    """
    if options.protocol not in PROTOCOLS:
        raise CamdeployError(f"--protocol {options.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if options.protocol != WSOLEVALUATION:
        return
    step = options.wsol_step
    if not 0.0 < step <= 1.0 or math.ceil(1.0 / step) > WSOL_MAX_THRESHOLDS:
        raise CamdeployError(f"--wsol-step {step!r}: expected a CAM threshold step in (0, 1] giving at most "
                             f"{WSOL_MAX_THRESHOLDS} thresholds, e.g. {WSOL_STEP} (wsolevaluation's default) or 0.01")
    if resize != "stretch":
        raise CamdeployError(f"--protocol wsolevaluation with --resize {resize}: wsolevaluation stretches the whole "
                             "image to 224x224 and scales the ground truth to it; use --resize stretch")
    if tuple(input_hw) != WSOL_FRAME:
        raise CamdeployError(f"--protocol wsolevaluation: the model's input is {input_hw[0]}x{input_hw[1]}; "
                             "wsolevaluation's figures are defined on a 224x224 input (export the model at 224x224, "
                             "or use --protocol camdeploy)")


def refuse_calibration_images(runners: Mapping[str, Runner], dataset: Dataset) -> None:
    """Refuse to evaluate a quantized model on the images of its own calibration draw."""
    from camdeploy.calibration.data import refuse_overlap

    for name, runner in runners.items():
        if runner.model_path is not None:
            try:
                refuse_overlap([Path(p) for p in calibration_files(runner.model_path)],
                               [s.path for s in dataset.samples])
            except CamdeployError as exc:
                raise CamdeployError(f"{name}: {exc}") from None


def evaluate_models(model: str | Path, entries: Sequence[str], dataset: Dataset, options: EvalOptions = EvalOptions(),
                    runner_options: RunnerOptions = RunnerOptions()) -> tuple[EvalReport, dict[str, dict[str, object]]]:
    """``camdeploy eval``: run each entry (a backend name for ``model``, or another ``.onnx`` file,
    run on ONNX Runtime) on ``dataset``; returns the report and each backend's configuration."""
    if len(set(entries)) != len(entries):
        raise CamdeployError(f"--compare {' '.join(entries)}: a backend is named twice")
    runners: dict[str, Runner] = {}
    for entry in entries:
        if entry in BACKENDS:
            runners[entry] = make_runner(entry, model, runner_options.for_backend(entry))
        elif entry.endswith(".onnx"):
            runners[Path(entry).name] = make_runner("ort", entry, runner_options.for_backend("ort"))
        else:
            raise CamdeployError(f"--compare {entry}: expected {', '.join(BACKENDS)} or a path ending in .onnx")
    refuse_calibration_images(runners, dataset)
    opened: list[Runner] = []
    try:
        for runner in runners.values():
            runner.open()
            opened.append(runner)
        report = evaluate(runners, dataset, options)
    finally:
        for runner in opened:
            runner.close()
    common: dict[str, object] = {"loc_rule": options.loc_rule, "protocol": options.protocol}
    if options.protocol == WSOLEVALUATION:
        common.update({"wsol_step": options.wsol_step, "iou_thresholds": list(WSOL_IOU_THRESHOLDS)})
    common["versions"] = versions()
    config = {name: {**runners[name].describe(), **common,
                     "input_size": [runners[name].spec.input_height, runners[name].spec.input_width]}
              for name in _baseline_first(runners)}
    return report, config
