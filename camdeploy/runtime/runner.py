"""The runner interface: open, infer a batch, close; the same :class:`CamResult` from every backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType

import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec
from camdeploy.runtime.boxes import cam_box, cam_boxes
from camdeploy.runtime.images import Frame
from camdeploy.runtime.result import CamResult

BOX_PATHS = ("auto", "graph", "host")


def resolve_box_path(choice: str, has_graph_boxes: bool, graph_faster: bool, threshold_matches: bool,
                     model: str) -> str:
    """``graph`` or ``host`` for a ``--box-path`` choice; ``auto`` picks ``graph_faster``'s path."""
    if choice not in BOX_PATHS:
        raise CamdeployError(f"--box-path {choice!r}: expected one of {', '.join(BOX_PATHS)}")
    if choice == "graph" and not has_graph_boxes:
        raise CamdeployError(f"--box-path graph: MODEL {model} has no boxes output; re-export it with "
                             "`camdeploy export --boxes graph`")
    if choice == "graph" and not threshold_matches:
        raise CamdeployError("--box-path graph: the graph's boxes use the model's own threshold; drop "
                             "--box-threshold or use --box-path host")
    if choice == "auto":
        return "graph" if has_graph_boxes and graph_faster and threshold_matches else "host"
    return choice


class Runner(ABC):
    """Base class of all backends.

    Subclasses implement :meth:`open`, :meth:`close`, :meth:`class_weight` and :meth:`_run`, which
    maps a preprocessed batch to ``logits, classes, scores, cams`` (and ``features`` when asked),
    plus ``boxes`` and ``boxes_exact`` when the graph computes them. Otherwise boxes are computed
    here, once for every backend, by :func:`camdeploy.runtime.boxes.cam_boxes`; so are the boxes of
    any map the graph flags as not exact (a run broken by rounding, see
    :mod:`camdeploy.export.graph_boxes`).
    """

    name = "runner"
    precision = "fp32"
    """``fp32``, ``fp16`` or ``int8``: the precision of the model this runner runs."""
    execution = "fp32"
    """How it runs, for reports: the precision, or e.g. ``simulated int8`` (see each runner)."""
    box_path = "host"
    """Where boxes come from: ``graph`` (the model's boxes output) or ``host`` (the OpenCV rule)."""

    def __init__(self, spec: ModelSpec, box_threshold: float | None = None):
        self.spec = spec
        self.box_threshold = spec.box_threshold if box_threshold is None else box_threshold
        if not 0.0 <= self.box_threshold <= 1.0:
            raise CamdeployError(f"--box-threshold {self.box_threshold}: expected a value in [0, 1]")
        self.is_open = False

    @abstractmethod
    def open(self) -> None:
        """Load the model; called by ``with runner:``."""

    @abstractmethod
    def close(self) -> None:
        """Release the model."""

    @abstractmethod
    def _run(self, images: np.ndarray, features: bool) -> dict[str, np.ndarray]:
        """``images float32 [N, 3, S_h, S_w]`` -> ``logits, classes, scores, cams`` (+ ``features``)."""

    @abstractmethod
    def class_weight(self) -> np.ndarray:
        """The linear head's weight ``W float32 [K, C]``, for CAMs of classes outside the top T."""

    def describe(self) -> dict[str, str]:
        """What reports say about this runner: backend, precision, execution and box path."""
        return {"backend": self.name, "precision": self.precision, "execution": self.execution,
                "box_path": self.box_path}

    def infer(self, images: np.ndarray, features: bool = False) -> CamResult:
        """Run a preprocessed batch; boxes are in input-tensor pixels.

        With ``features``, the result also carries the feature map ``[N, C, h, w]``.
        """
        if not self.is_open:
            raise CamdeployError(f"{self.name} runner: call open() or use `with runner:` before infer()")
        expected = (3, self.spec.input_height, self.spec.input_width)
        if images.ndim != 4 or images.shape[1:] != expected or images.shape[0] == 0:
            raise CamdeployError(
                f"images: got shape {tuple(images.shape)}; expected [N, {', '.join(map(str, expected))}]"
                " with N >= 1, as prepared by camdeploy.runtime.images.prepare"
            )
        images = np.ascontiguousarray(images, dtype=np.float32)
        out = self._run(images, features)
        if "boxes" in out:
            boxes = np.array(out["boxes"], dtype=np.float32)
            for n, t in np.argwhere(~out["boxes_exact"].astype(bool)):
                boxes[n, t] = cam_box(out["cams"][n, t], self.box_threshold)
        else:
            boxes = cam_boxes(out["cams"], self.box_threshold)
        return CamResult(out["logits"], out["classes"].astype(np.int64), out["scores"], out["cams"],
                         boxes, out.get("features"))

    def infer_images(self, images: np.ndarray, frames: Sequence[Frame], features: bool = False) -> CamResult:
        """Run a preprocessed batch; boxes are mapped to original-image pixels through ``frames``."""
        if len(frames) != len(images):
            raise CamdeployError(f"frames: {len(frames)} frames for {len(images)} images; expected one each")
        result = self.infer(images, features)
        result.boxes = np.stack([frame.to_original(b) for frame, b in zip(frames, result.boxes, strict=True)])
        return result

    def __enter__(self) -> Runner:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
