"""camdeploy-host, the C++ host in examples/cpp, against `camdeploy run` on the same files.

The host is built once per session by ``examples/cpp/build.sh`` into a fresh folder (headers
fetched, every source compiled, so that a compiler warning is seen). Two kinds of model:

* A tiny hand-made graph with camdeploy metadata whose maps are the input's colour planes and
  whose ``boxes``/``boxes_exact`` are fixed: preprocessing (decoding, EXIF, alpha, 16-bit, stretch
  and crop), the choice between graph and host boxes, JSON writing and folder listing are compared
  with camdeploy's Python code value by value and byte by byte, without PyTorch.
* The real EfficientNet-Lite0 on 50 dev images (``integration``, ``data``): top-1 identical on every
  image, boxes within 1 px on at least 99 % of maps, for a file with boxes in the graph and for one
  exported with ``--graph-boxes off``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import DEV, REPO, require_tool
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from camdeploy.cli import main as camdeploy_main
from camdeploy.metadata import ModelSpec, Normalization, read_spec
from camdeploy.runtime.images import load_image, prepare

BUILD_SCRIPT = REPO / "examples" / "cpp" / "build.sh"
OPENCV_HEADER = Path("/usr/include/opencv4/opencv2/imgcodecs.hpp")
MAX_JPEG_DECODE_DIFF = 2
"""Grey levels by which the host's JPEG decoding (Debian's OpenCV and libjpeg-turbo) may differ
from the wheel's: both use libjpeg-turbo's accurate integer IDCT, so more than a rounding step
means a different decoding path (DCT method, chroma upsampling, orientation)."""


# --- building -------------------------------------------------------------------------------------


def require_opencv_headers() -> None:
    """As conftest's require_tool, for OpenCV's -dev packages (.ci/system-packages installs them)."""
    if not OPENCV_HEADER.is_file():
        message = (f"{OPENCV_HEADER} is missing (OpenCV headers, to build the C++ host); "
                   ".ci/run installs libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev")
        if os.environ.get("CAMDEPLOY_CI"):
            pytest.fail(f"under CI: {message}")
        pytest.skip(message)


@pytest.fixture(scope="session")
def host_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/cpp/build.sh into a fresh folder; returns that folder."""
    for tool in ("c++", "cmake", "make", "apt-get", "dpkg-deb", "readelf"):
        require_tool(tool, "to build the C++ host")
    require_opencv_headers()
    build = tmp_path_factory.mktemp("cpp-host-build")
    env = {**os.environ, "CAMDEPLOY_HOST_BUILD_DIR": str(build), "PYTHON": sys.executable}
    env.pop("ONNXRUNTIME_INCLUDE_DIR", None)
    done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, env=env, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    warnings = [line for line in log.splitlines() if "warning" in line.lower()]
    assert not warnings, "the C++ host compiles with warnings:\n" + "\n".join(warnings)
    return build


@pytest.fixture(scope="session")
def host(host_build: Path) -> Path:
    return host_build / "camdeploy-host"


