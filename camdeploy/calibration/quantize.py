"""INT8 (Q/DQ) and FP16 variants of an exported camdeploy graph.

INT8 is explicit quantization, the route TensorRT 10/11 and ONNX Runtime share: ONNX Runtime's
static quantization inserts QuantizeLinear/DequantizeLinear pairs with per-channel weight scales.
Two targets, recorded in the model's metadata (``camdeploy.int8_target``):

* ``tensorrt`` (default): symmetric int8 activations and weights, every zero point 0, as
  TensorRT requires. On a CPU, ONNX Runtime runs such a graph as *simulated* int8 (float math on
  dequantized values, which is what TensorRT computes; slower than float32): see
  :mod:`camdeploy.runtime.int8`.
* ``cpu``: asymmetric uint8 activations with symmetric int8 weights (U8S8), which ONNX Runtime's
  CPU kernels run fast; TensorRT does not accept its nonzero activation zero points. The kernels
  are exact on every x86-64 CPU: with VNNI directly, without it through ONNX Runtime's U8U8
  kernels, chosen at run time, or through U8S8 with 7-bit weights (``reduce_range``).

Only the backbone, every node that the ``features`` output depends on, is quantized; pooling, the
linear head, softmax, top-k and the whole CAM head (the class-weight contraction, upsampling and
min-max normalisation) stay in float32, so that logits, maps and boxes are computed from
dequantized features with full-precision weights.

FP16 converts the backbone to float16 with float32 inputs and outputs; the same head nodes stay
float32, because min-max normalisation and softmax are where float16 loses most."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from camdeploy.atomic import save_onnx
from camdeploy.calibration.data import CalibrationData
from camdeploy.errors import CamdeployError
from camdeploy.graph import CALIBRATION_FILES, load, producers
from camdeploy.lock import hold_file
from camdeploy.runtime.int8 import TARGET_KEY, WEIGHT_BITS_KEY
from camdeploy.runtime.onnxruntime_runner import import_onnxruntime

METHODS = ("minmax", "entropy", "percentile")
TARGETS = ("tensorrt", "cpu")


@dataclass(frozen=True)
class Int8Config:
    """Options of :func:`quantize_int8`."""

    method: str = "minmax"
    """Calibration: ``minmax``, ``entropy`` or ``percentile``."""
    target: str = "tensorrt"
    """``tensorrt``: symmetric int8 activations (zero points 0); ``cpu``: uint8 activations (U8S8)."""
    percentile: float = 99.999
    per_channel: bool = True
    reduce_range: bool = False
    """Weights in 7 bits (``|q| <= 64``): ONNX Runtime's fast U8S8 kernels are then exact on every
    x86-64 CPU, VNNI or not, at some cost in precision (see :mod:`camdeploy.runtime.int8`)."""
    quantize_head: bool = False
    """Quantize the nodes after ``features`` too (pooling, linear head, CAM head); off by default."""


def backbone_nodes(model: onnx.ModelProto, output: str = "features") -> set[str]:
    """Names of the nodes that ``output`` depends on."""
    made = producers(model)
    wanted, stack, seen = set(), [output], set()
    while stack:
        name = stack.pop()
        node = made.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        wanted.add(node.name)
        stack.extend(node.input)
    return wanted


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that stay in float: everything that is not in the backbone."""
    backbone = backbone_nodes(model)
    return [n.name for n in model.graph.node if n.name not in backbone]


def _outer_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph (a Loop or If body) reads from the enclosing graph."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(_node_inputs(node))
        local.update(node.output)
    return used - local


def _node_inputs(node: onnx.NodeProto) -> set[str]:
    """A node's inputs, including what its subgraphs read from outside them."""
    names = set(node.input)
    for attribute in node.attribute:
        for graph in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
            names |= _outer_inputs(graph)
    return names


