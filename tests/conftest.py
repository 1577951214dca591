"""Shared fixtures and the marker policy.

* ``integration``: the real EfficientNet-Lite0 and real photos (needs the export and demo extras).
* ``data``: real images under ``../shared/data`` (or ``$CAMDEPLOY_DATA``); skipped with a reason
  when that folder is absent.
* ``gpu``: needs an NVIDIA GPU, decided by ONNX Runtime's own provider check; skipped with a
  reason otherwise.
* ``cuda``: needs a GPU that CUDA sees through cuda-python (the TensorRT runner); skipped with
  CUDA's own reason otherwise. Nothing is ever "passed" by returning early.
* ``torch_cuda``: needs PyTorch with a CUDA GPU (the reference on ``--device cuda``); skipped with
  the reason otherwise.

* ``ray``: needs Ray (the ``ray`` extra); skipped with a reason without it, except under CI.

Tools that CI installs (``.ci/run`` sets ``CAMDEPLOY_CI=1``) are requested through
:func:`require_tool`: outside CI a missing tool skips the test with the reason, under CI it fails
it, so that CI never counts a skipped check as passed. The same holds for Ray and for camdeploy's C
extension (:func:`require_native`; the ``native`` fixture runs a test on each box implementation).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CAMDEPLOY_DATA", REPO.parent / "shared" / "data"))
DEV = DATA / "imagenet-val" / "dev"


def require_tool(name: str, purpose: str) -> str:
    """The path of the command ``name``; skip the test without it, or fail under CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({purpose}); .ci/run installs it"
        if os.environ.get("CAMDEPLOY_CI"):
            pytest.fail(f"under CI: {message}")
        pytest.skip(message)
    return path


def require_native() -> None:
    """Skip the test without camdeploy's C extension (built at install where a C compiler is
    present), or fail under CI, which installs a compiler and builds it."""
    from camdeploy.runtime.boxes import NATIVE

    if not NATIVE:
        message = ("camdeploy's C extension (camdeploy._boxes) is not built: no C compiler or Python "
                   "headers at install; .ci/run installs them")
        if os.environ.get("CAMDEPLOY_CI"):
            pytest.fail(f"under CI: {message}")
        pytest.skip(message)


@pytest.fixture(params=[False, True], ids=["opencv", "c"])
def native(request: pytest.FixtureRequest) -> bool:
    """Each host box implementation in turn: OpenCV and NumPy, then the C extension."""
    if request.param:
        require_native()
    return bool(request.param)


def gpu_reason() -> str | None:
    """Why GPU tests cannot run here, or None when ONNX Runtime offers CUDA."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"no GPU: ONNX Runtime {ort.__version__} here offers only "
                f"{', '.join(ort.get_available_providers())} (install the 'gpu' extra on a CUDA machine)")
    return None


def cuda_reason() -> str | None:
    """Why the TensorRT runner cannot run engines here, or None when CUDA sees a GPU."""
    try:
        from camdeploy.runtime.cuda import require_gpu

        require_gpu()
    except Exception as exc:  # CamdeployError, or cuda-python missing
        return str(exc)
    return None


def torch_cuda_reason() -> str | None:
    """Why the PyTorch reference cannot run on CUDA here, or None when PyTorch sees a GPU."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (the 'export' extra)"
    if not torch.cuda.is_available():
        build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        return f"no GPU for PyTorch: torch {torch.__version__} is {build} and torch.cuda.is_available() is False"
    return None


def tensorrt_reason() -> str | None:
    """Why TensorRT tests cannot run here, or None when a TensorRT module imports."""
    from camdeploy.errors import CamdeployError
    from camdeploy.runtime.tensorrt_engine import load_tensorrt

    try:
        load_tensorrt()
    except CamdeployError as exc:
        return str(exc)
    return None


def ray_reason() -> str | None:
    """Why Ray tests cannot run here, or None when Ray is installed."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed (the 'ray' extra); .ci/run installs it"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    data_skip = pytest.mark.skip(reason=f"real data folder {DEV} is absent (it sits beside the repo "
                                 "as ../shared/data, or set CAMDEPLOY_DATA)")
    reason = None
    for item in items:
        if item.get_closest_marker("data") and not (DEV / "annotations.json").is_file():
            item.add_marker(data_skip)
        if item.get_closest_marker("tensorrt") and tensorrt_reason():
            item.add_marker(pytest.mark.skip(reason=tensorrt_reason()))
        if item.get_closest_marker("ray") and ray_reason() and not os.environ.get("CAMDEPLOY_CI"):
            item.add_marker(pytest.mark.skip(reason=ray_reason()))  # under CI the test fails importing ray
        if item.get_closest_marker("torch_cuda") and torch_cuda_reason():
            item.add_marker(pytest.mark.skip(reason=str(torch_cuda_reason())))
        if item.get_closest_marker("cuda") and cuda_reason():
            item.add_marker(pytest.mark.skip(reason=f"no usable GPU: {cuda_reason()}"))
        if item.get_closest_marker("gpu"):
            reason = reason or gpu_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def lite0_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EfficientNet-Lite0 exported once per test session with the CLI defaults."""
    from camdeploy.export.exporter import ExportOptions, export_onnx
    from camdeploy.export.sources import load_model
    from camdeploy.labels import imagenet_classes

    source = load_model("efficientnet_lite0")
    path = tmp_path_factory.mktemp("lite0") / "efficientnet_lite0.onnx"
    export_onnx(source.module, path, ExportOptions(
        input_size=source.input_size, normalization=source.normalization,
        class_names=tuple(imagenet_classes()), source_model=source.name))
    return path


def lying_jpeg(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a JPEG) with its start-of-frame header claiming ``width x height``: the data then
    runs out long before the pixels the header promises (a hostile or damaged file)."""
    import struct

    at = 2
    while at + 9 < len(data):
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2:at + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return data[:at + 5] + struct.pack(">HH", height, width) + data[at + 9:]
        at += 2 + length
    raise ValueError("no start-of-frame marker")
