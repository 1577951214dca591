"""How a Q/DQ graph runs on ONNX Runtime's CPU provider: the decision per CPU, and its effect.

The decision logic is tested with the CPU faked. Its effect is tested on real kernels: under
``qemu-x86_64 -cpu Haswell`` (an AVX2 CPU without AVX512 or VNNI, whatever CPU runs the test) a
hand-made convolution whose U8S8 pair sums overflow 16 bits shows the hazard with ONNX Runtime's
default options, and the session options camdeploy chooses remove it.
"""

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import REPO, require_tool
from onnx import TensorProto, helper, numpy_helper

from camdeploy.errors import CamdeployError
from camdeploy.runtime.cpu import CpuFeatures, cpu_features
from camdeploy.runtime.int8 import EXACT_U8U8, SIMULATE, QuantInfo, plan_for, plan_int8, quant_info

VNNI = CpuFeatures(x86_64=True, avx2=True, avx512f=True, avx512_vnni=True)
AVX512 = CpuFeatures(x86_64=True, avx2=True, avx512f=True)
AVX2 = CpuFeatures(x86_64=True, avx2=True)
ARM = CpuFeatures(x86_64=False)


@pytest.mark.parametrize(("target", "weight_max", "cpu", "mode", "config"), [
    ("tensorrt", 127, VNNI, "simulate", SIMULATE),  # what TensorRT computes, on any CPU
    ("tensorrt", 127, AVX2, "simulate", SIMULATE),
    ("tensorrt", 64, ARM, "simulate", SIMULATE),
    ("cpu", 127, VNNI, "kernels", {}),  # VNNI sums in 32 bits: exact
    ("cpu", 127, AVX512, "kernels", EXACT_U8U8),  # AVX512 without VNNI saturates like AVX2
    ("cpu", 127, AVX2, "kernels", EXACT_U8U8),
    ("cpu", 64, AVX2, "kernels", {}),  # 7-bit weights cannot overflow: 2 * 255 * 64 < 2**15
    ("cpu", 65, AVX2, "kernels", EXACT_U8U8),
    ("cpu", 127, ARM, "kernels", {}),
])
def test_auto_plan_per_target_weights_and_cpu(target, weight_max, cpu, mode, config):
    plan = plan_int8(QuantInfo(target, "int8" if target == "tensorrt" else "uint8", weight_max), "auto", cpu)
    assert (plan.mode, plan.session_config) == (mode, config)
    assert plan.label == {"simulate": "simulated int8", "kernels": "int8 kernels (U8U8, no VNNI)" if config
                          else "int8 kernels (U8S8)"}[mode]


def test_explicit_choices_and_a_bad_one():
    info = QuantInfo("tensorrt", "int8", 127)
    assert plan_int8(info, "kernels", AVX2).session_config == EXACT_U8U8  # kernels, but never saturating ones
    assert plan_int8(info, "kernels", VNNI).session_config == {}
    assert plan_int8(QuantInfo("cpu", "uint8", 127), "simulate", VNNI).session_config == SIMULATE
    with pytest.raises(CamdeployError, match="--int8 'fast': expected one of auto, simulate, kernels"):
        plan_int8(info, "fast", VNNI)


def test_this_cpu_is_read_from_cpuid():
    features = cpu_features()
    assert features.x86_64 == (platform.machine().lower() in ("x86_64", "amd64"))
    if features.avx512_vnni:
        assert features.avx512f and not features.u8s8_saturates
    assert features.isa in ("avx512_vnni", "avx512f", "avx2", "sse") or not features.x86_64


