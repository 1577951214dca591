"""The record of what ran: versions of the libraries, and the machine, for every report."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import camdeploy


def versions() -> dict[str, str]:
    """camdeploy, Python, NumPy, ONNX Runtime, OpenCV, torch when it is loaded, and which
    implementation boxes on the host (``host boxes``: ``C`` with camdeploy's C extension, else
    ``OpenCV``)."""
    import cv2
    import numpy as np

    from camdeploy.runtime.boxes import NATIVE

    found = {"camdeploy": camdeploy.__version__, "python": platform.python_version(), "numpy": np.__version__,
             "opencv": cv2.__version__, "host boxes": "C" if NATIVE else "OpenCV"}
    try:
        import onnxruntime

        found["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        found["onnxruntime"] = "not installed"
    if "torch" in sys.modules:
        found["torch"] = sys.modules["torch"].__version__
    return found


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None) -> dict[str, object]:
    """CPU (name, CPUID ISA, /proc/cpuinfo flags), threads, platform and versions."""
    from camdeploy.runtime.cpu import cpu_features, cpuinfo_flags

    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "isa": cpu_features().as_dict(), "cpuinfo_flags": cpuinfo_flags(), "versions": versions()}
