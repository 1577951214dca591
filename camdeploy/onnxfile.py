"""Writing files (ONNX models, engines) atomically: nothing half-written is ever left at the target path."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import onnx

from camdeploy.errors import CamdeployError

T = TypeVar("T")


def write_checked(output: Path, write: Callable[[Path], None], check: Callable[[Path], T],
                  label: str | None = None) -> T:
    """Write with ``write`` to a temporary name beside ``output``, run ``check`` on that file, and
    only then rename it to ``output``. On any failure the temporary file is removed and an
    existing ``output`` is left untouched; missing parent folders are created first. ``label``
    names the file in errors (default ``--output OUTPUT``)."""
    temporary = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        result = check(temporary)
        os.replace(temporary, output)
    except OSError as exc:
        raise CamdeployError(f"{label or f'--output {output}'}: cannot write there ({exc.strerror or exc})") from exc
    finally:
        if temporary.is_file():
            temporary.unlink()
    return result


def save_checked(model: onnx.ModelProto, output: Path, check: Callable[[Path], T]) -> T:
    """:func:`write_checked` for an ONNX model, saved as one self-contained file."""
    if output.suffix != ".onnx":
        raise CamdeployError(f"--output {output}: expected a path ending in .onnx")
    return write_checked(output, lambda path: onnx.save_model(model, str(path), save_as_external_data=False), check)
