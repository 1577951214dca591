"""Inspecting and cutting an exported camdeploy graph: what the exporter, the runtimes, calibration
and the hosts all need, with no dependency on either side (numpy and onnx only).

The contract of an exported file (see the README's "What the graph computes"): input
:data:`INPUT_NAME` ``float32 [N, 3, S_h, S_w]``; outputs :data:`CAM_OUTPUTS` and, when the graph
computes boxes itself, :data:`BOX_OUTPUTS`; metadata in :mod:`camdeploy.metadata`.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
from onnx import numpy_helper

from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec

INPUT_NAME = "images"
CAM_OUTPUTS = ("logits", "features", "classes", "scores", "cams")
"""The outputs every exported graph has, in this order."""
BOX_OUTPUTS = ("boxes", "boxes_exact")
"""The outputs of a graph that computes boxes itself (``camdeploy export --graph-boxes``)."""
REQUIRED_OUTPUTS = ("logits", "classes", "scores", "cams")
"""What a runner cannot do without (``features`` is needed only for the CAMs of other classes, by eval)."""
CLASS_OUTPUTS = ("logits", "classes", "scores")
"""What classification alone needs: the graph cut here has no CAM head."""
CALIBRATION_FILES = "camdeploy.calibration_files"
"""Metadata key of an INT8 model: JSON list of the images that set its ranges."""
VERIFICATION_KEY = "camdeploy.calibration_verification"
"""Metadata key of an INT8 model: JSON of its verification on held-back images (their ``files`` too)."""


MAX_MODEL_ENV = "CAMDEPLOY_MAX_MODEL_MB"
"""Environment variable overriding :data:`DEFAULT_MAX_MODEL_MB`."""
DEFAULT_MAX_MODEL_MB = 2048
"""The largest model file read, in MiB: a self-contained ONNX file is one protobuf message, which
cannot exceed 2 GiB."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def not_a_file(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` (followed through symbolic links) is not a regular file that can be read, or
    None when it is one: ``a character device``, ``a symbolic link to nothing``, ..."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a symbolic link to nothing (its target is missing)" if os.path.islink(path) else "no such file"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None if stat.S_ISREG(mode) else _kind(mode)


def check_model_file(path: str | os.PathLike[str], label: str = "MODEL") -> int:
    """Check a model (or engine) path before anything reads it: a regular file (not a device, a fifo
    or a folder, which would be read for ever or block), no larger than ``$CAMDEPLOY_MAX_MODEL_MB``
    (default :data:`DEFAULT_MAX_MODEL_MB`). Returns its size; refuses in one line naming ``label``."""
    why = not_a_file(path)
    if why == "no such file":
        raise CamdeployError(f"{label} {path}: no such file; expected an .onnx file written by `camdeploy export`")
    if why is not None:
        raise CamdeployError(f"{label} {path}: {why}; expected a regular file (an .onnx file written by "
                             "`camdeploy export`)")
    size = os.stat(path).st_size
    text = os.environ.get(MAX_MODEL_ENV, "")
    try:
        limit_mb = float(text) if text else DEFAULT_MAX_MODEL_MB
    except ValueError:
        raise CamdeployError(f"${MAX_MODEL_ENV} {text!r}: expected a number of MiB") from None
    if size > limit_mb * 2**20:
        raise CamdeployError(f"{label} {path}: {size / 2**20:.0f} MiB is more than the limit of {limit_mb:g} MiB "
                             f"(a self-contained ONNX file stays under 2048); set ${MAX_MODEL_ENV} to raise it")
    return size


