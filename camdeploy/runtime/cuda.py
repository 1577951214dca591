"""The CUDA runtime through cuda-python (device memory, streams, events); no PyTorch needed.

Imported lazily by the TensorRT runner and the engine builder; without cuda-python, or without a
GPU, the errors say why in one line.
"""

from __future__ import annotations

from typing import Any

from camdeploy.errors import CamdeployError

NO_GPU = "no GPU"


def cudart() -> Any:
    """cuda-python's runtime module."""
    try:
        from cuda.bindings import runtime  # cuda-python 12.6+
    except ImportError:
        try:
            from cuda import cudart as runtime  # type: ignore[no-redef]  # older cuda-python
        except ImportError:
            raise CamdeployError("the TensorRT runner needs cuda-python for GPU memory: pip install "
                                 "'camdeploy[tensorrt]' (or the 'tensorrt-rtx' extra)") from None
    return runtime


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(error, value...)`` tuple; raise with CUDA's message on error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        message = cudart().cudaGetErrorString(error)[1]
        message = message.decode() if isinstance(message, bytes) else str(message)
        raise CamdeployError(f"CUDA: {what} failed: {message}")
    return values[0] if len(values) == 1 else values


def gpu_descriptor(device: int = 0) -> str:
    """``name (compute capability)`` of the GPU, or :data:`NO_GPU` when CUDA (or cuda-python) sees none."""
    try:
        runtime = cudart()
    except CamdeployError:
        return NO_GPU
    error, count = runtime.cudaGetDeviceCount()
    if int(error) != 0 or not count:
        return NO_GPU
    if device >= count:
        raise CamdeployError(f"--device {device}: CUDA sees {count} GPU(s)")
    props = check(runtime.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return f"{name.strip(chr(0))} (sm_{props.major}{props.minor})"


def has_driver() -> bool:
    """Whether NVIDIA's driver library (``libcuda.so.1``, ``nvcuda.dll``) can be loaded at all."""
    import ctypes
    import sys

    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    return True


def require_gpu(device: int = 0) -> str:
    """The GPU descriptor, or a clear error saying why there is no usable GPU."""
    runtime = cudart()
    error, count = runtime.cudaGetDeviceCount()
    if int(error) != 0 or not count:
        if not has_driver():  # CUDA then says 'driver version is insufficient', which misleads
            why = "this machine has no NVIDIA driver (libcuda cannot be loaded), so no GPU"
        else:
            message = runtime.cudaGetErrorString(error)[1] if int(error) != 0 else b"no CUDA device"
            why = f"CUDA says {message.decode() if isinstance(message, bytes) else message!r}"
        raise CamdeployError(f"the TensorRT runner needs an NVIDIA GPU: {why}; engines can still be built "
                             "without one (`camdeploy build --rtx`), or use --backend ort")
    return gpu_descriptor(device)


class DeviceBuffer:
    """One cudaMalloc'd block, grown on demand."""

    def __init__(self) -> None:
        self.pointer = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.pointer = int(check(cudart().cudaMalloc(nbytes), "cudaMalloc"))
            self.nbytes = nbytes
        return self.pointer

    def free(self) -> None:
        if self.pointer:
            check(cudart().cudaFree(self.pointer), "cudaFree")
        self.pointer, self.nbytes = 0, 0