def _topological(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder nodes so that each comes after the producers of its inputs (the checker requires it),
    counting what Loop and If bodies read from the main graph as inputs of those nodes."""
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    # onnxruntime's float16 converter can emit the same Cast twice (an initializer shared by two
    # float32 nodes); keep one of identical nodes.
    unique: dict[bytes, onnx.NodeProto] = {}
    for node in model.graph.node:
        key = onnx.NodeProto(op_type=node.op_type, input=node.input, output=node.output,
                             attribute=node.attribute, domain=node.domain).SerializeToString()
        unique.setdefault(key, node)
    pending, ordered = list(unique.values()), []
    inputs = {id(n): _node_inputs(n) for n in pending}
    while pending:
        ready = [n for n in pending if all(i in available for i in inputs[id(n)])]
        if not ready:
            raise CamdeployError("converted graph has a cycle or a dangling input; please report this model")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    return model


def _backbone(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph cut at ``features``: what INT8 quantizes, and all that calibration has to observe
    (the float heads' tensors, some constant, would only cost time and upset histogram methods)."""
    from onnx.utils import Extractor

    return Extractor(model).extract_model(["images"], ["features"])


def _with_float_head(backbone: onnx.ModelProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """The (quantized) ``backbone`` followed by ``model``'s float head nodes, with ``model``'s inputs,
    outputs and metadata."""
    head = [model.graph.node[i] for i, n in enumerate(model.graph.node) if n.name in set(head_nodes(model))]
    merged = onnx.ModelProto()
    merged.CopyFrom(model)
    del merged.graph.node[:]
    merged.graph.node.extend([*backbone.graph.node, *head])
    needed = set().union(*(_node_inputs(n) for n in head))
    present = {t.name for t in backbone.graph.initializer}
    del merged.graph.initializer[:]
    merged.graph.initializer.extend([*backbone.graph.initializer,
                                     *(t for t in model.graph.initializer if t.name in needed - present)])
    del merged.graph.value_info[:]
    opsets = {o.domain: o.version for o in model.opset_import}
    for o in backbone.opset_import:
        opsets[o.domain] = max(o.version, opsets.get(o.domain, 0))
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items())
    return merged


def _write_atomically(model: onnx.ModelProto, output: Path) -> None:
    save_onnx(model, output, lambda path: onnx.checker.check_model(str(path)))


class _StridedReader:
    """ONNX Runtime's calibration reader over :class:`CalibrationData`, counted in feeds, so that
    the calibrator (``CalibStridedMinMax``, which every method honours) takes one feed at a time."""

    def __init__(self, data: CalibrationData):
        self.data = data

    def __len__(self) -> int:
        return self.data.feed_count()

    def set_range(self, start_index: int, end_index: int) -> None:
        self.data.set_range(start_index, end_index)

    def get_next(self) -> dict | None:
        return self.data.get_next()

    def rewind(self) -> None:
        self.data.rewind()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer advises pre-processing on the root logger and prints its histogram settings on
    stdout: keep both out of the command's output, and restore the logger however it ends."""
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root_logger.setLevel(level)


def quantize_int8(model_path: str | Path, output: str | Path, data: CalibrationData,
                  config: Int8Config = Int8Config(), verify: Callable[[Path], dict[str, str]] | None = None
                  ) -> Path:
    """Write a Q/DQ INT8 variant of ``model_path`` to ``output``, calibrated on ``data``.

    ``verify``, when given, is called with the finished model (in a scratch folder) before anything
    is written at ``output``; it raises :class:`CamdeployError` to refuse the model, or returns
    metadata to record in it. Holds ``output``'s lock (:mod:`camdeploy.lock`) while it works.
    """
    with hold_file(Path(output)):
        return _quantize_int8(model_path, Path(output), data, config, verify)


def _quantize_int8(model_path: str | Path, output: Path, data: CalibrationData, config: Int8Config,
                   verify: Callable[[Path], dict[str, str]] | None) -> Path:
    import_onnxruntime()  # a clear error when it is missing
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if config.method not in METHODS:
        raise CamdeployError(f"--method {config.method!r}: expected one of {', '.join(METHODS)}")
    if config.target not in TARGETS:
        raise CamdeployError(f"--target {config.target!r}: expected one of {', '.join(TARGETS)}")
    symmetric = config.target == "tensorrt"
    model = _named(load(model_path))
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.method]
    extra: dict[str, object] = {"WeightSymmetric": True, "CalibPercentile": config.percentile,
                                "CalibStridedMinMax": 1}
    if symmetric:  # zero points 0: TensorRT accepts only symmetric int8
        # TensorRT dequantizes only 8-bit (and narrower) tensors: int32 biases stay float.
        extra.update(ActivationSymmetric=True, CalibTensorRangeSymmetric=True, QuantizeBias=False)
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="camdeploy-calibration-") as scratch:
        source = Path(scratch) / "model.onnx"
        onnx.save_model(model if config.quantize_head else _backbone(model), str(source))
        target = Path(scratch) / "model.int8.onnx"
        with _quiet_quantizer():
            quantize_static(str(source), str(target), _StridedReader(data), quant_format=QuantFormat.QDQ,
                            per_channel=config.per_channel, reduce_range=config.reduce_range,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=method, extra_options=extra)
        quantized = onnx.load(str(target))
        if not config.quantize_head:
            quantized = _with_float_head(quantized, model)
        quantized = _topological(quantized)  # the quantizer's order ignores Loop bodies
        weights = "7-bit" if config.reduce_range else "8-bit"
        props = {**{p.key: p.value for p in model.metadata_props}, "camdeploy.precision": "int8",
                 TARGET_KEY: config.target, WEIGHT_BITS_KEY: "7" if config.reduce_range else "8",
                 "camdeploy.calibration": f"{config.method}, {len(data)} images, target {config.target}, "
                                          f"{weights} weights",
                 CALIBRATION_FILES: json.dumps([str(p.resolve()) for p in data.paths])}
        onnx.helper.set_model_props(quantized, props)
        if verify is not None:
            candidate = Path(scratch) / "candidate.onnx"
            onnx.save_model(quantized, str(candidate))
            onnx.helper.set_model_props(quantized, {**props, **verify(candidate)})
    _write_atomically(quantized, output)
    return output


