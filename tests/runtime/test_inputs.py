"""Expanding inputs into images: order, symbolic links, loops, and every left-out entry accounted for."""

from __future__ import annotations

import os
import re

import pytest

from camdeploy.errors import CamdeployError
from camdeploy.runtime.inputs import list_images, list_inputs


def test_list_images_expands_folders_recursively_and_sorted(tmp_path):
    root = tmp_path / "photos"
    for name in ["b.png", "a.jpg", "sub/c.JPG", "sub/deeper/a.webp", "notes.txt", "sub/readme",
                 "z.BMP", "sub/x.tiff"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    found = list_images([str(root)])
    expected = [root / n for n in ["a.jpg", "b.png", "sub/c.JPG", "sub/deeper/a.webp", "sub/x.tiff",
                                   "z.BMP"]]
    assert found == expected


def test_list_images_keeps_argument_order_and_named_files(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "b.png").write_bytes(b"")
    (folder / "a.png").write_bytes(b"")
    single = tmp_path / "single.jpg"
    single.write_bytes(b"")
    assert list_images([str(single), str(folder)]) == [single, folder / "a.png", folder / "b.png"]


def test_list_images_missing_path_raises_naming_input(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    missing = tmp_path / "nope"
    message = r"^INPUT " + re.escape(str(missing)) + ": no such file or folder"
    with pytest.raises(CamdeployError, match=message):
        list_images([str(tmp_path), str(missing)])


def test_list_images_empty_folder_raises(tmp_path):
    with pytest.raises(CamdeployError, match=r"^INPUT " + re.escape(str(tmp_path)) + ": no images found"):
        list_images([str(tmp_path)])


def test_list_images_folder_without_images_raises(tmp_path):
    (tmp_path / "notes.txt").write_bytes(b"hello")
    with pytest.raises(CamdeployError, match="no images found; expected files or folders holding"):
        list_images([str(tmp_path)])


def test_symlinked_folders_are_followed_and_loops_reported(tmp_path):
    data = tmp_path / "data"
    (data / "real").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (data / "real" / name).write_bytes(b"")
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(data / "real")  # a symlinked subfolder
    (data / "real" / "back").symlink_to(root)  # ... which links back up: a loop
    listing = list_inputs([str(root)])
    assert listing.files == [root / "linked" / "a.jpg", root / "linked" / "b.jpg"]
    assert [(path, reason.split(":")[0]) for path, reason in listing.problems] == [
        (str(root / "linked" / "back"), "symbolic link loop")]


def test_entries_named_like_images_that_are_not_files_are_reported(tmp_path):
    (tmp_path / "good.png").write_bytes(b"")
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "album.jpg").mkdir()
    (tmp_path / "album.jpg" / "inside.png").write_bytes(b"")
    listing = list_inputs([str(tmp_path)])
    assert listing.files == [tmp_path / "album.jpg" / "inside.png", tmp_path / "good.png"]
    reasons = dict(listing.problems)
    assert reasons[str(tmp_path / "broken.jpg")].startswith("a symbolic link to nothing")
    assert reasons[str(tmp_path / "pipe.png")].startswith("not a regular file")
    assert listing.warnings == [f"{tmp_path / 'album.jpg'} is a folder, not an image file; its contents are listed"]
    said = []
    assert list_images([str(tmp_path)], report=said.append) == listing.files
    assert len(said) == 3 and all(line.startswith(("skipped ", str(tmp_path))) for line in said)


def test_names_that_are_not_utf8_are_listed(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg"
    with open(raw, "wb") as handle:
        handle.write(b"")
    (found,) = list_inputs([str(tmp_path)]).files
    assert os.fsencode(found) == raw