def load(path: str | os.PathLike[str], *, weights: bool = True) -> onnx.ModelProto:
    """Read an ``.onnx`` file; a missing, empty or unreadable file is a one-line error naming it, and
    so is a path that is no regular file or is too large (:func:`check_model_file`), before reading."""
    check_model_file(path)
    try:
        model = onnx.load(str(path), load_external_data=weights)
    except FileNotFoundError:
        raise CamdeployError(f"MODEL {path}: no such file; expected an .onnx file written by "
                             "`camdeploy export`") from None
    except IsADirectoryError:
        raise CamdeployError(f"MODEL {path}: is a folder; expected an .onnx file") from None
    except Exception as exc:  # onnx raises DecodeError and others for non-ONNX files
        raise CamdeployError(f"MODEL {path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node and not model.graph.output:  # protobuf parses an empty file as an empty model
        raise CamdeployError(f"MODEL {path}: not an ONNX model (the file is empty or holds no graph)")
    return model


def has_box_outputs(model: onnx.ModelProto) -> bool:
    """Whether ``model`` computes boxes itself (outputs :data:`BOX_OUTPUTS`)."""
    return any(o.name == BOX_OUTPUTS[0] for o in model.graph.output)


def cut(model: onnx.ModelProto, outputs: tuple[str, ...]) -> onnx.ModelProto:
    """A copy of ``model`` computing only ``outputs`` (from all its inputs), with its metadata:
    the nodes nothing else needs are gone, so that they cost nothing."""
    from onnx.utils import Extractor

    missing = set(outputs) - {o.name for o in model.graph.output} - {n for node in model.graph.node
                                                                     for n in node.output}
    if missing:
        raise CamdeployError(f"the graph has no tensor named {', '.join(sorted(missing))}")
    inputs = [i.name for i in model.graph.input]
    known = {v.name for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    untyped = [name for name in outputs if name not in known]
    if untyped:  # a quantized graph keeps no types inside; camdeploy cuts inside it only at float32 maps
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.graph.value_info.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                                      for name in untyped)
    result = Extractor(model).extract_model(inputs, list(outputs))
    result.metadata_props.extend(model.metadata_props)
    result.producer_name, result.producer_version = model.producer_name, model.producer_version
    return result


def without_boxes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without :data:`BOX_OUTPUTS` and the nodes only they need (for the host box rule)."""
    return cut(model, tuple(o.name for o in model.graph.output if o.name not in BOX_OUTPUTS))


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The node that computes each tensor of the main graph, by tensor name."""
    return {out: node for node in model.graph.node for out in node.output}


def cam_head_maps(model: onnx.ModelProto) -> str | None:
    """The tensor of low-resolution maps ``[N, T, h, w]`` that the CAM head upsamples, or None.

    The head of an exported graph is ``cams = (R - min R) / span`` with ``R`` a float32 bilinear,
    half-pixel ``Resize`` of the maps (a constant map divides by 1 instead of 0). A runner that
    needs only boxes can fetch these maps instead of the full-resolution ``cams`` (see
    :mod:`camdeploy.runtime.map_boxes`); any other head (a float16 one, whose ``cams`` come out of a
    ``Cast``; an edited graph) gives None.
    """
    made = producers(model)
    outputs = {o.name: o for o in model.graph.output}

    def made_by(name: str, op_type: str) -> onnx.NodeProto | None:
        node = made.get(name)
        while node is not None and node.op_type == "Identity":  # an FP16 variant's float32 head has some
            node = made.get(node.input[0])
        return node if node is not None and node.op_type == op_type else None

    if "cams" not in outputs or outputs["cams"].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        return None
    div = made_by("cams", "Div")  # float32 out, so float32 in: Sub, Resize and the maps are float32
    sub = made_by(div.input[0], "Sub") if div is not None else None
    resize = made_by(sub.input[0], "Resize") if sub is not None else None
    low = made_by(sub.input[1], "ReduceMin") if sub is not None else None
    if resize is None or low is None or made_by(low.input[0], "Resize") is not resize:
        return None
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in resize.attribute}
    if (attributes.get("mode") != b"linear" or attributes.get("coordinate_transformation_mode") != b"half_pixel"
            or attributes.get("antialias", 0) != 0):
        return None
    return resize.input[0] if _head_nodes(model, resize.input[0]) is not None else None


def _head_nodes(model: onnx.ModelProto, maps: str) -> list[onnx.NodeProto] | None:
    """The nodes that compute ``cams`` from ``maps`` and constants alone, in graph order, or None
    when ``cams`` needs anything else."""
    made = producers(model)
    constants = {t.name for t in model.graph.initializer}
    needed: set[int] = set()
    pending, seen = ["cams"], set()
    while pending:
        name = pending.pop()
        if name in seen or name in constants or name in ("", maps):
            continue
        seen.add(name)
        node = made.get(name)
        if node is None:  # a graph input other than the maps
            return None
        needed.add(id(node))
        pending.extend(node.input)
    return [node for node in model.graph.node if id(node) in needed]


