"""Export a GAP classifier with its CAM head to one self-contained, verified ONNX file."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import camdeploy
from camdeploy.atomic import check_onnx_output, save_onnx
from camdeploy.errors import CamdeployError
from camdeploy.export.cam_head import OUTPUT_NAMES, CamModel
from camdeploy.export.contract import find_contract
from camdeploy.export.graph_boxes import (
    TENSORRT_TOPK_LIMIT,
    BandLayout,
    add_graph_boxes,
    node_count,
    upsample_bands,
)
from camdeploy.graph import BOX_OUTPUTS, INPUT_NAME
from camdeploy.lock import hold_file
from camdeploy.metadata import RESIZE_MODES, ModelSpec, Normalization
from camdeploy.runtime.boxes import cam_boxes, check_threshold
from camdeploy.runtime.onnxruntime_runner import import_onnxruntime

UNIT_NORMALIZATION = Normalization((1 / 255,) * 3, (0.0,) * 3)  # type: ignore[arg-type]
OPSET = 18
GRAPH_BOX_CHOICES = ("auto", "on", "off")
"""``--graph-boxes``: whether the exported graph computes boxes itself."""


@dataclass(frozen=True)
class ExportOptions:
    """How to export; the defaults are the CAM paper's (top-5 maps, box threshold 0.2)."""

    input_size: tuple[int, int] = (224, 224)
    normalization: Normalization = UNIT_NORMALIZATION
    class_names: tuple[str, ...] | None = None
    """K names; default ``class 0`` ... ``class K-1``."""
    topk: int | None = None
    """T; default ``min(5, K)``."""
    box_threshold: float = 0.2
    source_model: str = "custom"
    resize: str = "stretch"
    feature_module: str | None = None
    linear_module: str | None = None
    pooling: str | None = None
    """``avg`` or ``max``; detected when None."""
    graph_boxes: str = "auto"
    """``on``: add the box rule to the graph (outputs ``boxes``, ``boxes_exact``); ``off``: leave
    boxes to the runtime's OpenCV rule; ``auto``: on when TensorRT can build it (at most 3840 row
    segments per map), else off."""
    verify: bool = True
    verify_batches: tuple[int, ...] = (1, 3)
    opset: int = OPSET


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how well ONNX Runtime matched PyTorch."""

    path: Path
    spec: ModelSpec
    contract: str
    max_abs_error: dict[str, float] = field(default_factory=dict)
    graph_boxes: bool = False
    """Whether the graph computes boxes (outputs ``boxes`` and ``boxes_exact``)."""
    boxes_note: str = ""


# Verification tolerances, fp32: logits and features in units of their magnitude, cams absolute.
TOLERANCE = {"logits": 1e-4, "features": 1e-4, "scores": 1e-5, "cams": 1e-3}


def _validate(options: ExportOptions, num_classes: int) -> None:
    if options.topk is not None and not 1 <= options.topk <= num_classes:
        raise CamdeployError(f"--topk {options.topk}: expected 1..{num_classes} (the model's classes)")
    check_threshold(options.box_threshold)
    if options.graph_boxes not in GRAPH_BOX_CHOICES:
        raise CamdeployError(f"--graph-boxes {options.graph_boxes!r}: expected one of {', '.join(GRAPH_BOX_CHOICES)}")
    if options.resize not in RESIZE_MODES:
        raise CamdeployError(f"--resize {options.resize!r}: expected one of {', '.join(RESIZE_MODES)}")
    if options.class_names is not None and len(options.class_names) != num_classes:
        raise CamdeployError(
            f"--labels: {len(options.class_names)} names for a model with {num_classes} classes; "
            "expected one name per class"
        )


def _to_onnx(cam_model: CamModel, options: ExportOptions) -> bytes:
    example = torch.zeros(2, 3, *options.input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter reports progress on stdout and notes on the "torch.onnx" logger; keep the
    # CLI's output to what concerns the user.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                cam_model, (example,), None, input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES), opset_version=options.opset,
                dynamic_shapes=({0: batch},), dynamo=True, verbose=False,
            )
        except Exception as exc:
            if _interrupted(exc):  # torch wraps Ctrl-C in its own error, which asks for a bug report
                raise KeyboardInterrupt from None
            raise CamdeployError(f"torch.onnx.export failed: {exc}") from exc
        finally:
            logger.setLevel(level)
    return program.model_proto.SerializeToString()  # type: ignore[union-attr]


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` was caused, at any depth, by a KeyboardInterrupt."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _verify(path: Path, cam_model: CamModel, options: ExportOptions, graph_boxes: bool) -> dict[str, float]:
    """Run the written file on ONNX Runtime and compare every output with PyTorch."""
    import onnx

    ort = import_onnxruntime()

    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1234)
    worst = dict.fromkeys(("logits", "features", "scores", "cams"), 0.0)
    for batch in options.verify_batches:
        x = torch.randn(batch, 3, *options.input_size, generator=generator)
        with torch.inference_mode():
            expected = dict(zip(OUTPUT_NAMES, (t.numpy() for t in cam_model(x)), strict=True))
        got = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()}),
                       strict=True))
        # Classes may swap where two probabilities are within rounding of each other: accept a
        # different class only if PyTorch gives it the same probability, and compare the maps
        # only where both runtimes picked the same class.
        same = got["classes"] == expected["classes"]
        logits = expected["logits"].astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        swapped = np.abs(np.take_along_axis(probs, got["classes"], axis=1) - expected["scores"])
        if (swapped[~same] > TOLERANCE["scores"]).any():
            raise CamdeployError(
                f"verification failed: ONNX Runtime's top classes differ from PyTorch's at batch "
                f"{batch}: {got['classes'].tolist()} vs {expected['classes'].tolist()}"
            )
        for name in ("logits", "features", "scores", "cams"):
            diff = np.abs(got[name].astype(np.float64) - expected[name])
            if name == "cams":
                diff = diff[same]
            scale = 1.0 + float(np.abs(expected[name]).max()) if name in ("logits", "features") else 1.0
            error = float(diff.max()) if diff.size else 0.0
            worst[name] = max(worst[name], error)
            if error > TOLERANCE[name] * scale:
                raise CamdeployError(
                    f"verification failed: output {name!r} differs between ONNX Runtime and PyTorch "
                    f"by up to {error:.3g} at batch {batch} (tolerance {TOLERANCE[name] * scale:.3g})"
                )
    if graph_boxes:
        worst["boxes"] = _verify_boxes(session, options)
    return worst


def _verify_boxes(session: object, options: ExportOptions) -> float:
    """The graph's boxes must equal the host rule's on the graph's own CAMs (where it says exact)."""
    generator = torch.Generator().manual_seed(99)
    x = torch.randn(4, 3, *options.input_size, generator=generator).numpy()
    cams, boxes, exact = session.run(["cams", *BOX_OUTPUTS], {INPUT_NAME: x})  # type: ignore[attr-defined]
    host = cam_boxes(cams, options.box_threshold)
    wrong = ~(boxes == host).all(axis=-1) & exact
    if wrong.any():
        n, t = np.argwhere(wrong)[0]
        raise CamdeployError(f"verification failed: the graph's box {boxes[n, t].tolist()} differs from the host "
                             f"rule's {host[n, t].tolist()} (image {n}, class rank {t})")
    return float(np.abs(boxes - host)[exact].max(initial=0.0))