def run_host(host: Path, *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(host), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def run_python(model: Path, inputs: list[str], out: Path, *options: str, cwd: Path | None = None) -> list[str]:
    """`camdeploy run` in this process; the lines of its results.jsonl."""
    previous = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        status = camdeploy_main(["run", str(model), *inputs, "--out", str(out), "--no-progress", *options])
    finally:
        os.chdir(previous)
    assert status == 0
    return (out / "results.jsonl").read_text(encoding="utf-8").splitlines()


def stderr_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return done.stderr.splitlines()


# --- a tiny model with camdeploy metadata -------------------------------------------------------


def tiny_model(path: Path, *, size: tuple[int, int] = (12, 16), resize: str = "stretch",
               class_names: tuple[str, ...] = ("red", "green", "blue"), graph_boxes: bool = True,
               graph_box: tuple[float, float, float, float] = (1.0, 2.0, 3.0, 4.0),
               exact: tuple[bool, bool] = (True, False), metadata: bool = True, topk: int = 2) -> Path:
    """A graph with the outputs of `camdeploy export` and T = 2: logits are the mean of each colour
    plane, the two top classes and their softmax scores follow from them, and the maps are the red
    and green planes of the input (so the host rule's boxes follow the picture). ``boxes`` is
    ``graph_box`` for every map and ``boxes_exact`` is ``exact``, so a test can tell where each box
    came from."""
    height, width = size
    floats = TensorProto.FLOAT
    initializers = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([2], np.int64), "k"),
        numpy_helper.from_array(np.array([2, 4], np.int64), "box_tail"),
        numpy_helper.from_array(np.array([[list(graph_box)] * 2], np.float32), "graph_box"),  # [1, 2, 4]
        numpy_helper.from_array(np.array([list(exact)], bool), "exact_row"),  # [1, 2]
    ]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["logits"], axes=[2, 3], keepdims=0),  # [N, 3]
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("TopK", ["probabilities", "k"], ["scores", "classes"], axis=1),  # [N, 2]
        helper.make_node("Slice", ["images", "zero", "two", "one"], ["cams"]),  # [N, 2, H, W]
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "box_tail"], ["boxes_shape"], axis=0),
        helper.make_node("Concat", ["batch", "two"], ["exact_shape"], axis=0),
        helper.make_node("Expand", ["graph_box", "boxes_shape"], ["boxes"]),
        helper.make_node("Expand", ["exact_row", "exact_shape"], ["boxes_exact"]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", floats, ["N", 3]),
        helper.make_tensor_value_info("classes", TensorProto.INT64, ["N", 2]),
        helper.make_tensor_value_info("scores", floats, ["N", 2]),
        helper.make_tensor_value_info("cams", floats, ["N", 2, height, width]),
    ]
    if graph_boxes:
        outputs += [helper.make_tensor_value_info("boxes", floats, ["N", 2, 4]),
                    helper.make_tensor_value_info("boxes_exact", TensorProto.BOOL, ["N", 2])]
    else:
        nodes = nodes[:4]
    images = helper.make_tensor_value_info("images", floats, ["N", 3, height, width])
    graph = helper.make_graph(nodes, "tiny_cam", [images], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        spec = ModelSpec(class_names=class_names, input_height=height, input_width=width,
                         normalization=Normalization((1 / 255, 1 / 255, 1 / 255), (0.0, 0.0, 0.0)),
                         topk=topk, box_threshold=0.2, source_model="tests:tiny", resize=resize,
                         camdeploy_version="test")
        helper.set_model_props(model, spec.to_props())
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def smooth_picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 picture with a bright blob per channel and some texture (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        image[..., c] = 230 * np.exp(-(((y - cy) / (0.2 * height)) ** 2 + ((x - cx) / (0.25 * width)) ** 2))
    image += rng.uniform(0, 20, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def with_orientation(image: Image.Image, path: Path, orientation: int) -> Path:
    exif = image.getexif()
    exif[0x0112] = orientation  # Orientation tag
    if path.suffix == ".jpg":
        image.save(path, exif=exif.tobytes(), quality=90)
    else:
        image.save(path, exif=exif.tobytes())
    return path


def special_images(folder: Path) -> list[Path]:
    """One file per decoding path of camdeploy.runtime.images: colour and grey JPEG, EXIF
    orientations, RGBA (with and without orientation), palette and grey+alpha PNG, 16-bit, BMP,
    lossless WebP, TIFF, an image smaller than the model input (enlarged) and a wide one (crop)."""
    folder.mkdir(parents=True, exist_ok=True)
    picture = smooth_picture(30, 44)
    files = []
    Image.fromarray(picture).save(folder / "photo.jpg", quality=90)
    Image.fromarray(picture).save(folder / "progressive.jpg", quality=85, progressive=True, subsampling=0)
    Image.fromarray(picture[..., 1]).save(folder / "gray.jpg", quality=90)
    files += [folder / "photo.jpg", folder / "progressive.jpg", folder / "gray.jpg"]
    for orientation in (3, 6, 8):
        files.append(with_orientation(Image.fromarray(picture), folder / f"exif{orientation}.jpg", orientation))
    rgba = np.dstack([picture, np.tile(np.linspace(0, 255, 44).astype(np.uint8), (30, 1))])
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    files.append(folder / "rgba.png")
    files.append(with_orientation(Image.fromarray(rgba, mode="RGBA"), folder / "rgba_exif6.png", 6))
    palette = Image.fromarray(picture).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "palette.png", transparency=3)
    la = np.dstack([picture[..., 0], rgba[..., 3]])
    Image.fromarray(la, mode="LA").save(folder / "gray_alpha.png")
    files += [folder / "palette.png", folder / "gray_alpha.png"]
    deep = picture.astype(np.uint16) * 256 + np.arange(44, dtype=np.uint16)[:, None]  # not multiples of 257
    assert cv2.imwrite(str(folder / "deep16.png"), deep[..., ::-1])
    assert cv2.imwrite(str(folder / "picture.bmp"), picture[..., ::-1])
    Image.fromarray(picture).save(folder / "lossless.webp", lossless=True)
    Image.fromarray(picture).save(folder / "picture.tif")
    assert cv2.imwrite(str(folder / "small.png"), picture[:5, :7, ::-1])  # enlarged: INTER_LINEAR
    wide = smooth_picture(20, 90, seed=1)
    assert cv2.imwrite(str(folder / "wide.png"), wide[..., ::-1])
    files += [folder / name for name in ("deep16.png", "picture.bmp", "lossless.webp", "picture.tif",
                                         "small.png", "wide.png")]
    return files


def host_inputs(host_build: Path, model: Path, files: list[Path], out: Path
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What the host decodes and prepares for each file (tools/dump_inputs.cpp), by file name."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([str(host_build / "camdeploy-host-inputs"), str(model), str(out), *map(str, files)],
                          capture_output=True, text=True, check=True, timeout=300)
    found = {}
    for line in done.stdout.splitlines():
        k, name, *error = line.split("\t")
        assert not error, line
        found[name] = (np.load(out / f"{k}.decoded.npy"), np.load(out / f"{k}.input.npy"))
    return found


# --- the tiny model: exact agreement ------------------------------------------------------------


@pytest.mark.parametrize("resize", ["stretch", "crop"])
def test_host_prepares_every_kind_of_image_as_python_does(host_build, tmp_path, resize):
    model = tiny_model(tmp_path / "tiny.onnx", size=(12, 16), resize=resize)
    files = special_images(tmp_path / "images")
    spec = read_spec(str(model))
    dumped = host_inputs(host_build, model, files, tmp_path / "dump")
    assert sorted(dumped) == sorted(map(str, files))
    for file in files:
        decoded, prepared = dumped[str(file)]
        expected = load_image(file)
        assert decoded.shape == expected.shape, file.name
        difference = np.abs(decoded.astype(int) - expected.astype(int)).max()
        if file.suffix == ".jpg":
            assert difference <= MAX_JPEG_DECODE_DIFF, file.name
        else:  # lossless formats decode identically; alpha, 16-bit and EXIF are our code
            assert difference == 0, file.name
        if difference == 0:  # the same pixels must give the same input, resize and scale included
            np.testing.assert_array_equal(prepared, prepare(expected, spec)[0], err_msg=file.name)


@pytest.mark.parametrize("resize", ["stretch", "crop"])
def test_host_writes_the_same_lines_as_camdeploy_run(host, tmp_path, resize):
    # Graph boxes where boxes_exact is true, the host rule where it is false: both must agree.
    model = tiny_model(tmp_path / "tiny.onnx", resize=resize)
    files = [str(f) for f in special_images(tmp_path / "images") if f.suffix != ".jpg"]
    done = run_host(host, model, *files, "--batch-size", 4)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    expected = run_python(model, files, tmp_path / "out", "--box-source", "graph", "--batch-size", "4")
    assert done.stdout.splitlines() == expected


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_int8_files_run_as_camdeploy_runs_them(host, tmp_path, target):
    """An INT8 file: the host reads its target and weight bits from the metadata and sets the same
    session options as `camdeploy run` (simulated int8 for TensorRT; exact kernels for the CPU),
    so that its lines are the same."""
    from tiny_models import TorchvisionStyle, seeded

    from camdeploy.calibration.data import CalibrationData
    from camdeploy.calibration.quantize import Int8Config, quantize_int8
    from camdeploy.export.exporter import ExportOptions, export_onnx

    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    report = export_onnx(seeded(TorchvisionStyle()), fp32, ExportOptions(input_size=(32, 32), topk=3, source_model="t"))
    folder = tmp_path / "photos"
    folder.mkdir()
    files = []
    for i in range(12):
        files.append(folder / f"p{i:02d}.png")
        assert cv2.imwrite(str(files[-1]), smooth_picture(40 + i, 50, seed=i)[..., ::-1])
    quantize_int8(fp32, int8, CalibrationData(files[:8], report.spec, progress=False), Int8Config(target=target))
    done = run_host(host, int8, folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == run_python(int8, [str(folder)], tmp_path / "out")


def test_graph_box_is_taken_where_exact_and_the_host_rule_elsewhere(host, tmp_path):
    # Map 0 (the red plane, all zero here) is flagged exact: its graph box must come through, scaled
    # to the original image, where the host rule would give the whole frame. Map 1 (the green
    # plane) is not: the host rule must box the green block.
    model = tiny_model(tmp_path / "tiny.onnx", size=(12, 16), graph_box=(1.0, 2.0, 3.0, 4.0))
    picture = np.zeros((24, 48, 3), np.uint8)
    picture[6:12, 12:30] = (0, 255, 0)  # green block: rows 6..11, columns 12..29
    path = tmp_path / "green.png"
    assert cv2.imwrite(str(path), picture[..., ::-1])
    done = run_host(host, model, path)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["file"] == str(path)
    assert record["boxes"][0] == [3.0, 4.0, 9.0, 8.0]  # [1, 2, 3, 4] x (48 / 16, 24 / 12)
    assert record["boxes"][1] == [12.0, 6.0, 30.0, 12.0]


def test_host_rule_breaks_ties_by_raster_order(host, tmp_path):
    # Two one-pixel components: OpenCV labels the one at row 1, column 0 first (it scans pairs of
    # rows), but the one at row 0, column 5 comes first in raster order and must win.
    model = tiny_model(tmp_path / "tiny.onnx", size=(12, 16))
    picture = np.zeros((12, 16, 3), np.uint8)  # the model's own size: no resampling
    picture[1, 0] = picture[0, 5] = (0, 255, 0)
    path = tmp_path / "tie.png"
    assert cv2.imwrite(str(path), picture[..., ::-1])
    done = run_host(host, model, path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["boxes"][1] == [5.0, 0.0, 6.0, 1.0]
    assert done.stdout.splitlines() == run_python(model, [str(path)], tmp_path / "out", "--box-source", "graph")


def test_file_without_graph_boxes_is_boxed_by_the_host_rule(host, tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx", graph_boxes=False)
    files = [str(f) for f in special_images(tmp_path / "images") if f.suffix != ".jpg"]
    done = run_host(host, model, *files)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == run_python(model, files, tmp_path / "out", "--box-source", "host")


def test_strings_are_escaped_as_json_dumps_does(host, tmp_path):
    names = ('caf\u00e9 "au lait"', "back\\slash\ttab\nnewline\x01", "snow\u2603 \U0001f600 /")
    model = tiny_model(tmp_path / "tiny.onnx", class_names=names)
    folder = tmp_path / "d\u00e9j\u00e0 vu \"x\""
    folder.mkdir()
    picture = smooth_picture(20, 20)
    for name in ("\u00e9t\u00e9.png", "plain.png"):
        assert cv2.imwrite(str(folder / name), picture[..., ::-1])
    done = run_host(host, model, folder)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == run_python(model, [str(folder)], tmp_path / "out", "--box-source", "graph")
    assert all(line.isascii() for line in lines)
    assert {tuple(json.loads(line)["labels"]) for line in lines} <= {(a, b) for a in names for b in names}


def test_folders_are_searched_recursively_sorted_as_camdeploy_run_lists_them(host, tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx")
    picture = smooth_picture(16, 16)
    for name in ("b/z.png", "b/a.PNG", "a-c.bmp", "a/b.png", "a/c/d.jpg", "readme.txt", ".hidden.png", "b/x.jpeg"):
        path = tmp_path / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".txt"):
            path.write_text("not an image")
        else:
            assert cv2.imwrite(str(path), picture[..., ::-1])
    for argument in ("photos", "photos/", "./photos//"):
        done = run_host(host, model, argument, "photos/b/z.png", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        expected = run_python(model, [argument, "photos/b/z.png"], tmp_path / "out", "--box-source", "graph",
                              "--overwrite",
                              cwd=tmp_path)
        assert [json.loads(line)["file"] for line in done.stdout.splitlines()] == \
            [json.loads(line)["file"] for line in expected]
        assert done.stdout.splitlines() == expected


# --- errors ---------------------------------------------------------------------------------------


def test_unreadable_image_is_reported_in_one_line_and_skipped(host, tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx")
    good = tmp_path / "good.png"
    assert cv2.imwrite(str(good), smooth_picture(16, 16)[..., ::-1])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    done = run_host(host, model, broken, good, empty)
    assert done.returncode == 0
    assert [json.loads(line)["file"] for line in done.stdout.splitlines()] == [str(good)]
    lines = stderr_lines(done)
    assert len(lines) == 2, done.stderr
    assert str(broken) in lines[0] and "not a readable image" in lines[0]
    assert str(empty) in lines[1] and "not a readable image" in lines[1]


def test_a_jpeg_whose_header_lies_is_refused_as_corrupt_as_run_refuses_it(host, tmp_path):
    """The header claims 3000x2500 pixels; the data holds 96x64. libjpeg would make up the rest and
    print its warning unprefixed: the host refuses the image in one prefixed line, as ``run`` does
    (its reason in failures.jsonl), and a harmless warning is prefixed and the image kept."""
    from conftest import lying_jpeg

    model = tiny_model(tmp_path / "tiny.onnx")
    data = cv2.imencode(".jpg", smooth_picture(64, 96))[1].tobytes()
    lie = tmp_path / "lie.jpg"
    lie.write_bytes(lying_jpeg(data, 3000, 2500))
    scan = data.index(b"\xff\xda")
    stray = tmp_path / "stray.jpg"
    stray.write_bytes(data[:scan] + b"\x12\x34\x56" + data[scan:])
    done = run_host(host, model, lie, stray)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["file"] for line in done.stdout.splitlines()] == [str(stray)]
    lines = done.stderr.splitlines()
    assert all(line.startswith("camdeploy-host: ") for line in lines), done.stderr  # nothing of libjpeg's own
    refused = [line for line in lines if str(lie) in line]
    assert len(refused) == 1 and "corrupt image data, left out (the decoder says: " in refused[0], done.stderr
    assert "premature end" in refused[0].lower()
    assert any(f"{stray}: the decoder says: Corrupt JPEG data: 3 extraneous bytes before marker 0xda (the image is "
               "kept)" in line for line in lines), done.stderr
    run_python(model, [str(stray)], tmp_path / "out")
    assert camdeploy_main(["run", str(model), str(lie), "--out", str(tmp_path / "out2"), "--no-progress"]) == 1
    failure = json.loads((tmp_path / "out2" / "failures.jsonl").read_text())
    assert failure["reason"].split(" (the decoder says")[0] == refused[0].split("skipped ", 1)[1].split(
        " (the decoder says")[0]


def test_no_readable_image_is_an_error(host, tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG broken")
    done = run_host(host, model, broken)
    assert done.returncode == 1 and done.stdout == ""
    assert stderr_lines(done)[-1] == "camdeploy-host: error: none of the 1 images could be read"


def make_foreign_models(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello")
    plain = tiny_model(tmp_path / "plain.onnx", metadata=False)
    return {
        "missing": (tmp_path / "missing.onnx", "no such file"),
        "folder": (tmp_path, "is a folder"),
        "not onnx": (not_onnx, "not a model ONNX Runtime can load"),
        "no metadata": (plain, "metadata key 'camdeploy.class_names' is missing"),
        "wrong topk": (tiny_model(tmp_path / "topk.onnx", topk=3),
                       "the graph returns 2 classes per image, its metadata key 'camdeploy.topk' says 3"),
    }


def test_a_model_path_that_is_a_device_or_too_large_is_refused_before_reading(host, tmp_path):
    image = tmp_path / "a.png"
    assert cv2.imwrite(str(image), smooth_picture(16, 16))
    done = run_host(host, "/dev/zero", image)  # used to be read until memory ran out
    assert done.returncode == 1 and stderr_lines(done) == [
        "camdeploy-host: error: MODEL /dev/zero: not a regular file; expected an .onnx file written by `camdeploy "
        "export`"]
    big = tmp_path / "big.onnx"
    with open(big, "wb") as handle:
        handle.truncate(3 * 2**30)  # sparse
    done = run_host(host, big, image)
    assert done.returncode == 1 and "MODEL " + str(big) + ": 3072 MiB is more than the limit of 2048 MiB" in done.stderr


@pytest.mark.parametrize("case", ["missing", "folder", "not onnx", "no metadata", "wrong topk"])
def test_bad_model_is_one_line_and_exit_1(host, tmp_path, case):
    model, reason = make_foreign_models(tmp_path)[case]
    image = tmp_path / "image.png"
    assert cv2.imwrite(str(image), smooth_picture(8, 8))
    done = run_host(host, model, image)
    assert done.returncode == 1 and done.stdout == ""
    lines = stderr_lines(done)
    assert len(lines) == 1 and lines[0].startswith(f"camdeploy-host: error: MODEL {model}: {reason}"), done.stderr


@pytest.mark.parametrize(("arguments", "message", "status"), [
    ((), "expected MODEL.onnx and at least one IMAGE_OR_DIR, got 0 arguments", 2),
    (("MODEL",), "expected MODEL.onnx and at least one IMAGE_OR_DIR, got 1 arguments", 2),
    (("MODEL", "IMAGE", "--batch-size", "0"), "--batch-size '0': expected an integer from 1 to 512", 2),
    (("MODEL", "IMAGE", "--batch-size=many"), "--batch-size 'many': expected an integer from 1 to 512", 2),
    (("MODEL", "IMAGE", "--threads", "-1"), "--threads '-1': expected an integer from 1 to 1024", 2),
    (("MODEL", "IMAGE", "--threads"), "--threads: expected a value, an integer from 1 to 1024", 2),
    (("MODEL", "IMAGE", "--out", "x"), "unknown option '--out'", 2),
    (("MODEL", "nowhere/"), "INPUT nowhere/: no such file or folder", 1),  # as `camdeploy run` exits
    (("MODEL", "empty"), "INPUT empty: no images found", 1),
])
def test_bad_arguments_and_inputs_are_one_line(host, tmp_path, arguments, message, status):
    tiny_model(tmp_path / "MODEL")
    (tmp_path / "IMAGE").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    done = run_host(host, *arguments, cwd=tmp_path)
    assert done.returncode == status and done.stdout == ""
    lines = stderr_lines(done)
    assert len(lines) == 1 and lines[0].startswith("camdeploy-host: error: " + message), done.stderr


def test_help_and_version(host):
    import onnxruntime

    done = run_host(host, "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: camdeploy-host MODEL.onnx IMAGE_OR_DIR...")
    done = run_host(host, "--version")
    # the same ONNX Runtime as the Python package: the wheel's own library
    assert done.returncode == 0 and f"ONNX Runtime {onnxruntime.__version__} " in done.stdout, done.stdout


# --- the real model on dev images ---------------------------------------------------------------


def dev_sample(count_acuity: int = 40, count_pjpeg: int = 10) -> list[str]:
    """50 dev images, evenly spread: 40 of the 227x227 ones and 10 of the larger originals."""
    records = sorted(json.loads((DEV / "annotations.json").read_text())["images"], key=lambda r: r["file"])
    chosen = []
    for source, count in (("acuity", count_acuity), ("pjpeg", count_pjpeg)):
        files = [r["file"] for r in records if r["source"] == source]
        chosen += [str(DEV / files[i * len(files) // count]) for i in range(count)]
    return chosen


def agreement(host_lines: list[str], python_lines: list[str]) -> tuple[int, int, int, int]:
    """(images, images with the same top-1 class, maps, maps whose box is within 1 px)."""
    host_records = [json.loads(line) for line in host_lines]
    python_records = [json.loads(line) for line in python_lines]
    assert [r["file"] for r in host_records] == [r["file"] for r in python_records]
    same_top1 = maps = close = 0
    for ours, theirs in zip(host_records, python_records, strict=True):
        same_top1 += ours["classes"][0] == theirs["classes"][0]
        for t, label in enumerate(theirs["classes"]):
            maps += 1
            if ours["classes"][t] == label:
                close += np.abs(np.subtract(ours["boxes"][t], theirs["boxes"][t])).max() <= 1.0
    return len(python_records), same_top1, maps, close


@pytest.fixture(scope="session")
def lite0_host_boxes_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EfficientNet-Lite0 exported with --graph-boxes off: no boxes output, the host boxes every map."""
    from camdeploy.export.exporter import ExportOptions, export_onnx
    from camdeploy.export.sources import load_model
    from camdeploy.labels import imagenet_classes

    source = load_model("efficientnet_lite0")
    path = tmp_path_factory.mktemp("lite0-host") / "efficientnet_lite0_host_boxes.onnx"
    export_onnx(source.module, path, ExportOptions(
        input_size=source.input_size, normalization=source.normalization, graph_boxes="off",
        class_names=tuple(imagenet_classes()), source_model=source.name))
    return path


@pytest.mark.integration
@pytest.mark.data
@pytest.mark.parametrize("which", ["graph boxes", "host boxes"])
def test_real_model_agrees_with_camdeploy_run_on_dev_images(host, tmp_path, request, which):
    model = request.getfixturevalue("lite0_onnx" if which == "graph boxes" else "lite0_host_boxes_onnx")
    assert any(o.name == "boxes" for o in onnx.load(model, load_external_data=False).graph.output) == \
        (which == "graph boxes")
    files = dev_sample()
    done = run_host(host, model, *files, "--threads", 2)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    expected = run_python(model, files, tmp_path / "out", "--threads", "2")
    images, same_top1, maps, close = agreement(done.stdout.splitlines(), expected)
    assert images == 50
    assert same_top1 == images, f"top-1 differs on {images - same_top1} of {images} images"
    assert close >= 0.99 * maps, f"boxes within 1 px on {close} of {maps} maps"


@pytest.mark.integration
@pytest.mark.data
def test_host_decodes_dev_jpegs_like_python(host_build, lite0_onnx, tmp_path):
    files = dev_sample()
    dumped = host_inputs(host_build, lite0_onnx, [Path(f) for f in files], tmp_path / "dump")
    worst = max(int(np.abs(dumped[f][0].astype(int) - load_image(f).astype(int)).max()) for f in files)
    assert worst <= MAX_JPEG_DECODE_DIFF