def _without_float16_round_trips(model: onnx.ModelProto, float32_nodes: set[str]) -> onnx.ModelProto:
    """Drop the ``Cast`` to float16 and back that the converter puts after every float32 node, on
    its way to the next float32 node or to a graph output (``keep_io_types``): the float32 heads
    (CAMs, scores, boxes) would otherwise compute in float16's precision between every two nodes.
    The second ``Cast`` becomes an ``Identity`` of the float32 tensor (ONNX Runtime and TensorRT
    remove those); the first goes when nothing else reads it."""
    made = producers(model)

    def cast_to(node: onnx.NodeProto | None, element: int) -> bool:
        return (node is not None and node.op_type == "Cast"
                and any(a.name == "to" and a.i == element for a in node.attribute))

    for node in model.graph.node:
        first = made.get(node.input[0]) if node.input else None
        if not (cast_to(node, onnx.TensorProto.FLOAT) and first is not None
                and cast_to(first, onnx.TensorProto.FLOAT16)):
            continue
        source = made.get(first.input[0])
        if source is not None and source.name in float32_nodes:
            node.op_type, node.input[0] = "Identity", first.input[0]
            del node.attribute[:]
    used = {name for node in model.graph.node for name in _node_inputs(node)} | {o.name for o in model.graph.output}
    kept = [n for n in model.graph.node if n.op_type != "Cast" or any(o in used for o in n.output)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def convert_fp16(model_path: str | Path, output: str | Path, keep_head_fp32: bool = True) -> Path:
    """Write an FP16 variant of ``model_path``: float32 inputs and outputs, float16 backbone (holding
    ``output``'s lock, :mod:`camdeploy.lock`)."""
    with hold_file(Path(output)):
        return _convert_fp16(model_path, Path(output), keep_head_fp32)


def _convert_fp16(model_path: str | Path, output: Path, keep_head_fp32: bool) -> Path:
    import_onnxruntime()  # a clear error when it is missing
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = _named(load(model_path))
    block = head_nodes(model) if keep_head_fp32 else []
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=block)
    converted = _topological(_without_float16_round_trips(converted, set(block)))
    onnx.helper.set_model_props(converted, {**{p.key: p.value for p in model.metadata_props},
                                            "camdeploy.precision": "fp16"})
    output = Path(output)
    _write_atomically(converted, output)
    return output