def export_onnx(model: torch.nn.Module, output: str | os.PathLike[str],
                options: ExportOptions = ExportOptions()) -> ExportReport:
    """Export ``model`` with its CAM head to ``output``, atomically, and verify it.

    The file is written to a temporary name beside ``output``, checked with the ONNX checker,
    compared against PyTorch on ONNX Runtime, and only then renamed to ``output``: a failure at
    any step leaves no file behind (and an existing ``output`` untouched); missing parent
    folders are created first. The export holds ``output``'s lock (:mod:`camdeploy.lock`) from start
    to end: a second writer of the same file is refused.
    """
    output = Path(output)
    check_onnx_output(output)
    with hold_file(output):
        return _export(model, output, options)


def _export(model: torch.nn.Module, output: Path, options: ExportOptions) -> ExportReport:
    contract = find_contract(model, options.input_size, feature_module=options.feature_module,
                             linear_module=options.linear_module, pooling=options.pooling)
    num_classes = contract.linear.out_features
    _validate(options, num_classes)
    topk = options.topk or min(5, num_classes)
    spec = ModelSpec(
        class_names=options.class_names or tuple(f"class {i}" for i in range(num_classes)),
        input_height=options.input_size[0], input_width=options.input_size[1],
        normalization=options.normalization, topk=topk,
        box_threshold=options.box_threshold, source_model=options.source_model,
        pooling=contract.pooling, resize=options.resize, camdeploy_version=camdeploy.__version__,
    )
    cam_model = CamModel(contract, topk, options.input_size).eval()

    import onnx

    proto = onnx.load_from_string(_to_onnx(cam_model, options))
    proto.producer_name = "camdeploy"
    proto.producer_version = camdeploy.__version__
    proto.doc_string = (f"{options.source_model} with a CAM head exported by camdeploy "
                        f"{camdeploy.__version__}; see metadata_props for preprocessing and labels")
    onnx.helper.set_model_props(proto, spec.to_props())
    if proto.ByteSize() >= 2**31 - 2**20:
        raise CamdeployError("the model is larger than 2 GB, the limit of a self-contained ONNX file")

    graph_boxes, note = _box_plan(cam_model, options, topk)
    if graph_boxes is not None:
        add_graph_boxes(proto, feature_width=graph_boxes, topk=topk, threshold=options.box_threshold)

    def verify(path: Path) -> dict[str, float]:
        return _verify(path, cam_model, options, graph_boxes is not None) if options.verify else {}

    errors = save_onnx(proto, output, verify)
    return ExportReport(output, spec, contract.shape, errors, graph_boxes is not None, note)


def _box_plan(cam_model: CamModel, options: ExportOptions, topk: int) -> tuple[int | None, str]:
    """Feature width to build graph boxes from (None: host boxes), and a note on the choice."""
    if options.graph_boxes == "off":
        return None, "boxes: not in the graph (the runtime's host rule)"
    with torch.inference_mode():
        feature_width = int(cam_model.features(torch.zeros(1, 3, *options.input_size)).shape[-1])
    height, width = options.input_size
    nodes = node_count(height, BandLayout.from_band_of_column(upsample_bands(feature_width, width)))
    if nodes <= TENSORRT_TOPK_LIMIT:
        return feature_width, f"boxes: in the graph ({nodes} row segments per map)"
    why = (f"{nodes} row segments per map ({height} rows x bands from {feature_width} feature columns) "
           f"exceed TensorRT's TopK limit of {TENSORRT_TOPK_LIMIT}")
    if options.graph_boxes == "on":
        raise CamdeployError(f"--graph-boxes on: {why}; use --graph-boxes off, or a smaller --input-size")
    return None, f"boxes: not in the graph ({why}; the runtime's host rule)"
