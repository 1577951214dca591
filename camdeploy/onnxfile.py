"""Writing ONNX files atomically: nothing half-written is ever left at the target path."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import onnx

from camdeploy.errors import CamdeployError

T = TypeVar("T")


def save_checked(model: onnx.ModelProto, output: Path, check: Callable[[Path], T]) -> T:
    """Save ``model`` under a temporary name beside ``output``, run ``check`` on that file, and
    only then rename it to ``output``. On any failure the temporary file is removed and an
    existing ``output`` is left untouched; missing parent folders are created first."""
    if output.suffix != ".onnx":
        raise CamdeployError(f"--output {output}: expected a path ending in .onnx")
    temporary = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(model, str(temporary), save_as_external_data=False)
        result = check(temporary)
        os.replace(temporary, output)
    except OSError as exc:
        raise CamdeployError(f"--output {output}: cannot write there ({exc.strerror or exc})") from exc
    finally:
        if temporary.is_file():
            temporary.unlink()
    return result
