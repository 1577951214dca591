"""Will TensorRT take this graph? Parse it with TensorRT's ONNX parser and build an engine.

Uses ``tensorrt_rtx`` (TensorRT for RTX, PyPI ``tensorrt-rtx-cu13``), whose parser and builder
work without a GPU, or ``tensorrt`` when that is installed instead. Building a serialized engine
is the real proof that every node, operator and attribute is accepted; running one needs a GPU
and is not done here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from camdeploy.errors import CamdeployError

MODULES = ("tensorrt_rtx", "tensorrt")


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


def check_tensorrt(path: str | Path, *, build: bool = True, batch: tuple[int, int, int] = (1, 8, 32),
                   module: str | None = None) -> TensorRTCheck:
    """Parse ``path`` with TensorRT's ONNX parser, list what it rejects, and build an engine with an
    optimization profile ``batch = (min, opt, max)`` for the dynamic batch dimension."""
    if not (1 <= batch[0] <= batch[1] <= batch[2]):
        raise CamdeployError(f"--batch {','.join(map(str, batch))}: expected min <= opt <= max, all >= 1")
    trt = load_tensorrt(module)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # as `camdeploy build` does
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    report = TensorRTCheck(trt.__name__, trt.__version__)
    if not parser.parse_from_file(str(path)):
        for i in range(parser.num_errors):
            error = parser.get_error(i)
            report.issues.append(ParserIssue(error.node_name() or f"#{error.node()}", error.node_operator(),
                                             error.desc()))
        if not report.issues:
            report.issues.append(ParserIssue("?", "?", "the parser failed without saying why"))
        return report
    if not build:
        return report
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        shapes = [tuple(b if d == -1 else d for d in dims) for b in batch]
        profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        report.build_error = "the builder returned no engine (see TensorRT's messages above)"
    else:
        report.engine_bytes = int(engine.nbytes)
    return report