def cam_head(model: onnx.ModelProto, maps: str) -> onnx.ModelProto:
    """The CAM head alone: input ``maps`` ``float32 [n, t, h, w]`` (see :func:`cam_head_maps`), any
    number of maps of any size, output ``cams``; it computes them with the same operators as the
    whole graph, so that a runtime gives the same values."""
    nodes = _head_nodes(model, maps)
    if nodes is None:
        raise CamdeployError(f"the graph's cams are not computed from {maps!r} alone")
    used = {name for node in nodes for name in node.input}
    size = [d.dim_value or d.dim_param for d in
            next(o for o in model.graph.output if o.name == "cams").type.tensor_type.shape.dim][2:]
    head = onnx.helper.make_graph(
        nodes, "camdeploy_cam_head",
        [onnx.helper.make_tensor_value_info(maps, onnx.TensorProto.FLOAT, ["n", "t", "h", "w"])],
        [onnx.helper.make_tensor_value_info("cams", onnx.TensorProto.FLOAT, ["n", "t", *size])],
        [t for t in model.graph.initializer if t.name in used])
    result = onnx.helper.make_model(head, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    result.metadata_props.extend(model.metadata_props)
    return result


def precision(model: onnx.ModelProto) -> str:
    """``int8`` for a Q/DQ graph, ``fp16`` when its weights are float16, else ``fp32``."""
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def class_weight(model: onnx.ModelProto, num_classes: int, source: str = "MODEL") -> np.ndarray:
    """The linear head's weight ``W float32 [K, C]``: the data input of the Gather that selects the
    top classes' rows in the CAM head (through a Cast in an fp16 variant)."""
    initializers = {t.name: t for t in model.graph.initializer}
    casts = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast"}
    for node in model.graph.node:
        name = node.input[0] if node.op_type == "Gather" else ""
        name = casts.get(name, name)
        tensor = initializers.get(name)
        if tensor is not None and len(tensor.dims) == 2 and tensor.dims[0] == num_classes:
            return numpy_helper.to_array(tensor).astype(np.float32)
    raise CamdeployError(f"{source}: no [{num_classes}, C] class weight feeds a Gather; "
                         "re-export it with `camdeploy export`")


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def check_contract(model: onnx.ModelProto, spec: ModelSpec, source: str = "MODEL") -> None:
    """Refuse, in one line, a graph whose input and outputs do not match its camdeploy metadata
    (a file whose metadata was copied onto another graph, or a graph edited after export)."""
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    expected_input = ["N", 3, spec.input_height, spec.input_width]
    found = _dims(inputs[INPUT_NAME]) if INPUT_NAME in inputs else None
    if found is None or len(found) != 4 or found[1:] != expected_input[1:]:
        raise CamdeployError(f"{source}: its metadata describes input {INPUT_NAME!r} [N, 3, {spec.input_height}, "
                             f"{spec.input_width}] but the graph has {found if found else 'no such input'}; "
                             "re-export it with `camdeploy export`")
    missing = [name for name in REQUIRED_OUTPUTS if name not in outputs]
    if missing:
        raise CamdeployError(f"{source}: it has camdeploy metadata but lacks the output(s) {', '.join(missing)} "
                             f"(it has {', '.join(outputs) or 'none'}); re-export it with `camdeploy export`")
    expected = {"logits": [len(spec.class_names)], "classes": [spec.topk], "scores": [spec.topk],
                "cams": [spec.topk, spec.input_height, spec.input_width]}
    for name, tail in expected.items():
        dims = _dims(outputs[name])
        if dims and [d for d in dims[1:]] != tail and all(isinstance(d, int) and d for d in dims[1:]):
            raise CamdeployError(f"{source}: output {name!r} has shape {dims} but its metadata implies "
                                 f"[N, {', '.join(map(str, tail))}]; re-export it with `camdeploy export`")


def describe(model: onnx.ModelProto) -> dict[str, object]:
    """Inputs, outputs (name, element type, shape), opset and metadata, for ``camdeploy info``."""

    def tensors(values: list[onnx.ValueInfoProto]) -> list[dict[str, object]]:
        return [{"name": v.name, "type": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": _dims(v)} for v in values]

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return {"inputs": tensors(list(model.graph.input)), "outputs": tensors(list(model.graph.output)),
            "opset": opset, "precision": precision(model),
            "metadata": {p.key: p.value for p in model.metadata_props}}


def calibration_files(path: str | os.PathLike[str]) -> list[str]:
    """The images of a quantized model's calibration draw, those that set its ranges and those held
    back to verify it (empty for other models), so that evaluation can refuse them."""
    import json

    props = {p.key: p.value for p in load(path, weights=False).metadata_props}
    files = json.loads(props.get(CALIBRATION_FILES, "[]"))
    return [*files, *json.loads(props.get(VERIFICATION_KEY, "{}")).get("files", [])]
