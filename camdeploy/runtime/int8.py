"""How ONNX Runtime runs a Q/DQ INT8 graph on this machine: simulated or with int8 kernels.

A graph from ``camdeploy calibrate`` holds QuantizeLinear/DequantizeLinear (Q/DQ) pairs. ONNX
Runtime can run it two ways, and the choice is made here, once per session:

* **simulated int8** (session option ``session.disable_quant_qdq``): the Q/DQ pairs stay, every
  layer runs in float32 on dequantized values. This is what TensorRT computes from the same graph
  (int8 products summed in 32 bits, then rescaled), so it is how a graph calibrated for TensorRT
  (or any GPU) is evaluated on a CPU. It is slower than float32.
* **int8 kernels**: ONNX Runtime fuses each DQ -> op -> Q group into an integer kernel. On x86-64
  these multiply uint8 activations by int8 weights (U8S8). Without VNNI the kernels add pairs of
  products in saturating 16-bit arithmetic (see :mod:`camdeploy.runtime.cpu`), which is exact only
  when the weights fit in 7 bits (``|q| <= 64``, ONNX Runtime's ``reduce_range``). For wider
  weights on such a CPU, the session option ``session.x64quantprecision`` makes ONNX Runtime use
  its exact, slower U8U8 kernels instead.

``auto`` (the default) simulates graphs calibrated for TensorRT (metadata ``camdeploy.int8_target``;
signed int8 activations for graphs without it) and uses int8 kernels, exact on every CPU, for
graphs calibrated for the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from camdeploy.errors import CamdeployError
from camdeploy.runtime.cpu import CpuFeatures, cpu_features

INT8_MODES = ("auto", "simulate", "kernels")
TARGET_KEY = "camdeploy.int8_target"
"""Metadata key written by ``camdeploy calibrate``: ``tensorrt`` or ``cpu``."""
WEIGHT_BITS_KEY = "camdeploy.int8_weight_bits"
"""Metadata key written by ``camdeploy calibrate``: ``8``, or ``7`` with ``--reduce-range``. Hosts
that cannot read the weights (the C++ host) decide the U8U8 kernels from it; this module reads the
weights themselves."""
SEVEN_BIT = 64
"""Largest ``|q|`` of an int8 weight for which U8S8 pair sums cannot saturate: 2 * 255 * 64 < 2**15."""
SIMULATE = {"session.disable_quant_qdq": "1"}
EXACT_U8U8 = {"session.x64quantprecision": "1"}


@dataclass(frozen=True)
class QuantInfo:
    """What a Q/DQ graph says about its quantization."""

    target: str
    """``tensorrt`` or ``cpu``: from the metadata, else ``tensorrt`` for signed int8 activations."""
    activations: str
    """``int8`` or ``uint8``: the type of the quantized activations."""
    weight_max: int
    """Largest ``|q|`` of the int8 weights (127: full range; 64 or less: 7 bits)."""


@dataclass(frozen=True)
class Int8Plan:
    """How a session runs a Q/DQ graph: the session options to set and a label for reports."""

    mode: str
    """``simulate`` or ``kernels``."""
    session_config: dict[str, str]
    label: str
    """``simulated int8``, ``int8 kernels (U8S8)`` or ``int8 kernels (U8U8, no VNNI)``."""


def quant_info(model: onnx.ModelProto) -> QuantInfo | None:
    """The :class:`QuantInfo` of a Q/DQ graph, or None for a float graph."""
    nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not nodes:
        return None
    initializers = {t.name: t for t in model.graph.initializer}
    activation_types = {initializers[n.input[2]].data_type for n in nodes
                        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in initializers}
    weight_max = 0
    for node in nodes:
        tensor = initializers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if tensor is not None and tensor.data_type == onnx.TensorProto.INT8:
            weight_max = max(weight_max, int(np.abs(numpy_helper.to_array(tensor).astype(np.int16)).max(initial=0)))
    activations = "int8" if activation_types == {onnx.TensorProto.INT8} else "uint8"
    props = {p.key: p.value for p in model.metadata_props}
    target = props.get(TARGET_KEY) or ("tensorrt" if activations == "int8" else "cpu")
    return QuantInfo(target, activations, weight_max)


def plan_int8(info: QuantInfo, choice: str = "auto", features: CpuFeatures | None = None) -> Int8Plan:
    """How to run a graph with ``info`` on a CPU with ``features`` (default: this one)."""
    if choice not in INT8_MODES:
        raise CamdeployError(f"--int8 {choice!r}: expected one of {', '.join(INT8_MODES)}")
    features = features or cpu_features()
    if choice == "simulate" or (choice == "auto" and info.target == "tensorrt"):
        return Int8Plan("simulate", dict(SIMULATE), "simulated int8")
    if features.u8s8_saturates and info.weight_max > SEVEN_BIT:
        return Int8Plan("kernels", dict(EXACT_U8U8), "int8 kernels (U8U8, no VNNI)")
    return Int8Plan("kernels", {}, "int8 kernels (U8S8)")


def plan_for(model: onnx.ModelProto, choice: str = "auto", features: CpuFeatures | None = None) -> Int8Plan | None:
    """:func:`plan_int8` for a graph, or None when it is not quantized: what a session must be given."""
    info = quant_info(model)
    return None if info is None else plan_int8(info, choice, features)
