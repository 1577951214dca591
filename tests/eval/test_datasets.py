"""Dataset readers (camdeploy.eval.datasets) on tiny annotation files and images written in the test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DEV

from camdeploy.errors import CamdeployError
from camdeploy.eval.datasets import Dataset, open_dataset
from camdeploy.labels import imagenet_wnids

WNIDS = imagenet_wnids()


def image(path: Path) -> Path:
    """Write a tiny 6x4 image (format from the suffix) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert cv2.imwrite(str(path), pixels), path
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def at(path: Path, line: int) -> str:
    """The regex for the 'file, line N' part of a malformed-input message."""
    return re.escape(f"{path}, line {line}:")


def by_path(dataset: Dataset) -> dict[Path, tuple[int, np.ndarray]]:
    return {s.path: (s.class_index, s.boxes) for s in dataset.samples}


def check_boxes(actual: np.ndarray, expected: list[list[float]]) -> None:
    assert actual.dtype == np.float64
    assert actual.shape == (len(expected), 4)
    np.testing.assert_array_equal(actual, np.asarray(expected, dtype=np.float64))


def test_wnid_order_is_the_standard_imagenet_one() -> None:
    assert WNIDS[:2] == ["n01440764", "n01443537"]
    assert len(WNIDS) == 1000


# ---------------------------------------------------------------------------------------------- json

def json_dataset(root: Path) -> Path:
    image(root / "images" / "ILSVRC2012_val_00000001.JPEG")
    image(root / "images" / "b.png")
    document = {"description": "tiny", "images": [
        {"file": "images/ILSVRC2012_val_00000001.JPEG", "class_index": 65, "wnid": WNIDS[65],
         "boxes": [[1, 2, 3, 3], [0, 0, 5, 3]]},
        {"file": "images/b.png", "class_index": 0, "boxes": [[0.5, 1, 4.5, 2]]},
    ]}
    return write(root / "annotations.json", json.dumps(document, indent=1))


@pytest.mark.parametrize("use_folder", [True, False], ids=["folder", "file"])
def test_json_reads_files_classes_and_boxes(tmp_path: Path, use_folder: bool) -> None:
    annotations = json_dataset(tmp_path)
    dataset = open_dataset(tmp_path if use_folder else annotations)
    assert dataset.format == "json"
    assert dataset.missing == []
    assert [s.path for s in dataset.samples] == [tmp_path / "images" / "ILSVRC2012_val_00000001.JPEG",
                                                  tmp_path / "images" / "b.png"]
    assert [s.class_index for s in dataset.samples] == [65, 0]
    check_boxes(dataset.samples[0].boxes, [[1, 2, 3, 3], [0, 0, 5, 3]])
    check_boxes(dataset.samples[1].boxes, [[0.5, 1, 4.5, 2]])
    assert len(dataset) == 2


def test_json_invalid_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "annotations.json", '{\n "images": [\n  {"file": "a.png",,}\n ]\n}\n')
    with pytest.raises(CamdeployError, match=at(path, 3) + " not valid JSON"):
        open_dataset(path)


@pytest.mark.parametrize("document, pattern", [
    ([1, 2], r"expected an object with an 'images' list"),
    ({"images": {"file": "a.png"}}, r"expected an object with an 'images' list"),
    ({"images": [{"file": "a.png", "boxes": []}]}, r"images\[0\] needs 'file', an integer 'class_index'"),
    ({"images": [{"file": "a.png", "class_index": "x", "boxes": []}]}, r"images\[0\] needs"),
    ({"images": [{"file": "a.png", "class_index": 1, "boxes": [[0, 0, 1, 1]]},
                 {"file": "a.png", "class_index": 1, "boxes": [[5, 0, 1, 1]]}]},
     r"images\[1\]: box \[5\.0, 0\.0, 1\.0, 1\.0\] has x1 < x0"),
    ({"images": [{"file": "a.png", "class_index": 1, "boxes": [[0, 0, 1]]}]},
     r"images\[0\]: box has 3 numbers; expected x0,y0,x1,y1"),
    ({"images": [{"file": "a.png", "class_index": 1, "boxes": [[0, "x", 1, 1]]}]},
     r"images\[0\]: box .* is not four numbers"),
], ids=["list", "images-not-list", "no-class", "class-not-int", "x1<x0", "three-numbers", "not-number"])
def test_json_malformed_records_name_the_file_and_record(tmp_path: Path, document: object, pattern: str) -> None:
    image(tmp_path / "a.png")
    path = write(tmp_path / "annotations.json", json.dumps(document))
    with pytest.raises(CamdeployError, match=re.escape(f"--data {path}: ") + pattern):
        open_dataset(path)


