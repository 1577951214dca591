"""TensorRT engines from exported graphs: parse, check, build and cache, with or without a GPU.

Current API only (TensorRT 10/11 and TensorRT for RTX): networks are parsed from ONNX as
*strongly typed*, so precision comes from the graph itself: an FP16 ONNX for FP16, a Q/DQ ONNX
(``camdeploy calibrate``) for INT8; there are no builder precision flags or implicit calibrators.
TF32 is off unless asked for, so that an fp32 engine stays close to the fp32 reference.

``tensorrt_rtx`` (TensorRT for RTX, PyPI ``tensorrt-rtx-cu13``) parses and builds without a GPU:
building a serialized engine is the real proof that every node, operator and attribute is
accepted. NVIDIA's ``tensorrt`` is used instead when installed. On a GPU, TensorRT for RTX runs
only on the compute capabilities it supports (:data:`RTX_COMPUTE_CAPABILITIES`: GeForce and RTX
cards, not data-centre GPUs such as the H100 or H200); there it is refused, never used.
Everything is imported lazily.

Engines are cached under ``<cache>/tensorrt/``, keyed by the ONNX file's SHA-256, the TensorRT
module and version, the GPU (name and compute capability) and the build options; a plan is
written atomically, so a crash never leaves a truncated engine behind.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from camdeploy.atomic import write_bytes
from camdeploy.errors import CamdeployError
from camdeploy.runtime import cuda

MODULES = ("tensorrt_rtx", "tensorrt")
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.6", "8.9", "12.x")
"""The GPUs TensorRT for RTX runs on (its support matrix: Turing, Ampere and Ada RTX cards, Blackwell)."""


def rtx_supports(gpu: str) -> bool:
    """Whether TensorRT for RTX runs on ``gpu`` (a :func:`~camdeploy.runtime.cuda.gpu_descriptor`,
    ``name (sm_XY)``); True without a GPU, where it only parses and builds."""
    found = re.search(r"\(sm_(\d+)(\d)\)$", gpu)
    if gpu == cuda.NO_GPU or found is None:
        return True
    major, minor = found.groups()
    return major == "12" or f"{major}.{minor}" in RTX_COMPUTE_CAPABILITIES


def check_rtx_gpu(trt: ModuleType, gpu: str, chosen: str | None) -> None:
    """Refuse TensorRT for RTX on a GPU outside :data:`RTX_COMPUTE_CAPABILITIES`, in one line.

    ``chosen``: the module asked for (``--rtx`` gives ``tensorrt_rtx``), or None when TensorRT for
    RTX was the fallback because NVIDIA's ``tensorrt`` is not installed."""
    if trt.__name__ != "tensorrt_rtx" or rtx_supports(gpu):
        return
    why = "--rtx: TensorRT for RTX" if chosen else "NVIDIA's tensorrt is not installed, and TensorRT for RTX"
    raise CamdeployError(f"{why} does not run on {gpu}: it supports compute capabilities "
                         f"{', '.join(RTX_COMPUTE_CAPABILITIES)} only; install NVIDIA's tensorrt "
                         "(pip install 'camdeploy[tensorrt]') or use --backend ort")


def load_tensorrt(prefer: str | None = None) -> ModuleType:
    """The TensorRT Python module: ``prefer`` if given, else the first of :data:`MODULES` found."""
    for name in ([prefer] if prefer else MODULES):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise CamdeployError(
        "TensorRT is not installed: install the 'tensorrt-rtx' extra (pip install 'camdeploy[tensorrt-rtx]', "
        "TensorRT for RTX, whose parser and builder run without a GPU) or NVIDIA's tensorrt package"
    )


def check_batch_profile(batch: tuple[int, ...]) -> tuple[int, int, int]:
    """A ``--batch min,opt,max`` profile, checked."""
    if len(batch) != 3:
        raise CamdeployError(f"--batch {','.join(map(str, batch))}: expected three numbers min,opt,max")
    low, opt, high = batch
    if not 1 <= low <= opt <= high:
        raise CamdeployError(f"--batch {low},{opt},{high}: expected min <= opt <= max, all >= 1")
    return low, opt, high


@dataclass(frozen=True)
class EngineOptions:
    """How to build an engine."""

    batch: tuple[int, int, int] = (1, 8, 32)
    """Optimization profile of the dynamic batch: min, opt, max."""
    module: str | None = None
    """``tensorrt``, ``tensorrt_rtx`` (TensorRT for RTX), or None: ``tensorrt`` if installed, else
    ``tensorrt_rtx``."""
    tf32: bool = False
    workspace_mib: int | None = None

    def validate(self) -> None:
        check_batch_profile(self.batch)
        if self.module not in (None, *MODULES):
            raise CamdeployError(f"module {self.module!r}: expected tensorrt or tensorrt_rtx")

    def tensorrt(self) -> ModuleType:
        """The module to build with: :attr:`module`, else ``tensorrt`` if installed, else ``tensorrt_rtx``."""
        if self.module:
            return load_tensorrt(self.module)
        try:
            return load_tensorrt("tensorrt")
        except CamdeployError:
            return load_tensorrt()


