"""A Triton Inference Server model repository for an exported camdeploy graph.

:func:`write_repository` writes ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/model.onnx``, served
by Triton's ONNX Runtime backend, or ``REPO/NAME/1/model.plan`` (platform ``tensorrt_plan``) for
a TensorRT engine built from the same graph. Everything in the configuration comes from the
graph and its metadata:

* ``input`` and ``output``: every graph input and output, with Triton's data type (``TYPE_FP32``,
  ``TYPE_INT64``, ``TYPE_BOOL``...) and its dims without the batch dimension, which must be
  dynamic on every tensor (``max_batch_size`` > 0 means Triton adds and splits that dimension);
  the image input is marked ``FORMAT_NCHW`` as the metadata says;
* ``max_batch_size``: ``--max-batch``, within the batch range the exporter declares (1..4096);
* ``dynamic_batching``: the largest batch sizes up to ``max_batch_size`` as preferred sizes, and a
  short queue delay so that concurrent requests can meet;
* ``instance_group``: ``count`` instances on the CPU or on each GPU;
* ``model_warmup``: random images at batch 1 and at ``max_batch_size``, so that the first client
  does not pay for memory planning (or, with TensorRT, for building an engine);
* ``parameters``: the model's ``camdeploy.*`` metadata (class names, input size, pixel scale and
  offset, top-T, box threshold...), so that a client learns the preprocessing from
  ``GET /v2/models/NAME/config``;
* with ``--device gpu --tensorrt-fp16``: ONNX Runtime's TensorRT accelerator in FP16 with an
  engine cache and a batch profile ``1..max_batch_size``.

The configuration is built as Triton's own ``ModelConfig`` protobuf message (from ``tritonclient``,
the ``triton`` extra), written in protobuf text format, parsed back and checked against the graph
before anything is moved into place: the model folder appears whole or not at all, and an
existing one is replaced only with ``force``.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

import camdeploy
from camdeploy.atomic import file_sha256
from camdeploy.errors import CamdeployError
from camdeploy.lock import hold_file
from camdeploy.metadata import PREFIX, ModelSpec

BACKEND = "onnxruntime"
PLAN_PLATFORM = "tensorrt_plan"
VERSION = "1"
CONFIG_FILE = "config.pbtxt"
MAX_BATCH = 4096
"""The batch range the exporter declares (``torch.export.Dim("batch", min=1, max=4096)``)."""
QUEUE_DELAY_US = 100
"""How long the dynamic batcher may hold a request for others to join it (Triton's default: 0)."""
DEFAULT_ENGINE_CACHE = "/tmp/triton-trt-cache"
"""Where, on the server, ONNX Runtime's TensorRT accelerator keeps engines (one folder per model)."""
DEVICES = ("cpu", "gpu")

ONNX_TO_TRITON: dict[int, str] = {
    TensorProto.FLOAT: "TYPE_FP32", TensorProto.FLOAT16: "TYPE_FP16", TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.BFLOAT16: "TYPE_BF16", TensorProto.BOOL: "TYPE_BOOL", TensorProto.STRING: "TYPE_STRING",
    TensorProto.INT8: "TYPE_INT8", TensorProto.INT16: "TYPE_INT16", TensorProto.INT32: "TYPE_INT32",
    TensorProto.INT64: "TYPE_INT64", TensorProto.UINT8: "TYPE_UINT8", TensorProto.UINT16: "TYPE_UINT16",
    TensorProto.UINT32: "TYPE_UINT32", TensorProto.UINT64: "TYPE_UINT64",
}
"""ONNX element types and the Triton data types of the same values."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TritonOptions:
    """Options of :func:`write_repository`."""

    name: str | None = None
    """Model name and folder (default: the ONNX file's stem)."""
    max_batch: int = 32
    """``max_batch_size``: the largest batch Triton's dynamic batcher forms."""
    device: str | None = None
    """``cpu`` or ``gpu`` instances (default: ``gpu`` with ``plan``, else ``cpu``)."""
    instances: int = 1
    """Instances per device (per GPU with ``gpu``)."""
    tensorrt_fp16: bool = False
    """With ``gpu``: ONNX Runtime's TensorRT accelerator in FP16, with an engine cache."""
    plan: Path | None = None
    """A TensorRT engine built from the ONNX file: served as ``model.plan`` instead of the ONNX."""
    engine_cache: str | None = None
    """With ``tensorrt_fp16``: the engine cache folder on the server (default
    ``/tmp/triton-trt-cache/NAME``)."""
    force: bool = False
    """Replace an existing model folder."""
    queue_delay_us: int = QUEUE_DELAY_US


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as Triton sees it."""

    name: str
    data_type: str
    """Triton's name of the element type, e.g. ``TYPE_FP32``."""
    dims: tuple[int, ...]
    """Shape without the batch dimension; -1 where the graph leaves a size open."""


@dataclass(frozen=True)
class TritonRepository:
    """What :func:`write_repository` wrote."""

    name: str
    model_dir: Path
    config_path: Path
    model_path: Path
    """``1/model.onnx`` or ``1/model.plan``."""
    serving: str
    """``onnxruntime`` (backend) or ``tensorrt_plan`` (platform)."""
    device: str
    instances: int
    max_batch: int
    preferred_batch_sizes: tuple[int, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tensorrt_fp16: bool
    replaced: bool
    """An existing model folder was replaced (``force``)."""


def model_config_schema() -> Any:
    """Triton's ``model_config_pb2`` module (``tritonclient``, the ``triton`` extra)."""
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, TypeError) as exc:  # TypeError: generated code that this protobuf refuses
        raise CamdeployError(f"camdeploy triton builds config.pbtxt with Triton's own schema, from tritonclient "
                             f"({exc}); install the 'triton' extra: pip install 'camdeploy[triton]'") from exc
    return model_config_pb2


def graph_io(model: onnx.ModelProto, source: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of ``model`` as Triton tensors; refuses a graph Triton cannot batch."""
    initializers = {t.name for t in model.graph.initializer}

    def tensor(value: onnx.ValueInfoProto, kind: str) -> TensorSpec:
        if not value.type.HasField("tensor_type"):
            raise CamdeployError(f"MODEL {source}: {kind} {value.name!r} is not a tensor; Triton serves tensors")
        typed = value.type.tensor_type
        if typed.elem_type not in ONNX_TO_TRITON:
            raise CamdeployError(f"MODEL {source}: {kind} {value.name!r} has element type "
                                 f"{TensorProto.DataType.Name(typed.elem_type)}, which Triton has no type for")
        dims = list(typed.shape.dim)
        shape = [d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else "?"
                 for d in dims]
        if not dims or dims[0].HasField("dim_value"):
            raise CamdeployError(
                f"MODEL {source}: {kind} {value.name!r} has shape {shape}, without a dynamic first (batch) "
                "dimension; Triton's batching (--max-batch) needs one on every input and output: re-export the "
                "model with `camdeploy export`")
        return TensorSpec(value.name, ONNX_TO_TRITON[typed.elem_type],
                          tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:]))

    inputs = tuple(tensor(v, "input") for v in model.graph.input if v.name not in initializers)
    outputs = tuple(tensor(v, "output") for v in model.graph.output)
    return inputs, outputs


def preferred_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The three largest of ``max_batch`` and the powers of two from 2 below it: batches the
    dynamic batcher sends at once (8, 16, 32 for 32); smaller ones go when the queue delay ends."""
    sizes = {max_batch} | {1 << k for k in range(1, max_batch.bit_length()) if 1 << k < max_batch}
    return tuple(sorted(s for s in sizes if s >= 2)[-3:])


def _validate(options: TritonOptions, model: Path, name: str) -> str:
    """Check the options alone; returns the device."""
    if not _NAME.fullmatch(name):
        origin = "" if options.name is not None else f" (from MODEL {model.name}; pass --name)"
        raise CamdeployError(f"--name {name!r}{origin}: expected a folder name of letters, digits, '_', '-' and '.', "
                             "not starting with '.' or '-' (it is the model's name in Triton's URLs)")
    if not 1 <= options.max_batch <= MAX_BATCH:
        raise CamdeployError(f"--max-batch {options.max_batch}: expected 1 to {MAX_BATCH}, the batch range the "
                             "exported graph declares")
    if options.instances < 1:
        raise CamdeployError(f"--instances {options.instances}: expected a positive number of instances per device")
    if options.queue_delay_us < 0:
        raise CamdeployError(f"queue delay {options.queue_delay_us} us: expected 0 or more")
    device = options.device or ("gpu" if options.plan else "cpu")
    if device not in DEVICES:
        raise CamdeployError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    if options.plan is not None:
        if device != "gpu":
            raise CamdeployError(f"--plan {options.plan} with --device {device}: TensorRT plans run on NVIDIA GPUs "
                                 "only; use --device gpu, or serve the ONNX file on the CPU without --plan")
        if options.tensorrt_fp16:
            raise CamdeployError(f"--tensorrt-fp16 with --plan {options.plan}: a plan's precision is fixed when it "
                                 "is built (`camdeploy build` from an FP16 or INT8 file); drop --tensorrt-fp16")
        if not options.plan.is_file():
            raise CamdeployError(f"--plan {options.plan}: no such file; expected a TensorRT engine built from "
                                 f"{model} (`camdeploy build {model} --output ENGINE.plan`)")
    if options.tensorrt_fp16 and device != "gpu":
        raise CamdeployError(f"--tensorrt-fp16 with --device {device}: TensorRT runs on NVIDIA GPUs; "
                             "add --device gpu")
    if options.engine_cache is not None and not options.tensorrt_fp16:
        raise CamdeployError(f"--engine-cache {options.engine_cache}: it is where --tensorrt-fp16 keeps its "
                             "engines; add --device gpu --tensorrt-fp16 or drop it")
    return device


def _load(model: Path) -> onnx.ModelProto:
    from camdeploy.graph import load

    proto = load(model, weights=False)
    if any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise CamdeployError(f"MODEL {model}: its weights are in external data files; expected one self-contained "
                             "file as `camdeploy export` writes")
    return proto


def _profile(inputs: tuple[TensorSpec, ...], batch: int) -> str | None:
    """An ONNX Runtime TensorRT profile shape, ``images:8x3x224x224``, or None when a size is open."""
    if any(d < 0 for t in inputs for d in t.dims):
        return None
    return ",".join(f"{t.name}:{'x'.join(map(str, (batch, *t.dims)))}" for t in inputs)


def build_config(name: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 props: dict[str, str], spec: ModelSpec, options: TritonOptions, device: str) -> Any:
    """Triton's ``ModelConfig`` message for the graph's tensors and metadata."""
    schema = model_config_schema()
    config = schema.ModelConfig(name=name, max_batch_size=options.max_batch)
    if options.plan is not None:
        config.platform = PLAN_PLATFORM
    else:
        config.backend = BACKEND
    for t in inputs:
        entry = config.input.add(name=t.name, data_type=schema.DataType.Value(t.data_type), dims=t.dims)
        if len(t.dims) == 3 and spec.layout == "NCHW" and t.dims[0] == 3:
            entry.format = schema.ModelInput.FORMAT_NCHW
    for t in outputs:
        config.output.add(name=t.name, data_type=schema.DataType.Value(t.data_type), dims=t.dims)
    config.dynamic_batching.SetInParent()
    config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes(options.max_batch))
    config.dynamic_batching.max_queue_delay_microseconds = options.queue_delay_us
    kind = schema.ModelInstanceGroup.KIND_GPU if device == "gpu" else schema.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=options.instances)
    if all(d >= 0 for t in inputs for d in t.dims):
        for batch in sorted({1, options.max_batch}):
            warmup = config.model_warmup.add(name=f"random_batch_{batch}", batch_size=batch)
            for t in inputs:
                sample = warmup.inputs[t.name]
                sample.data_type = schema.DataType.Value(t.data_type)
                sample.dims.extend(t.dims)
                sample.random_data = True
    for key, value in sorted(props.items()):
        config.parameters[key].string_value = value
    if options.tensorrt_fp16:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = "FP16"
        accelerator.parameters["trt_engine_cache_enable"] = "1"
        accelerator.parameters["trt_engine_cache_path"] = options.engine_cache or f"{DEFAULT_ENGINE_CACHE}/{name}"
        profiles = {"min": _profile(inputs, 1), "opt": _profile(inputs, preferred_batch_sizes(options.max_batch)[0]
                                                                 if options.max_batch > 1 else 1),
                    "max": _profile(inputs, options.max_batch)}
        for which, shapes in profiles.items():
            if shapes is not None:
                accelerator.parameters[f"trt_profile_{which}_shapes"] = shapes
    return config


def check_config(text: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 max_batch: int, serving: str, source: str) -> Any:
    """Parse ``text`` with Triton's schema and check it against the graph: backend or platform,
    ``max_batch_size``, and every input and output (name, data type, dims, in the graph's order).
    Returns the parsed ``ModelConfig``; raises :class:`CamdeployError` naming the first mismatch."""
    from google.protobuf import text_format

    schema = model_config_schema()
    try:
        config = text_format.Parse(text, schema.ModelConfig())
    except text_format.ParseError as exc:
        raise CamdeployError(f"{source}: Triton's model configuration schema rejects it ({exc})") from exc
    if (config.backend or config.platform) != serving:
        raise CamdeployError(f"{source}: serves with {config.backend or config.platform!r}, expected {serving!r}")
    if config.max_batch_size != max_batch:
        raise CamdeployError(f"{source}: max_batch_size {config.max_batch_size}, expected {max_batch}")
    for kind, declared, graph in (("input", config.input, inputs), ("output", config.output, outputs)):
        got = [(t.name, schema.DataType.Name(t.data_type), tuple(t.dims)) for t in declared]
        want = [(t.name, t.data_type, t.dims) for t in graph]
        if got != want:
            raise CamdeployError(f"{source}: {kind}s {got} differ from the graph's {want}")
    return config



def write_repository(model: str | Path, repo: str | Path, options: TritonOptions = TritonOptions()
                     ) -> TritonRepository:
    """Write the Triton model folder ``repo/NAME`` for the exported graph ``model``.

    The folder is assembled beside its destination under a temporary name, its configuration is
    parsed back with Triton's schema and checked against the graph, and only then is it renamed
    into place; on any failure nothing is left behind and an existing folder is untouched. An
    existing folder is replaced only with ``options.force``. From the check of what exists to the
    rename, the model folder's lock (:mod:`camdeploy.lock`, ``repo/.NAME.lock``) is held: a second
    writer of the same folder is refused.
    """
    from google.protobuf import text_format

    model, repo = Path(model), Path(repo)
    name = options.name if options.name is not None else model.stem
    device = _validate(options, model, name)
    proto = _load(model)
    props = {p.key: p.value for p in proto.metadata_props if p.key.startswith(PREFIX)}
    spec = ModelSpec.from_props(props, source=f"MODEL {model}")
    inputs, outputs = graph_io(proto, str(model))
    if options.tensorrt_fp16:
        from camdeploy.graph import precision

        if precision(proto) == "int8":
            raise CamdeployError(
                f"--tensorrt-fp16: MODEL {model} is an INT8 Q/DQ graph, whose precision its Q/DQ nodes set; serve "
                "it with --device gpu alone (CUDA), or as a TensorRT engine (`camdeploy build`, then --plan)")
    config = build_config(name, inputs, outputs, props, spec, options, device)
    served = options.plan if options.plan is not None else model
    filename = "model.plan" if options.plan is not None else "model.onnx"
    header = [
        f"# Triton model configuration written by camdeploy {camdeploy.__version__} (`camdeploy triton`).",
        f"# Tensors, dims and parameters come from {model.name}; {VERSION}/{filename} has sha256 "
        f"{file_sha256(served)}.",
        "# A client learns the preprocessing from the camdeploy.* parameters: x = pixel * pixel_scale + pixel_offset",
        "# per RGB channel, pixels in 0..255, layout NCHW, resized to input_height x input_width.",
    ]
    body = text_format.MessageToString(config, as_utf8=True, use_short_repeated_primitives=True)
    text = "\n".join(header) + "\n" + body

    if repo.exists() and not repo.is_dir():
        raise CamdeployError(f"--repo {repo}: exists and is not a folder; expected a model repository folder")
    # The model folder's lock (repo/.NAME.lock), from the check of what exists to the rename.
    with hold_file(repo / name, label=f"--repo {repo} (model folder {name})"):
        target = repo / name
        existed = target.exists() or target.is_symlink()
        if existed and not options.force:
            raise CamdeployError(f"--repo {repo}: model folder {target} already exists; pass --force to replace it, "
                                 "or --name to write another")
        if existed and not target.is_dir():
            raise CamdeployError(f"--repo {repo}: {target} exists and is not a folder; remove it first")
        serving = PLAN_PLATFORM if options.plan is not None else BACKEND
        staging = repo / f".{name}.{os.getpid()}.partial"
        retired = repo / f".{name}.{os.getpid()}.old"
        moved = False
        try:
            repo.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            (staging / VERSION).mkdir(parents=True)
            shutil.copyfile(served, staging / VERSION / filename)
            (staging / CONFIG_FILE).write_text(text, encoding="utf-8")
            check_config((staging / CONFIG_FILE).read_text(encoding="utf-8"), inputs, outputs, options.max_batch,
                         serving, str(target / CONFIG_FILE))
            if existed:
                os.replace(target, retired)
                moved = True
            os.replace(staging, target)
        except BaseException as exc:
            if moved and not target.exists():
                os.replace(retired, target)  # put the replaced folder back
            if isinstance(exc, OSError):
                raise CamdeployError(f"--repo {repo}: cannot write there ({exc.strerror or exc})") from exc
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
        return TritonRepository(
            name=name, model_dir=target, config_path=target / CONFIG_FILE, model_path=target / VERSION / filename,
            serving=serving, device=device, instances=options.instances,
            max_batch=options.max_batch, preferred_batch_sizes=preferred_batch_sizes(options.max_batch),
            inputs=inputs, outputs=outputs, tensorrt_fp16=options.tensorrt_fp16, replaced=existed)