def saturating_conv(weight: int = 127, channels: int = 64) -> onnx.ModelProto:
    """``y = conv1x1(x)`` in Q/DQ form, uint8 activations at 255, int8 weights at ``weight``: the exact
    result is ``channels`` everywhere (each weight dequantizes to 1); a U8S8 kernel without VNNI
    clips each pair of products to 32767 and gives about half of it for ``weight`` 127."""
    inits = [numpy_helper.from_array(np.array(1 / 255, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
             numpy_helper.from_array(np.full((8, channels, 1, 1), weight, np.int8), "w_q"),
             numpy_helper.from_array(np.full(8, 1 / weight, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(8, np.int8), "w_zero"),
             numpy_helper.from_array(np.array(0.5, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "y_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0),
             helper.make_node("Conv", ["x_dq", "w"], ["conv"]),
             helper.make_node("QuantizeLinear", ["conv", "y_scale", "y_zero"], ["y_q"]),
             helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["y"])]
    graph = helper.make_graph(nodes, "saturating", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  [1, channels, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_quant_info_of_hand_made_graphs():
    info = quant_info(saturating_conv())
    assert info == QuantInfo("cpu", "uint8", 127)  # uint8 activations, no metadata: made for the CPU
    assert quant_info(saturating_conv(weight=64)).weight_max == 64
    tagged = saturating_conv()
    onnx.helper.set_model_props(tagged, {"camdeploy.int8_target": "tensorrt"})
    assert quant_info(tagged).target == "tensorrt"
    assert quant_info(helper.make_model(helper.make_graph([], "empty", [], []))) is None
    assert plan_for(helper.make_model(helper.make_graph([], "empty", [], []))) is None


# Runs in a child process, under qemu for the AVX2 case: the kernels ONNX Runtime picks there.
CHILD = r"""
import json, sys
import numpy as np, onnx, onnxruntime as ort
from camdeploy.runtime.cpu import cpu_features
from camdeploy.runtime.int8 import plan_for

def run(path, config):
    options = ort.SessionOptions()
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return float(session.run(None, {"x": np.ones((1, 64, 4, 4), np.float32)})[0].mean())

out = {"features": cpu_features().as_dict()}
for path in sys.argv[1:]:
    plan = plan_for(onnx.load(path))
    out[path] = {"default": run(path, {}), "camdeploy": run(path, plan.session_config), "label": plan.label}
print(json.dumps(out))
"""


def _child(tmp_path: Path, prefix: list[str]) -> dict:
    paths = []
    for weight in (127, 64):
        paths.append(str(tmp_path / f"conv{weight}.onnx"))
        onnx.save(saturating_conv(weight), paths[-1])
    done = subprocess.run([*prefix, sys.executable, "-c", CHILD, *paths], capture_output=True, text=True,
                          cwd=REPO, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    return {"features": result["features"], 127: result[paths[0]], 64: result[paths[1]]}


def test_camdeploy_sessions_are_exact_on_this_cpu(tmp_path):
    result = _child(tmp_path, [])
    assert result[127]["camdeploy"] == pytest.approx(64.0) and result[64]["camdeploy"] == pytest.approx(64.0)


def test_without_vnni_default_kernels_saturate_and_camdeploy_sessions_do_not(tmp_path):
    """The test that fails on the old behaviour, whatever CPU runs it: AVX2 emulated by qemu."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"emulates an x86-64 AVX2 CPU for x86-64 Python; this machine is {platform.machine()}")
    qemu = require_tool("qemu-x86_64", "Debian's qemu-user, to run ONNX Runtime's AVX2 kernels on any x86-64 CPU")
    result = _child(tmp_path, [qemu, "-cpu", "Haswell"])
    assert result["features"] == {"isa": "avx2", "x86_64": True, "avx2": True, "avx512f": False,
                                  "avx512_vnni": False}
    full, seven_bit = result[127], result[64]
    assert full["default"] < 40.0, "ONNX Runtime's U8S8 kernel no longer saturates on AVX2: revisit int8.py"
    assert full["label"] == "int8 kernels (U8U8, no VNNI)" and full["camdeploy"] == pytest.approx(64.0)
    # 7-bit weights keep the fast U8S8 kernels, exact even without VNNI.
    assert seven_bit["label"] == "int8 kernels (U8S8)"
    assert seven_bit["default"] == pytest.approx(64.0) and seven_bit["camdeploy"] == pytest.approx(64.0)


def test_simulated_int8_is_float_math_on_dequantized_values(tmp_path):
    """What TensorRT computes from Q/DQ: the plan of a TensorRT-target graph runs exactly that."""
    model = saturating_conv(weight=100)
    onnx.helper.set_model_props(model, {"camdeploy.int8_target": "tensorrt"})
    path = tmp_path / "trt.onnx"
    onnx.save(model, str(path))
    plan = plan_for(model)
    assert plan is not None and plan.label == "simulated int8"
    options = ort.SessionOptions()
    for key, value in plan.session_config.items():
        options.add_session_config_entry(key, value)
    x = np.random.default_rng(0).uniform(0, 1, (1, 64, 4, 4)).astype(np.float32)
    simulated = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    fused = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    reference = _simulate_in_numpy(x, model)
    np.testing.assert_allclose(simulated, reference, atol=1e-5)
    assert np.abs(fused - reference).max() <= 0.5 + 1e-6  # one output step at most, where rounding differs


def _simulate_in_numpy(x: np.ndarray, model: onnx.ModelProto) -> np.ndarray:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    xq = np.clip(np.rint(x / inits["x_scale"]), 0, 255)
    w = inits["w_q"].astype(np.float64)[:, :, 0, 0] * inits["w_scale"][:, None]
    conv = np.einsum("oc,nchw->nohw", w, xq * inits["x_scale"])
    return np.clip(np.rint(conv / inits["y_scale"]), 0, 255) * inits["y_scale"]