@dataclass
class ParserIssue:
    node: str
    operator: str
    description: str


@dataclass
class TensorRTCheck:
    """Outcome of :func:`check_tensorrt`."""

    module: str
    version: str
    issues: list[ParserIssue] = field(default_factory=list)
    engine_bytes: int | None = None
    """Size of the built engine; None when not built (parse errors, or ``build=False``)."""
    build_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.issues and self.build_error is None


@dataclass
class _Parsed:
    """A network parsed from ONNX; the parser is kept because it must outlive the network."""

    builder: Any
    network: Any
    parser: Any
    issues: list[ParserIssue]


def _parse(trt: ModuleType, source: str | Path) -> _Parsed:
    """A strongly typed network (where the module has the flag; the only mode in TensorRT 11)
    parsed from ``source``."""
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    issues = []
    if not parser.parse_from_file(str(source)):
        for i in range(parser.num_errors):
            error = parser.get_error(i)
            issues.append(ParserIssue(error.node_name() or f"#{error.node()}", error.node_operator(), error.desc()))
        issues = issues or [ParserIssue("?", "?", "the parser failed without saying why")]
    return _Parsed(builder, network, parser, issues)


def _build(trt: ModuleType, parsed: _Parsed, options: EngineOptions) -> bytes | None:
    """Serialized engine with a profile ``options.batch`` for every dynamic batch dimension."""
    builder, network = parsed.builder, parsed.network
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "TF32"):
        (config.set_flag if options.tf32 else config.clear_flag)(trt.BuilderFlag.TF32)
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        profile.set_shape(tensor.name, *[tuple(b if d == -1 else d for d in dims) for b in options.batch])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    return None if plan is None else bytes(plan)


def check_tensorrt(path: str | Path, *, build: bool = True, batch: tuple[int, int, int] = (1, 8, 32),
                   module: str | None = None) -> TensorRTCheck:
    """Parse ``path`` with TensorRT's ONNX parser, list what it rejects, and build an engine with an
    optimization profile ``batch = (min, opt, max)`` for the dynamic batch dimension."""
    options = EngineOptions(batch=check_batch_profile(batch), module=module)
    trt = load_tensorrt(module)
    parsed = _parse(trt, path)
    report = TensorRTCheck(trt.__name__, trt.__version__, parsed.issues)
    if parsed.issues or not build:
        return report
    plan = _build(trt, parsed, options)
    if plan is None:
        report.build_error = "the builder returned no engine (see TensorRT's messages above)"
    else:
        report.engine_bytes = len(plan)
    return report


def engine_key(onnx_bytes: bytes, module: str, version: str, gpu: str, options: EngineOptions) -> str:
    """Cache key: what makes two engines interchangeable."""
    fields = {"onnx": hashlib.sha256(onnx_bytes).hexdigest(), "module": module, "version": version, "gpu": gpu,
              "options": {k: v for k, v in asdict(options).items() if k != "module"}}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class BuiltEngine:
    path: Path
    cached: bool
    """True when the engine came from the cache instead of being built now."""
    module: str
    version: str
    gpu: str


def build_engine(onnx_path: str | os.PathLike[str], options: EngineOptions = EngineOptions(),
                 output: str | os.PathLike[str] | None = None, cache_folder: Path | None = None,
                 device: int = 0) -> BuiltEngine:
    """Build a serialized engine for ``onnx_path`` (or take it from the cache) and return its path;
    with ``output``, also write a copy there. Works without a GPU with TensorRT for RTX."""
    from camdeploy.cache import cache_dir

    options.validate()
    source = Path(onnx_path)
    from camdeploy.graph import check_model_file

    check_model_file(source)
    try:
        onnx_bytes = source.read_bytes()
    except OSError as exc:
        raise CamdeployError(f"MODEL {source}: cannot read it ({exc.strerror or exc})") from exc
    trt = options.tensorrt()
    gpu = cuda.gpu_descriptor(device)
    check_rtx_gpu(trt, gpu, options.module)
    if gpu != cuda.NO_GPU:  # TensorRT builds for the current device: make it the one named in the key
        cuda.check(cuda.cudart().cudaSetDevice(device), "cudaSetDevice")
    key = engine_key(onnx_bytes, trt.__name__, trt.__version__, gpu, options)
    cached = (cache_folder or cache_dir() / "tensorrt") / f"{source.stem}-{key}.plan"
    hit = cached.is_file()
    if not hit:
        parsed = _parse(trt, source)
        plan = None if parsed.issues else _build(trt, parsed, options)
        if plan is None:  # say why: the parser's or the builder's complaint
            problems = "; ".join(f"node {i.node} ({i.operator}): {i.description}" for i in parsed.issues)
            raise CamdeployError(f"TensorRT ({trt.__name__} {trt.__version__}) cannot build {source}: "
                                 f"{problems or 'the builder returned no engine'}")
        write_bytes(cached, plan, label=f"engine {cached}")
    if output is not None:
        write_bytes(Path(output), cached.read_bytes(), label=f"--output {output}")
    return BuiltEngine(Path(output) if output is not None else cached, hit, trt.__name__, trt.__version__, gpu)