@pytest.mark.parametrize("boxes", [[5], 5, None], ids=["box-number", "boxes-number", "boxes-null"])
def test_json_boxes_that_are_not_lists_raise_camdeploy_error(tmp_path: Path, boxes: object) -> None:
    image(tmp_path / "a.png")
    path = write(tmp_path / "annotations.json",
                 json.dumps({"images": [{"file": "a.png", "class_index": 1, "boxes": boxes}]}))
    with pytest.raises(CamdeployError, match=re.escape(str(path)) + r".*images\[0\]"):
        open_dataset(path)


def test_json_negative_class_index_is_refused(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    path = write(tmp_path / "annotations.json",
                 json.dumps({"images": [{"file": "a.png", "class_index": -1, "boxes": [[0, 0, 1, 1]]}]}))
    with pytest.raises(CamdeployError, match="negative"):
        open_dataset(path)


# ----------------------------------------------------------------------------------------------- csv

def test_csv_with_header_and_extra_columns(tmp_path: Path) -> None:
    image(tmp_path / "images" / "ILSVRC2012_val_00000001.JPEG")
    image(tmp_path / "images" / "ILSVRC2012_val_00000002.JPEG")
    path = write(tmp_path / "boxes.csv", (
        "source,wnid,file,width,class_index,x0,y0,x1,y1\n"
        "s,n01751748,images/ILSVRC2012_val_00000001.JPEG,6,65,1,2,3,3\n"
        "\n"
        "s,n01751748,images/ILSVRC2012_val_00000001.JPEG,6,65,0,0,5,3\n"
        "s,n01440764,images/ILSVRC2012_val_00000002.JPEG,6,0, 0.5 ,1,4.5,2\n"
    ))
    dataset = open_dataset(path)
    assert dataset.format == "csv"
    samples = by_path(dataset)
    assert list(samples) == [tmp_path / "images" / "ILSVRC2012_val_00000001.JPEG",
                             tmp_path / "images" / "ILSVRC2012_val_00000002.JPEG"]
    label, boxes = samples[tmp_path / "images" / "ILSVRC2012_val_00000001.JPEG"]
    assert label == 65
    check_boxes(boxes, [[1, 2, 3, 3], [0, 0, 5, 3]])
    label, boxes = samples[tmp_path / "images" / "ILSVRC2012_val_00000002.JPEG"]
    assert label == 0
    check_boxes(boxes, [[0.5, 1, 4.5, 2]])


def test_csv_without_header_and_with_images_root_and_wnid_classes(tmp_path: Path) -> None:
    image(tmp_path / "photos" / "a.png")
    image(tmp_path / "photos" / "sub" / "b.jpg")
    path = write(tmp_path / "meta" / "boxes.csv", (
        "a.png,3,0,0,2,2\n"
        "sub/b.jpg,n01443537,1,1,4,3\n"
        "a.png,3,2,2,5,3\n"
    ))
    dataset = open_dataset(path, images=tmp_path / "photos")
    assert dataset.format == "csv"
    samples = by_path(dataset)
    assert list(samples) == [tmp_path / "photos" / "a.png", tmp_path / "photos" / "sub" / "b.jpg"]
    assert samples[tmp_path / "photos" / "a.png"][0] == 3
    check_boxes(samples[tmp_path / "photos" / "a.png"][1], [[0, 0, 2, 2], [2, 2, 5, 3]])
    assert samples[tmp_path / "photos" / "sub" / "b.jpg"][0] == 1  # n01443537 is class 1
    check_boxes(samples[tmp_path / "photos" / "sub" / "b.jpg"][1], [[1, 1, 4, 3]])


def test_csv_explicit_format_reads_any_suffix(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    path = write(tmp_path / "boxes.txt", "a.png,7,0,0,1,1\n")
    with pytest.raises(CamdeployError, match="cannot tell the format"):
        open_dataset(path)
    dataset = open_dataset(path, fmt="csv")
    assert [(s.path, s.class_index) for s in dataset.samples] == [(tmp_path / "a.png", 7)]


HEADER = "file,class_index,x0,y0,x1,y1\n"


@pytest.mark.parametrize("text, line, pattern", [
    (HEADER + "a.png,1,0,0,2,2\n\na.png,1,0,zero,2,2\n", 4, r"box .* is not four numbers"),
    (HEADER + "a.png,1,0,0,2,2\na.png,1,0,0,2\n", 3, r"5 fields; expected file,class_index,x0,y0,x1,y1"),
    ("a.png,1,0,0\n", 1, r"4 fields"),
    (HEADER + "a.png,1,3,0,2,2\n", 2, r"box .* has x1 < x0 or y1 < y0"),
    (HEADER + "a.png,1,0,3,2,2\n", 2, r"box .* has x1 < x0 or y1 < y0"),
    (HEADER + "a.png,n99999999,0,0,2,2\n", 2, r"class 'n99999999' is neither a class index nor an ImageNet wnid"),
    (HEADER + "a.png,-2,0,0,2,2\n", 2, r"class index -2 is negative"),
    (HEADER + "a.png,1,0,0,2,2\na.png,2,0,0,2,2\n", 3, r"a\.png has class 2 here but 1 earlier"),
    ("file,x0,y0,x1,y1\na.png,0,0,2,2\n", 1, r"header lacks class_index"),
], ids=["not-number", "too-few", "too-few-no-header", "x1<x0", "y1<y0", "unknown-wnid", "negative",
        "two-classes", "header"])
def test_csv_malformed_rows_name_file_and_line(tmp_path: Path, text: str, line: int, pattern: str) -> None:
    image(tmp_path / "a.png")
    path = write(tmp_path / "boxes.csv", text)
    with pytest.raises(CamdeployError, match=at(path, line) + " " + pattern):
        open_dataset(path)


def test_csv_empty_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "boxes.csv", "\n\n")
    with pytest.raises(CamdeployError, match=re.escape(f"{path}: the file is empty")):
        open_dataset(path)


def test_csv_bad_coordinate_message_shows_the_value(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    path = write(tmp_path / "boxes.csv", "a.png,1,abc,2,3,4\n")
    with pytest.raises(CamdeployError, match=r"abc"):
        open_dataset(path)


def test_csv_header_after_utf8_bom(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    path = write(tmp_path / "boxes.csv", "\ufeff" + HEADER + "a.png,1,0,0,2,2\n")
    assert [s.class_index for s in open_dataset(path).samples] == [1]


def test_csv_header_only_says_no_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "boxes.csv", HEADER)
    with pytest.raises(CamdeployError) as info:
        open_dataset(path)
    assert "none of the 0" not in str(info.value)


# ----------------------------------------------------------------------------------------------- loc

LOC_HEADER = "ImageId,PredictionString\n"


def test_loc_solution_reads_groups_and_maps_wnids(tmp_path: Path) -> None:
    image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    image(tmp_path / "val" / "ILSVRC2012_val_00000002.JPEG")
    path = write(tmp_path / "LOC_val_solution.csv", LOC_HEADER + (
        "ILSVRC2012_val_00000001,n01440764 10 20 30 40 n01440764 1 2 3 4 \n"
        "ILSVRC2012_val_00000002,n01443537 5 6 7 8 n01440764 0 0 1 1\n"  # other-class box ignored
    ))
    dataset = open_dataset(path, images=tmp_path / "val")
    assert dataset.format == "loc"
    samples = by_path(dataset)
    assert list(samples) == [tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG",
                             tmp_path / "val" / "ILSVRC2012_val_00000002.JPEG"]
    label, boxes = samples[tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG"]
    assert label == 0
    check_boxes(boxes, [[10, 20, 30, 40], [1, 2, 3, 4]])
    label, boxes = samples[tmp_path / "val" / "ILSVRC2012_val_00000002.JPEG"]
    assert label == 1
    check_boxes(boxes, [[5, 6, 7, 8]])


def test_loc_images_default_to_the_csv_folder(tmp_path: Path) -> None:
    image(tmp_path / "ILSVRC2012_val_00000003.JPEG")
    path = write(tmp_path / "LOC_val_solution.csv",
                 LOC_HEADER + f"ILSVRC2012_val_00000003,{WNIDS[999]} 0 0 3 2\n")
    dataset = open_dataset(path)
    assert [(s.path, s.class_index) for s in dataset.samples] == [
        (tmp_path / "ILSVRC2012_val_00000003.JPEG", 999)]


@pytest.mark.parametrize("rows, line, pattern", [
    ("ILSVRC2012_val_00000001,n01440764 1 2 3 4\nILSVRC2012_val_00000002,n01440764 1 2 3\n", 3,
     r"PredictionString must be groups of 'wnid x0 y0 x1 y1'"),
    ("ILSVRC2012_val_00000001,n01440764 1 2 3 4 n01440764 5\n", 2, r"PredictionString must be groups of"),
    ("ILSVRC2012_val_00000001,\n", 2, r"PredictionString must be groups of"),
    ("ILSVRC2012_val_00000001,n99999999 1 2 3 4\n", 2, r"class 'n99999999' is neither"),
    ("ILSVRC2012_val_00000001,n01440764 1 two 3 4\n", 2, r"box \['1', 'two', '3', '4'\] is not four numbers"),
    ("ILSVRC2012_val_00000001,n01440764 5 2 3 4\n", 2, r"box \[5\.0, 2\.0, 3\.0, 4\.0\] has x1 < x0"),
], ids=["four-fields", "six-fields", "empty", "unknown-wnid", "not-number", "x1<x0"])
def test_loc_malformed_rows_name_file_and_line(tmp_path: Path, rows: str, line: int, pattern: str) -> None:
    path = write(tmp_path / "LOC_val_solution.csv", LOC_HEADER + rows)
    with pytest.raises(CamdeployError, match=at(path, line) + " " + pattern):
        open_dataset(path)


def test_loc_without_header_is_refused_when_forced(tmp_path: Path) -> None:
    path = write(tmp_path / "solution.csv", "ILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    with pytest.raises(CamdeployError, match=at(path, 1) + " expected the header ImageId,PredictionString"):
        open_dataset(path, fmt="loc")


# ---------------------------------------------------------------------------------------------- wsol

def wsol_folder(root: Path, localization: str | None = None, labels: str | None = None) -> Path:
    folder = root / "metadata" / "ILSVRC" / "test"
    write(folder / "image_ids.txt", "val/ILSVRC2012_val_00000001.JPEG\nval/ILSVRC2012_val_00000002.JPEG\n")
    write(folder / "class_labels.txt", labels or "val/ILSVRC2012_val_00000001.JPEG,65\n"
                                                "val/ILSVRC2012_val_00000002.JPEG,0\n")
    write(folder / "localization.txt", localization or (
        "val/ILSVRC2012_val_00000001.JPEG,1,2,3,3\n"
        "val/ILSVRC2012_val_00000002.JPEG,0,0,4,1\n"
        "val/ILSVRC2012_val_00000001.JPEG,0,0,5,3\n"))
    return folder


def test_wsol_reads_ids_labels_and_boxes(tmp_path: Path) -> None:
    folder = wsol_folder(tmp_path)
    images = tmp_path / "ILSVRC"
    image(images / "val" / "ILSVRC2012_val_00000001.JPEG")
    image(images / "val" / "ILSVRC2012_val_00000002.JPEG")
    dataset = open_dataset(folder, images=images)
    assert dataset.format == "wsol"
    samples = by_path(dataset)
    assert list(samples) == [images / "val" / "ILSVRC2012_val_00000001.JPEG",
                             images / "val" / "ILSVRC2012_val_00000002.JPEG"]
    label, boxes = samples[images / "val" / "ILSVRC2012_val_00000001.JPEG"]
    assert label == 65
    check_boxes(boxes, [[1, 2, 3, 3], [0, 0, 5, 3]])
    label, boxes = samples[images / "val" / "ILSVRC2012_val_00000002.JPEG"]
    assert label == 0
    check_boxes(boxes, [[0, 0, 4, 1]])


def test_wsol_without_images_root_asks_for_it(tmp_path: Path) -> None:
    folder = wsol_folder(tmp_path)
    with pytest.raises(CamdeployError, match=r"give it with --images DIR"):
        open_dataset(folder)


@pytest.mark.parametrize("localization, labels, file, line, pattern", [
    ("val/ILSVRC2012_val_00000001.JPEG,1,2,3,3\nval/ILSVRC2012_val_00000002.JPEG,0,0,4\n", None,
     "localization.txt", 2, r"expected 'image_id,x0,y0,x1,y1'"),
    ("val/ILSVRC2012_val_00000001.JPEG,1,2,3,3,9\n", None, "localization.txt", 1, r"expected 'image_id,x0"),
    ("val/ILSVRC2012_val_00000001.JPEG,1,2,3,3\nval/ILSVRC2012_val_00000002.JPEG,0,0,a,1\n", None,
     "localization.txt", 2, r"box \['0', '0', 'a', '1'\] is not four numbers"),
    (None, "val/ILSVRC2012_val_00000001.JPEG,65\nval/ILSVRC2012_val_00000002.JPEG,n99999999\n",
     "class_labels.txt", 2, r"class 'n99999999' is neither"),
    (None, "val/ILSVRC2012_val_00000001.JPEG 65\n", "class_labels.txt", 1, r"expected 'image_id,class_index'"),
], ids=["four-fields", "six-fields", "not-number", "unknown-class", "no-comma"])
def test_wsol_malformed_lines_name_file_and_line(tmp_path: Path, localization: str | None, labels: str | None,
                                                 file: str, line: int, pattern: str) -> None:
    folder = wsol_folder(tmp_path, localization, labels)
    with pytest.raises(CamdeployError, match=at(folder / file, line) + " " + pattern):
        open_dataset(folder, images=tmp_path)


@pytest.mark.parametrize("localization, labels, file, pattern", [
    ("val/ILSVRC2012_val_00000001.JPEG,1,2,3,3\n", None, "localization.txt", r"no box for val/"),
    (None, "val/ILSVRC2012_val_00000001.JPEG,65\n", "class_labels.txt", r"no class for val/"),
], ids=["no-box", "no-class"])
def test_wsol_image_without_box_or_class(tmp_path: Path, localization: str | None, labels: str | None,
                                         file: str, pattern: str) -> None:
    folder = wsol_folder(tmp_path, localization, labels)
    with pytest.raises(CamdeployError, match=re.escape(f"{folder / file}: ") + pattern):
        open_dataset(folder, images=tmp_path)


def test_wsol_forced_on_a_folder_without_metadata(tmp_path: Path) -> None:
    with pytest.raises(CamdeployError, match=re.escape(str(tmp_path / "image_ids.txt")) + ": cannot read"):
        open_dataset(tmp_path, images=tmp_path, fmt="wsol")


# ----------------------------------------------------------------------------------------------- voc

def voc_xml(filename: str | None, objects: list[tuple[str, list[int] | None]]) -> str:
    parts = ["<annotation>", "  <folder>val</folder>"]
    if filename is not None:
        parts.append(f"  <filename>{filename}</filename>")
    parts.append("  <size><width>6</width><height>4</height><depth>3</depth></size>")
    for name, box in objects:
        parts.append(f"  <object>\n    <name>{name}</name>")
        if box is not None:
            parts.append("    <bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox>"
                         .format(*box))
        parts.append("  </object>")
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def test_voc_reads_first_class_and_its_boxes(tmp_path: Path) -> None:
    folder = tmp_path / "val"
    write(folder / "ILSVRC2012_val_00000001.xml", voc_xml("ILSVRC2012_val_00000001", [
        ("n01443537", [1, 2, 3, 3]), ("n01440764", [0, 0, 1, 1]), ("n01443537", [0, 0, 5, 3])]))
    write(folder / "ILSVRC2012_val_00000002.xml", voc_xml("ILSVRC2012_val_00000002.png", [
        (WNIDS[65], [0, 0, 4, 1])]))
    write(folder / "ILSVRC2012_val_00000003.xml", voc_xml(None, [("n01440764", [2, 1, 3, 2])]))
    image(folder / "ILSVRC2012_val_00000001.JPEG")
    image(folder / "ILSVRC2012_val_00000002.png")
    image(folder / "ILSVRC2012_val_00000003.JPEG")
    dataset = open_dataset(folder)
    assert dataset.format == "voc"
    assert dataset.missing == []
    samples = by_path(dataset)
    assert list(samples) == [folder / "ILSVRC2012_val_00000001.JPEG", folder / "ILSVRC2012_val_00000002.png",
                             folder / "ILSVRC2012_val_00000003.JPEG"]
    label, boxes = samples[folder / "ILSVRC2012_val_00000001.JPEG"]
    assert label == 1
    check_boxes(boxes, [[1, 2, 3, 3], [0, 0, 5, 3]])  # the n01440764 box is another class's
    label, boxes = samples[folder / "ILSVRC2012_val_00000002.png"]
    assert label == 65
    check_boxes(boxes, [[0, 0, 4, 1]])
    label, boxes = samples[folder / "ILSVRC2012_val_00000003.JPEG"]  # no <filename>: the XML's stem
    assert label == 0
    check_boxes(boxes, [[2, 1, 3, 2]])


def test_voc_images_under_images_root(tmp_path: Path) -> None:
    folder = tmp_path / "Annotations"
    write(folder / "ILSVRC2012_val_00000001.xml", voc_xml("ILSVRC2012_val_00000001", [("n01440764", [0, 0, 1, 1])]))
    image(tmp_path / "Data" / "ILSVRC2012_val_00000001.JPEG")
    dataset = open_dataset(folder, images=tmp_path / "Data")
    assert [(s.path, s.class_index) for s in dataset.samples] == [
        (tmp_path / "Data" / "ILSVRC2012_val_00000001.JPEG", 0)]


@pytest.mark.parametrize("objects, pattern", [
    ([("n01440764", None)], r"an <object> has no <bndbox>"),
    ([("n01440764", [0, 0, 1, 1]), ("n01440764", None)], r"an <object> has no <bndbox>"),
    ([("n99999999", [0, 0, 1, 1])], r"class 'n99999999' is neither a class index nor an ImageNet wnid"),
    ([("", [0, 0, 1, 1])], r"class '' is neither"),
    ([], r"no <object> element"),
    ([("n01440764", [3, 0, 1, 1])], r"box \[3\.0, 0\.0, 1\.0, 1\.0\] has x1 < x0"),
], ids=["no-bndbox", "second-no-bndbox", "unknown-wnid", "no-name", "no-object", "x1<x0"])
def test_voc_malformed_files_are_named(tmp_path: Path, objects: list[tuple[str, list[int] | None]],
                                       pattern: str) -> None:
    write(tmp_path / "ILSVRC2012_val_00000001.xml", voc_xml("ILSVRC2012_val_00000001", [("n01440764", [0, 0, 1, 1])]))
    path = write(tmp_path / "ILSVRC2012_val_00000002.xml", voc_xml("ILSVRC2012_val_00000002", objects))
    with pytest.raises(CamdeployError, match=re.escape(f"--data {path}: ") + pattern):
        open_dataset(tmp_path)


def test_voc_invalid_xml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "ILSVRC2012_val_00000001.xml",
                 "<annotation>\n<filename>x</filename>\n<object>\n</annotation>\n")
    with pytest.raises(CamdeployError, match=at(path, 4) + " not valid XML"):
        open_dataset(tmp_path)


def test_voc_forced_on_a_folder_without_xml(tmp_path: Path) -> None:
    with pytest.raises(CamdeployError, match=r"no \.xml annotation files"):
        open_dataset(tmp_path, fmt="voc")


# ------------------------------------------------------------------ every format: missing images

def build(fmt: str, root: Path, names: list[str]) -> tuple[Path, Path | None]:
    """Annotations in ``fmt`` naming ``names`` (class i, one box each) -> (data path, images root)."""
    if fmt == "json":
        write(root / "annotations.json", json.dumps({"images": [
            {"file": name, "class_index": i, "boxes": [[0, 0, 1, 1]]} for i, name in enumerate(names)]}))
        return root, None
    if fmt == "csv":
        return write(root / "boxes.csv", HEADER + "".join(f"{n},{i},0,0,1,1\n" for i, n in enumerate(names))), None
    if fmt == "loc":
        return write(root / "LOC_val_solution.csv", LOC_HEADER + "".join(
            f"{Path(n).stem},{WNIDS[i]} 0 0 1 1\n" for i, n in enumerate(names))), None
    if fmt == "wsol":
        meta = root / "meta"
        write(meta / "image_ids.txt", "".join(f"{n}\n" for n in names))
        write(meta / "class_labels.txt", "".join(f"{n},{i}\n" for i, n in enumerate(names)))
        write(meta / "localization.txt", "".join(f"{n},0,0,1,1\n" for n in names))
        return meta, root
    for i, name in enumerate(names):
        write(root / f"{Path(name).stem}.xml", voc_xml(Path(name).stem, [(WNIDS[i], [0, 0, 1, 1])]))
    return root, None


FORMATS = ["json", "csv", "loc", "wsol", "voc"]
NAMES = ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000003.JPEG"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_images_are_listed_and_left_out(tmp_path: Path, fmt: str) -> None:
    data, images = build(fmt, tmp_path, NAMES)
    image(tmp_path / NAMES[1])
    dataset = open_dataset(data, images=images)
    assert dataset.format == fmt  # detected from the path
    assert [(s.path, s.class_index) for s in dataset.samples] == [(tmp_path / NAMES[1], 1)]
    check_boxes(dataset.samples[0].boxes, [[0, 0, 1, 1]])
    assert dataset.missing == [str(tmp_path / NAMES[0]), str(tmp_path / NAMES[2])]


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_images_missing_is_an_error(tmp_path: Path, fmt: str) -> None:
    data, images = build(fmt, tmp_path, NAMES)
    with pytest.raises(CamdeployError, match=re.escape(f"--data {data}: none of the 3 annotated images exists")
                       + r".*check --images"):
        open_dataset(data, images=images)


# ------------------------------------------------------------------------------- format detection

@pytest.mark.parametrize("case, expected", [
    ("folder-json", "json"), ("file-json", "json"), ("csv-imageid", "loc"), ("csv-header", "csv"),
    ("csv-no-header", "csv"), ("folder-wsol", "wsol"), ("folder-xml", "voc"),
])
def test_format_is_detected_from_the_path(tmp_path: Path, case: str, expected: str) -> None:
    image(tmp_path / NAMES[0])
    if case == "folder-json":
        data, images = build("json", tmp_path, NAMES[:1])
    elif case == "file-json":
        data = write(tmp_path / "labels.json", json.dumps({"images": [
            {"file": NAMES[0], "class_index": 0, "boxes": [[0, 0, 1, 1]]}]}))
        images = None
    elif case == "csv-imageid":
        data, images = build("loc", tmp_path, NAMES[:1])
    elif case == "csv-header":
        data, images = build("csv", tmp_path, NAMES[:1])
    elif case == "csv-no-header":
        data, images = write(tmp_path / "boxes.csv", f"{NAMES[0]},0,0,0,1,1\n"), None
    elif case == "folder-wsol":
        data, images = build("wsol", tmp_path, NAMES[:1])
    else:
        data, images = build("voc", tmp_path, NAMES[:1])
    dataset = open_dataset(data, images=images)
    assert dataset.format == expected
    assert [(s.path, s.class_index) for s in dataset.samples] == [(tmp_path / NAMES[0], 0)]


def test_folder_with_no_known_annotations(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", "hello\n")
    with pytest.raises(CamdeployError, match=re.escape(f"--data {tmp_path}: found no annotations.json") +
                       r".*image_ids\.txt, class_labels\.txt, localization\.txt.*give an annotation file or --format"):
        open_dataset(tmp_path)


def test_file_of_unknown_kind(tmp_path: Path) -> None:
    path = write(tmp_path / "labels.yaml", "a: 1\n")
    with pytest.raises(CamdeployError, match=re.escape(f"--data {path}: cannot tell the format; expected one of "
                                                       "json, voc, loc, wsol, csv (--format)")):
        open_dataset(path)


def test_path_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(CamdeployError, match=re.escape(f"--data {tmp_path / 'nope'}: no such file or folder")):
        open_dataset(tmp_path / "nope")


@pytest.mark.parametrize("fmt", ["yaml", "JSON", "coco"])
def test_invalid_format_value(tmp_path: Path, fmt: str) -> None:
    data, _ = build("json", tmp_path, NAMES[:1])
    with pytest.raises(CamdeployError, match=re.escape(f"--format {fmt!r}: expected one of json, voc, loc, wsol, csv")):
        open_dataset(data, fmt=fmt)


# ----------------------------------------------------------------------------------------- real data

@pytest.mark.data
def test_dev_folder_and_its_csv_agree() -> None:
    from_json = open_dataset(DEV)
    from_csv = open_dataset(DEV / "annotations.csv")
    assert (from_json.format, from_csv.format) == ("json", "csv")
    assert len(from_json) == len(from_csv) == 699
    assert from_json.missing == from_csv.missing == []
    json_samples, csv_samples = by_path(from_json), by_path(from_csv)
    assert list(json_samples) == list(csv_samples)
    for path, (label, boxes) in json_samples.items():
        assert csv_samples[path][0] == label, path
        assert boxes.dtype == csv_samples[path][1].dtype == np.float64
        np.testing.assert_array_equal(csv_samples[path][1], boxes, err_msg=str(path))
    assert sum(len(b) for _, b in json_samples.values()) > len(json_samples)  # several boxes per image somewhere



def test_wsol_image_sizes_are_read_and_checked(tmp_path: Path) -> None:
    folder = wsol_folder(tmp_path)
    images = tmp_path / "ILSVRC"
    image(images / "val" / "ILSVRC2012_val_00000001.JPEG")
    image(images / "val" / "ILSVRC2012_val_00000002.JPEG")
    write(folder / "image_sizes.txt", "val/ILSVRC2012_val_00000001.JPEG,500,375\n"
                                      "val/ILSVRC2012_val_00000002.JPEG,640,480\n")
    dataset = open_dataset(folder, images=images)
    assert [s.size for s in dataset.samples] == [(500, 375), (640, 480)] and dataset.notes == []
    write(folder / "image_sizes.txt", "val/ILSVRC2012_val_00000001.JPEG,500,375\n")
    with pytest.raises(CamdeployError, match=r"image_sizes\.txt: no size for val/ILSVRC2012_val_00000002\.JPEG"):
        open_dataset(folder, images=images)
    write(folder / "image_sizes.txt", "val/ILSVRC2012_val_00000001.JPEG,500\n")
    with pytest.raises(CamdeployError, match=r"image_sizes\.txt, line 1: expected 'image_id,width,height'"):
        open_dataset(folder, images=images)
