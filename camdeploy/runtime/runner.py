"""The runner interface: open, infer a batch, close; the same :class:`CamResult` from every backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec
from camdeploy.runtime.boxes import cam_box, cam_boxes, check_threshold
from camdeploy.runtime.images import Frame
from camdeploy.runtime.map_boxes import exact_map_boxes
from camdeploy.runtime.result import CamResult

BOX_SOURCES = ("auto", "graph", "host")
"""Where boxes come from (``--box-source``): the graph's ``boxes`` output, the host rule, or the
faster of the two for the backend."""
OUTPUT_SETS = ("all", "boxes", "classes")
"""What :meth:`Runner.infer` returns: ``all`` (logits, classes, scores, CAMs, boxes), ``boxes``
(no CAMs: nothing of the 1 MB of maps per image is kept) or ``classes`` (logits, classes, scores:
the classifier alone, without the CAM head)."""


def resolve_box_source(choice: str, *, has_graph_boxes: bool, prefer_graph: bool, own_threshold: bool,
                       model: str | Path) -> str:
    """``graph`` or ``host`` for a ``--box-source`` choice.

    Args:
        choice: ``auto``, ``graph`` or ``host``.
        has_graph_boxes: whether the model computes boxes itself.
        prefer_graph: whether the graph's boxes are the faster on this backend (used by ``auto``).
        own_threshold: whether the run uses the model's own box threshold (the graph's boxes do).
        model: the model file, named in errors.
    """
    if choice not in BOX_SOURCES:
        raise CamdeployError(f"--box-source {choice!r}: expected one of {', '.join(BOX_SOURCES)}")
    if choice == "graph" and not has_graph_boxes:
        raise CamdeployError(f"--box-source graph: MODEL {model} has no boxes output; re-export it with "
                             "`camdeploy export --graph-boxes on`")
    if choice == "graph" and not own_threshold:
        raise CamdeployError("--box-source graph: the graph's boxes use the model's own threshold; drop "
                             "--box-threshold or use --box-source host")
    if choice == "auto":
        return "graph" if has_graph_boxes and prefer_graph and own_threshold else "host"
    return choice


class Runner(ABC):
    """Base class of all backends.

    Subclasses implement :meth:`open`, :meth:`close`, :meth:`class_weight` and :meth:`_run`, which
    maps a preprocessed batch to the graph's outputs for an output set of :data:`OUTPUT_SETS`.
    Boxes are computed here, once for every backend, by :func:`camdeploy.runtime.boxes.cam_boxes`,
    or from the raw low-resolution maps by :func:`camdeploy.runtime.map_boxes.map_boxes` when only
    boxes are asked for and the backend offers the maps, unless the backend returns the graph's
    ``boxes``; so are the boxes of any map the graph flags as not exact (see
    :mod:`camdeploy.export.graph_boxes`).
    """

    name = "runner"
    reference = False
    """True for the PyTorch reference: the baseline when backends are compared."""
    precision = "fp32"
    """``fp32``, ``fp16`` or ``int8``: the precision of the model this runner runs."""
    execution = "fp32"
    """How it runs, for reports: the precision, or e.g. ``simulated int8`` (see each runner)."""
    box_source = "host"
    """Where boxes come from once open: ``graph`` (the model's boxes output) or ``host``."""
    model_path: Path | None = None
    """The exported file this runner runs, if any (the PyTorch reference runs a module)."""
    box_workers = 1
    """Threads that box a batch's maps on the host (see :func:`~camdeploy.runtime.boxes.cam_boxes`)."""
    uses_low_res_maps = False
    """Whether ``infer(outputs="boxes")`` boxes the graph's raw low-resolution maps instead of its
    CAMs (see :mod:`camdeploy.runtime.map_boxes`); the ONNX Runtime runner can."""
    computes_on_cpu = True
    """Whether the model runs on the CPU's cores, which image decoding then shares (see
    :func:`camdeploy.runtime.pipeline.run_files`)."""

    def __init__(self, spec: ModelSpec, box_threshold: float | None = None):
        self.spec = spec
        self.box_threshold = spec.box_threshold if box_threshold is None else box_threshold
        check_threshold(self.box_threshold)
        self.is_open = False

    @abstractmethod
    def open(self) -> None:
        """Load the model; called by ``with runner:``."""

    @abstractmethod
    def close(self) -> None:
        """Release the model."""

    @abstractmethod
    def _run(self, images: np.ndarray, features: bool, outputs: str) -> dict[str, np.ndarray]:
        """``images float32 [N, 3, S_h, S_w]`` -> ``logits, classes, scores`` (+ ``features`` when
        asked); for ``all`` also ``cams``; for ``boxes`` ``cams``, or the raw ``maps [N, T, h, w]``
        (then :meth:`_head_cams` is needed); with graph boxes, ``boxes`` and ``boxes_exact`` (then
        ``cams`` only for ``all``)."""

    @abstractmethod
    def class_weight(self) -> np.ndarray:
        """The linear head's weight ``W float32 [K, C]``, for CAMs of classes outside the top T."""

    def box_sources(self) -> tuple[str, ...]:
        """The box sources this runner's model offers (``host``, and ``graph`` if it has boxes)."""
        return ("host",)

    def describe(self) -> dict[str, object]:
        """What reports say about this runner."""
        return {"backend": self.name, "model": str(self.model_path) if self.model_path else None,
                "precision": self.precision, "execution": self.execution, "box_source": self.box_source,
                "box_threshold": self.box_threshold}

    def infer(self, images: np.ndarray, features: bool = False, outputs: str = "all") -> CamResult:
        """Run a preprocessed batch; boxes are in input-tensor pixels.

        With ``features``, the result also carries the feature map ``[N, C, h, w]``; ``outputs``
        is one of :data:`OUTPUT_SETS`.
        """
        if not self.is_open:
            raise CamdeployError(f"{self.name} runner: call open() or use `with runner:` before infer()")
        if outputs not in OUTPUT_SETS:
            raise CamdeployError(f"outputs {outputs!r}: expected one of {', '.join(OUTPUT_SETS)}")
        expected = (3, self.spec.input_height, self.spec.input_width)
        if images.ndim != 4 or images.shape[1:] != expected or images.shape[0] == 0:
            raise CamdeployError(
                f"images: got shape {tuple(images.shape)}; expected [N, {', '.join(map(str, expected))}]"
                " with N >= 1, as prepared by camdeploy.runtime.images.prepare"
            )
        images = np.ascontiguousarray(images, dtype=np.float32)
        out = self._run(images, features, outputs)
        boxes = None
        if outputs != "classes":
            boxes = self._boxes(images, out)
        return CamResult(out["logits"], out["classes"].astype(np.int64), out["scores"],
                         out.get("cams") if outputs == "all" else None, boxes, out.get("features"))

    def _head_cams(self, maps: np.ndarray) -> np.ndarray:
        """The graph's own CAMs ``[k, 1, S_h, S_w]`` of raw maps ``[k, 1, h, w]``, for a runner
        whose :meth:`_run` returns ``maps`` (see :mod:`camdeploy.runtime.map_boxes`)."""
        raise NotImplementedError(f"{self.name} runner: returns no low-resolution maps")

    def _boxes(self, images: np.ndarray, out: dict[str, np.ndarray]) -> np.ndarray:
        if "maps" in out:  # the raw maps only: boxed without full-resolution CAMs where that is exact
            size = (self.spec.input_height, self.spec.input_width)
            return exact_map_boxes(out["maps"], size, self.box_threshold, self._head_cams, self.box_workers)
        if "boxes" not in out:
            return cam_boxes(out["cams"], self.box_threshold, self.box_workers)
        boxes = np.array(out["boxes"], dtype=np.float32)
        flagged = np.argwhere(~out["boxes_exact"].astype(bool))
        if len(flagged):  # rounding broke a run in the graph: box those maps on the host
            cams = out["cams"] if "cams" in out else self._run(images, False, "all")["cams"]
            for n, t in flagged:
                boxes[n, t] = cam_box(cams[n, t], self.box_threshold)
        return boxes

    def infer_images(self, images: np.ndarray, frames: Sequence[Frame], features: bool = False,
                     outputs: str = "all") -> CamResult:
        """Run a preprocessed batch; boxes are mapped to original-image pixels through ``frames``."""
        if len(frames) != len(images):
            raise CamdeployError(f"frames: {len(frames)} frames for {len(images)} images; expected one each")
        result = self.infer(images, features, outputs)
        if result.boxes is not None:
            result.boxes = np.stack([frame.to_original(b) for frame, b in zip(frames, result.boxes, strict=True)])
        return result

    def time_device(self, images: np.ndarray, repeats: int, warmup: int) -> list[float] | None:
        """Seconds per call measured by the device itself (CUDA events), or None when the backend
        has no device clock; ``camdeploy bench`` adds a row for it."""
        return None

    def __enter__(self) -> Runner:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
