"""Writing files atomically: nothing half-written is ever left at the target path; and the one
SHA-256 of a file that runs, Triton repositories and Ray workers record and check.

Every file camdeploy writes whole (ONNX models, engines, reports, JSON) goes through
:func:`write_checked`: the content is written to a hidden temporary file beside the target, named
``.NAME.PID.partial``, checked, then renamed over the target. A temporary file left by a process
that was killed (SIGKILL, power loss) is removed by the next write to the same target, so such
files cannot pile up. Files that grow while a run goes on (``results.jsonl``) are handled by
:mod:`camdeploy.runtime.pipeline` instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camdeploy.errors import CamdeployError

if TYPE_CHECKING:
    import onnx

SUFFIX = ".partial"


def temporary_path(target: Path) -> Path:
    """This process's temporary name for ``target``."""
    return target.with_name(f".{target.name}.{os.getpid()}{SUFFIX}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (or cannot tell): leave its file alone
    return True


def remove_stale(target: Path) -> list[Path]:
    """Remove the temporary files of ``target`` whose writing process is gone; return them."""
    removed: list[Path] = []
    prefix = f".{target.name}."
    try:
        candidates = list(target.parent.iterdir())
    except OSError:
        return removed
    for path in candidates:
        middle = path.name[len(prefix):-len(SUFFIX)] if path.name.startswith(prefix) else ""
        if path.name.endswith(SUFFIX) and middle.isdigit() and not _alive(int(middle)):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def _unchecked(path: Path) -> None:
    return None


def write_checked(output: Path, write: Callable[[Path], object], check: Callable[[Path], Any] = _unchecked,
                  label: str | None = None) -> Any:
    """Write with ``write`` to a temporary name beside ``output``, run ``check`` on that file, and
    only then rename it to ``output``; return what ``check`` returned. On any failure, an
    interruption included, the temporary file is removed and an existing ``output`` is left
    untouched; missing parent folders are created first. ``label`` names the file in errors
    (default ``--output OUTPUT``)."""
    output = Path(output)
    temporary = temporary_path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(output)
        write(temporary)
        result = check(temporary)
        os.replace(temporary, output)
    except OSError as exc:
        raise CamdeployError(f"{label or f'--output {output}'}: cannot write there ({exc.strerror or exc})") from exc
    finally:
        if temporary.is_file():
            temporary.unlink()
    return result


def write_bytes(output: Path, data: bytes, label: str | None = None) -> None:
    """:func:`write_checked` for bytes."""
    write_checked(output, lambda path: path.write_bytes(data), label=label)


def write_text(output: Path, text: str, label: str | None = None) -> None:
    """:func:`write_checked` for UTF-8 text."""
    write_checked(output, lambda path: path.write_text(text, encoding="utf-8"), label=label)


def write_json(output: Path, value: object, label: str | None = None) -> None:
    """:func:`write_checked` for a JSON document (indented, UTF-8)."""
    write_text(output, json.dumps(value, indent=2, ensure_ascii=False) + "\n", label=label)


def check_onnx_output(output: Path, label: str | None = None) -> None:
    """Refuse an output path that is not ``*.onnx`` or is a folder (before any work is done)."""
    if output.suffix != ".onnx":
        raise CamdeployError(f"{label or f'--output {output}'}: expected a path ending in .onnx")
    if output.is_dir():
        raise CamdeployError(f"{label or f'--output {output}'}: is a folder; expected a file path ending in .onnx")


def save_onnx(model: onnx.ModelProto, output: Path, check: Callable[[Path], Any] = _unchecked,
              label: str | None = None) -> Any:
    """:func:`write_checked` for an ONNX model, saved as one self-contained file (``.onnx`` only)."""
    import onnx

    output = Path(output)
    check_onnx_output(output, label)
    return write_checked(output, lambda path: onnx.save_model(model, str(path), save_as_external_data=False),
                         check, label)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (a model file need not fit twice in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
