"""Expanding the files and folders a user names into the images to process, accounting for every
entry that is left out.

Folders are walked recursively, in sorted order (file names compared as text), following symbolic
links to folders; a link that leads back to one of its own ancestors (a loop) is reported and not
followed. An entry named like an image that is not a regular file (a broken link, a fifo, a
device) is reported as a problem; a folder named like an image is walked, with a warning. A path
that does not exist is an error: it is a mistyped argument, not a file to skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from camdeploy.errors import CamdeployError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class Listing:
    """What :func:`list_inputs` found."""

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` for every entry left out: loops, entries that are not files, unreadable folders."""
    warnings: list[str] = field(default_factory=list)


def _not_a_file(path: str) -> str:
    """The reason an entry is left out, the same whether it is named or found, linked to or not:
    what its target is (``a character device``...), or a link to nothing."""
    from camdeploy.graph import not_a_file

    why = not_a_file(path) or "not a regular file"
    return why if why.startswith(("a symbolic link", "cannot")) else f"not a regular file ({why})"


def _looks_like_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _walk(folder: str, ancestors: dict[tuple[int, int], str], listing: Listing) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        listing.problems.append((folder, f"cannot list the folder ({exc.strerror or exc})"))
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError as exc:
            listing.problems.append((entry.path, f"cannot read the entry ({exc.strerror or exc})"))
            continue
        if is_dir:
            try:
                info = entry.stat(follow_symlinks=True)
            except OSError as exc:
                listing.problems.append((entry.path, f"cannot read the folder ({exc.strerror or exc})"))
                continue
            key = (info.st_dev, info.st_ino)
            if key in ancestors:
                listing.problems.append((entry.path, f"symbolic link loop: it leads back to {ancestors[key]}, "
                                                     "which contains it; not followed"))
                continue
            if _looks_like_image(entry.name):
                listing.warnings.append(f"{entry.path} is a folder, not an image file; its contents are listed")
            _walk(entry.path, {**ancestors, key: entry.path}, listing)
        elif _looks_like_image(entry.name):
            if entry.is_file(follow_symlinks=True):
                listing.files.append(Path(entry.path))
            else:
                listing.problems.append((entry.path, _not_a_file(entry.path)))


def list_inputs(inputs: Sequence[str | os.PathLike[str]]) -> Listing:
    """Expand files and folders (see the module's docstring). A named file is taken as it is,
    whatever its suffix; a path that does not exist raises."""
    listing = Listing()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            info = path.stat()
            _walk(str(path), {(info.st_dev, info.st_ino): str(path)}, listing)
        elif path.is_file():
            listing.files.append(path)
        elif path.exists() or path.is_symlink():
            listing.problems.append((str(path), _not_a_file(str(path))))
        else:
            raise CamdeployError(f"INPUT {item}: no such file or folder")
    return listing


def list_images(inputs: Sequence[str | os.PathLike[str]], report: Callable[[str], None] | None = None
                ) -> list[Path]:
    """The images of :func:`list_inputs`; its problems and warnings go to ``report`` (default: a
    warning on stderr). Raises when nothing is found."""
    from camdeploy.console import warn

    listing = list_inputs(inputs)
    say = report or warn
    for path, reason in listing.problems:
        say(f"skipped {path}: {reason}")
    for message in listing.warnings:
        say(message)
    if not listing.files:
        raise CamdeployError(
            f"INPUT {' '.join(map(str, inputs))}: no images found; expected files or folders holding "
            f"{', '.join(IMAGE_SUFFIXES)} files"
        )
    return listing.files
