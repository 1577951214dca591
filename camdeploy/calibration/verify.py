"""Check a quantized model against its float original before ``camdeploy calibrate`` reports success.

Both models run on images held back from the calibration draw (never used for ranges), with the
runner ``camdeploy run`` would use on this machine: ONNX Runtime's CPU provider and the INT8
execution it chooses here (:mod:`camdeploy.runtime.int8`). What is compared is what a user sees:
the top-1 class, and the top-1 box where the classes agree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.eval.metrics import paired_iou
from camdeploy.graph import VERIFICATION_KEY
from camdeploy.metadata import ModelSpec
from camdeploy.runtime.batches import BatchOptions, image_batches
from camdeploy.runtime.cpu import cpu_features
from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

DEFAULT_MIN_AGREEMENT = 0.9


@dataclass(frozen=True)
class Agreement:
    """How a quantized model agrees with its float original on held-back images."""

    images: int
    top1_agreement: float
    """Fraction of images whose top-1 class is the same."""
    mean_box_iou: float
    """Mean IoU of the top-1 boxes over the images whose top-1 class is the same."""
    execution: str
    """How the quantized model ran (``int8 kernels (U8S8)``, ``simulated int8``, ...)."""
    isa: str
    files: tuple[str, ...] = ()

    def describe(self) -> str:
        return (f"top-1 agreement {100 * self.top1_agreement:.1f} % on {self.images} held-back images, mean top-1 box "
                f"IoU {self.mean_box_iou:.3f} ({self.execution}, {self.isa} CPU)")

    def as_props(self) -> dict[str, str]:
        summary = {"images": self.images, "top1_agreement": round(self.top1_agreement, 4),
                   "mean_box_iou": round(self.mean_box_iou, 4), "execution": self.execution, "isa": self.isa,
                   "files": list(self.files)}
        return {VERIFICATION_KEY: json.dumps(summary)}


def compare_models(reference: str | Path, candidate: str | Path, paths: Sequence[Path], spec: ModelSpec,
                   batch_size: int = 16) -> Agreement:
    """Run both models on ``paths`` (unreadable files are left out) and measure their agreement."""
    same: list[np.ndarray] = []
    ious: list[float] = []
    loader = image_batches(paths, spec, BatchOptions(batch_size=batch_size), on_skip=lambda path, reason: None)
    with OnnxRuntimeRunner(reference, spec=spec, outputs="boxes") as base, \
            OnnxRuntimeRunner(candidate, spec=spec, outputs="boxes") as quantized:
        for batch in loader:  # (an unreadable image is left out; the draw reported it)
            x = batch.tensors
            a, b = base.infer(x, outputs="boxes"), quantized.infer(x, outputs="boxes")
            if a.boxes is None or b.boxes is None:
                raise CamdeployError("calibration verification: a runner returned no boxes")
            agree = a.classes[:, 0] == b.classes[:, 0]
            same.append(agree)
            ious.extend(paired_iou(a.boxes[agree, 0], b.boxes[agree, 0]).tolist())
        execution = quantized.execution
    if not same:
        raise CamdeployError("calibration verification: none of the held-back images could be read")
    agreed = np.concatenate(same)
    return Agreement(len(agreed), float(agreed.mean()), float(np.mean(ious)) if ious else 0.0,
                     execution, cpu_features().isa, tuple(str(p.resolve()) for p in paths))


def refuse_disagreement(agreement: Agreement, minimum: float) -> None:
    """Raise, naming the cause and the remedies, when top-1 agreement is below ``minimum``."""
    if agreement.top1_agreement >= minimum:
        return
    raise CamdeployError(
        f"the INT8 model keeps the float model's top-1 class on only {100 * agreement.top1_agreement:.1f} % of "
        f"{agreement.images} held-back images (--min-agreement {minimum:g}), run as {agreement.execution} on this "
        f"{agreement.isa} CPU: the quantization loses too much. Try another --method (entropy, percentile), more or "
        "more representative --images, or --target tensorrt; --force writes the model anyway"
    )
