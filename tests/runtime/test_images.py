"""Reading and preparing images (camdeploy.runtime.images) on small images written by the tests."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec, Normalization
from camdeploy.runtime.images import (
    Frame,
    decode_image,
    load_image,
    normalize,
    prepare,
    resize_for_model,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def make_spec(height: int = 4, width: int = 6, resize: str = "stretch",
              normalization: Normalization | None = None) -> ModelSpec:
    return ModelSpec(
        class_names=("cat", "dog"),
        input_height=height,
        input_width=width,
        normalization=normalization or Normalization((1 / 255, 2 / 255, 0.5), (0.0, -1.0, -10.0)),
        topk=1,
        box_threshold=0.2,
        source_model="test",
        resize=resize,
    )


def halves(height: int, width: int, left: tuple[int, int, int], right: tuple[int, int, int]) -> np.ndarray:
    """RGB uint8 image whose left half is ``left`` and right half ``right``."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:, : width // 2] = left
    image[:, width // 2:] = right
    return image


def write_with_orientation(path: Path, image: Image.Image, orientation: int) -> None:
    exif = image.getexif()
    exif[0x0112] = orientation  # Orientation tag
    image.save(path, exif=exif.tobytes(), **({"quality": 95} if path.suffix == ".jpg" else {}))


# --- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_decode_gives_rgb_order(tmp_path, suffix):
    path = tmp_path / f"red_blue{suffix}"
    Image.fromarray(halves(16, 24, RED, BLUE)).save(path)
    image = load_image(path)
    assert image.dtype == np.uint8
    assert image.shape == (16, 24, 3)
    left, right = image[:, :10].astype(int), image[:, 14:].astype(int)  # away from the JPEG edge
    assert (left[..., 0] > 230).all() and (left[..., 2] < 25).all()
    assert (right[..., 2] > 230).all() and (right[..., 0] < 25).all()
    assert (image[..., 1] < 25).all()


def test_decode_image_from_bytes_matches_load_image(tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(halves(6, 8, RED, GREEN)).save(path)
    np.testing.assert_array_equal(decode_image(path.read_bytes()), load_image(path))
    np.testing.assert_array_equal(load_image(path), halves(6, 8, RED, GREEN))


# Orientation 6: rotate 90 degrees clockwise to display; 8: 90 counter-clockwise; 3: 180.
# A 5x5 red marker sits in the top-left corner of the stored 40x20 (width x height) image.
@pytest.mark.parametrize("orientation, shape, marker_rows, marker_cols", [
    (1, (20, 40), slice(0, 5), slice(0, 5)),
    (6, (40, 20), slice(0, 5), slice(15, 20)),
    (8, (40, 20), slice(35, 40), slice(0, 5)),
    (3, (20, 40), slice(15, 20), slice(35, 40)),
])
def test_exif_orientation_is_applied(tmp_path, orientation, shape, marker_rows, marker_cols):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:5, :5] = RED
    path = tmp_path / "oriented.jpg"
    write_with_orientation(path, Image.fromarray(stored), orientation)
    image = load_image(path)
    assert image.shape == (*shape, 3)
    red = image[..., 0].astype(int)
    assert red[marker_rows, marker_cols][1:-1, 1:-1].min() > 200  # inside the marker, off its edge
    outside = red.copy()
    outside[marker_rows, marker_cols] = 0
    outside[max(marker_rows.start - 2, 0):marker_rows.stop + 2,
            max(marker_cols.start - 2, 0):marker_cols.stop + 2] = 0  # JPEG ringing near the marker
    assert outside.max() < 40


def test_grayscale_png_gives_three_equal_channels(tmp_path):
    gray = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    image = load_image(path)
    assert image.shape == (12, 20, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)


def rgba_image() -> np.ndarray:
    """16x20 RGBA: left half transparent (hidden colour), right half opaque, one half-alpha column."""
    rgba = np.zeros((16, 20, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:, :10, 3] = 0
    rgba[:, 10:, 3] = 255
    rgba[:, 19, :3] = (100, 0, 200)
    rgba[:, 19, 3] = 128
    return rgba


def test_rgba_png_is_composited_over_white(tmp_path):
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba_image(), mode="RGBA").save(path)
    image = load_image(path)
    assert image.shape == (16, 20, 3)
    assert (image[:, :10] == 255).all()  # fully transparent -> white
    assert (image[:, 10:19] == (10, 200, 30)).all()  # opaque keeps its colour
    a = 128 / 255  # half alpha: value * a + 255 * (1 - a)
    expected = [round(v * a + 255 * (1 - a)) for v in (100, 0, 200)]
    np.testing.assert_allclose(image[:, 19].astype(int), np.broadcast_to(expected, (16, 3)), atol=1)


def test_gray_alpha_png_is_composited_over_white(tmp_path):
    la = np.zeros((6, 8, 2), dtype=np.uint8)
    la[..., 0] = 50
    la[:, 4:, 1] = 255
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    image = load_image(path)
    assert (image[:, :4] == 255).all()
    assert (image[:, 4:] == 50).all()


def test_palette_png_with_transparent_index_is_composited_over_white(tmp_path):
    palette = Image.new("P", (8, 6))
    palette.putpalette([*RED, *BLUE])
    pixels = np.zeros((6, 8), dtype=np.uint8)
    pixels[:, :4] = 1  # index 1 (blue) is the transparent one
    palette.putdata(pixels.ravel().tolist())
    path = tmp_path / "palette.png"
    palette.save(path, transparency=1)
    image = load_image(path)
    assert (image[:, :4] == 255).all()
    assert (image[:, 4:] == RED).all()


# A transparent PNG whose EXIF says "rotate": the decoded colours are rotated, so the alpha used
# for compositing must be rotated with them. Left half transparent -> after orientation 6 (90
# degrees clockwise) the transparent part is the top half and must be white.
@pytest.mark.parametrize("size", [(20, 40), (20, 20)], ids=["non-square", "square"])
def test_rgba_png_with_exif_orientation_is_composited_over_white(tmp_path, size):
    height, width = size
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[:, width // 2:] = (255, 0, 0, 255)  # left half transparent black, right half opaque red
    path = tmp_path / "rotated.png"
    write_with_orientation(path, Image.fromarray(rgba, mode="RGBA"), 6)
    image = load_image(path)
    assert image.shape == (width, height, 3)
    assert (image[: width // 2] == 255).all()  # top half: was the transparent left half
    assert (image[width // 2:] == RED).all()


def test_16_bit_png_is_scaled_to_8_bit(tmp_path):
    gray16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(3, axis=0)
    path = tmp_path / "gray16.png"
    assert cv2.imwrite(str(path), gray16)
    image = load_image(path)
    assert image.dtype == np.uint8
    assert image.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], np.array([[0, 1, 128, 255]] * 3))


def test_16_bit_colour_png_keeps_rgb_order(tmp_path):
    rgb16 = np.zeros((4, 5, 3), dtype=np.uint16)
    rgb16[..., 0] = 65535  # red
    rgb16[..., 2] = 32896  # blue, about half
    path = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(path), rgb16[..., ::-1])  # OpenCV writes BGR
    image = load_image(path)
    assert image.dtype == np.uint8
    assert (image == (255, 0, 128)).all()


def test_16_bit_rgba_png_is_composited_over_white(tmp_path):
    rgba16 = np.zeros((4, 6, 4), dtype=np.uint16)
    rgba16[..., 1] = 65535
    rgba16[:, 3:, 3] = 65535
    path = tmp_path / "rgba16.png"
    assert cv2.imwrite(str(path), rgba16[..., [2, 1, 0, 3]])  # BGRA
    image = load_image(path)
    assert image.dtype == np.uint8
    assert (image[:, :3] == 255).all()
    assert (image[:, 3:] == GREEN).all()


# --- unreadable files -----------------------------------------------------------------------


def truncated_png() -> bytes:
    ok, encoded = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
    assert ok
    data = encoded.tobytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("name, data", [
    ("noise.jpg", np.random.default_rng(1).bytes(2000)),
    ("empty.png", b""),
    ("truncated.png", truncated_png()),
    ("header_only.jpg", b"\xff\xd8\xff\xe0"),
])
def test_corrupt_file_raises_naming_the_file(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CamdeployError, match=re.escape(str(path)) + ": not a readable image"):
        load_image(path)


def test_decode_image_error_names_the_source():
    with pytest.raises(CamdeployError, match=r"^photo\.jpg: not a readable image"):
        decode_image(b"not an image", "photo.jpg")


def test_missing_file_raises_naming_the_file(tmp_path):
    path = tmp_path / "absent.jpg"
    with pytest.raises(CamdeployError, match=re.escape(str(path)) + ": cannot read the file"):
        load_image(path)


def test_folder_given_as_image_raises(tmp_path):
    with pytest.raises(CamdeployError, match=re.escape(str(tmp_path)) + ": cannot read the file"):
        load_image(tmp_path)


# --- resizing and the frame back to the image -----------------------------------------------


def test_stretch_resizes_and_maps_boxes_back():
    image = np.zeros((100, 200, 3), dtype=np.uint8)  # H=100, W=200
    resized, frame = resize_for_model(image, 30, 50, "stretch")
    assert resized.shape == (30, 50, 3)
    assert resized.dtype == np.uint8
    assert frame == Frame(200, 100, 4.0, 100 / 30, 0.0, 0.0)
    full = frame.to_original(np.array([0, 0, 50, 30], dtype=np.float32))
    np.testing.assert_allclose(full, [0, 0, 200, 100], rtol=1e-6)
    part = frame.to_original(np.array([10, 3, 20, 6], dtype=np.float32))
    np.testing.assert_allclose(part, [40, 10, 80, 20], rtol=1e-6)


def test_stretch_is_the_default_mode():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    assert resize_for_model(image, 30, 50)[1] == resize_for_model(image, 30, 50, "stretch")[1]


def test_crop_keeps_the_centre_of_a_wide_image():
    image = np.empty((100, 200, 3), dtype=np.uint8)  # red | green (centre 100 columns) | blue
    image[:, :50], image[:, 50:150], image[:, 150:] = RED, GREEN, BLUE
    resized, frame = resize_for_model(image, 50, 50, "crop")
    assert resized.shape == (50, 50, 3)
    assert (resized == GREEN).all()
    full = frame.to_original(np.array([0, 0, 50, 50], dtype=np.float32))
    np.testing.assert_allclose(full, [50, 0, 150, 100], rtol=1e-6)  # the central 100x100 square


def test_crop_keeps_the_centre_of_a_tall_image_for_a_wide_input():
    image = np.zeros((120, 60, 3), dtype=np.uint8)  # H=120, W=60; input 30x40 (H x W)
    resized, frame = resize_for_model(image, 30, 40, "crop")
    assert resized.shape == (30, 40, 3)
    # The 4:3 region of the full width is 60x45 original pixels, cut at row (120 - 45) // 2 = 37
    # before resizing, so the tensor covers original rows 37 .. 82.
    full = frame.to_original(np.array([0, 0, 40, 30], dtype=np.float32))
    np.testing.assert_allclose(full, [0, 37, 60, 82], rtol=1e-6)


def test_to_original_keeps_batch_shape_and_clips_to_the_image():
    frame = resize_for_model(np.zeros((100, 200, 3), dtype=np.uint8), 50, 50, "crop")[1]
    boxes = np.array([[[0, 0, 50, 50], [-100, -100, 500, 500]]], dtype=np.float32)  # [N=1, T=2, 4]
    out = frame.to_original(boxes)
    assert out.shape == (1, 2, 4)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [50, 0, 150, 100], rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], [0, 0, 200, 100], rtol=1e-6)


def test_invalid_resize_mode_raises_naming_the_option():
    with pytest.raises(CamdeployError, match=r"--resize 'fit': expected one of stretch, crop"):
        resize_for_model(np.zeros((10, 10, 3), dtype=np.uint8), 4, 4, "fit")


# --- normalisation --------------------------------------------------------------------------


def test_normalize_applies_scale_and_offset_per_channel():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    x = normalize(image, make_spec())
    assert x.dtype == np.float32
    assert x.shape == (3, 4, 6)
    assert x.flags["C_CONTIGUOUS"]
    for y, col in [(0, 0), (3, 5), (2, 1)]:
        r, g, b = (float(v) for v in image[y, col])
        np.testing.assert_allclose(x[:, y, col], [r / 255, g * 2 / 255 - 1, b * 0.5 - 10], rtol=1e-6)


def test_normalize_with_mean_std():
    spec = make_spec(normalization=Normalization.from_mean_std((0.5, 0.5, 0.5), (0.5, 0.25, 0.5)))
    image = np.array([[[0, 255, 51]]], dtype=np.uint8)
    # (pixel / 255 - mean) / std: (0 - .5) / .5, (1 - .5) / .25, (.2 - .5) / .5
    np.testing.assert_allclose(normalize(image, spec)[:, 0, 0], [-1.0, 2.0, -0.6], atol=1e-6)


def test_prepare_resizes_then_normalises():
    image = np.empty((12, 8, 3), dtype=np.uint8)
    image[...] = (10, 20, 30)  # constant, so any resize keeps the values
    x, frame = prepare(image, make_spec(height=4, width=6))
    assert x.dtype == np.float32
    assert x.shape == (3, 4, 6)
    np.testing.assert_allclose(x[0], 10 / 255, rtol=1e-6)
    np.testing.assert_allclose(x[1], 20 * 2 / 255 - 1, rtol=1e-6)
    np.testing.assert_allclose(x[2], 30 * 0.5 - 10, rtol=1e-6)
    assert frame == Frame(8, 12, 8 / 6, 3.0)


def test_prepare_uses_the_spec_resize_mode_unless_overridden():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    crop_frame = resize_for_model(image, 50, 50, "crop")[1]
    stretch_frame = resize_for_model(image, 50, 50, "stretch")[1]
    assert prepare(image, make_spec(50, 50, resize="crop"))[1] == crop_frame
    assert prepare(image, make_spec(50, 50, resize="crop"), "stretch")[1] == stretch_frame
    assert prepare(image, make_spec(50, 50), "crop")[1] == crop_frame


def _photo_jpeg(height: int = 368, width: int = 496) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    picture = np.stack([(x * 3) % 255, (y * 2) % 255, (x + y) % 255], axis=-1).astype(np.uint8)
    return cv2.imencode(".jpg", picture)[1].tobytes()


@pytest.mark.parametrize(("width", "height", "target"), [(65000, 65000, (224, 224)), (900, 700, None)],
                         ids=["reduced decode", "whole decode"])
def test_a_jpeg_whose_header_lies_is_refused_as_corrupt_without_decoder_noise(capfd, width, height, target):
    """The header promises more pixels than the data holds: libjpeg would make up the rest (grey)
    and print its warning on stderr, unprefixed. The image is refused with the decoder's words."""
    from conftest import lying_jpeg

    from camdeploy.runtime.images import DecodeOptions, decode

    data = lying_jpeg(_photo_jpeg(), width, height)
    with pytest.raises(CamdeployError, match=r"^lie\.jpg: corrupt image data, left out \(the decoder says: "
                                             r"(Corrupt JPEG data: premature end of data segment|Premature end)"):
        decode(data, "lie.jpg", DecodeOptions(target=target))
    assert capfd.readouterr().err == ""  # nothing of libjpeg's own reached stderr


def test_a_truncated_jpeg_is_refused_as_corrupt(capfd):
    from camdeploy.runtime.images import decode

    data = _photo_jpeg()
    # OpenCV 5 gives up on it; others decode grey where the data ends, and libjpeg says so
    with pytest.raises(CamdeployError, match=r"^cut\.jpg: (not a readable image|corrupt image data, left out \(the "
                                             r"decoder says: .*[Pp]remature end)"):
        decode(data[: len(data) // 2], "cut.jpg")
    assert capfd.readouterr().err == ""


def test_a_harmless_decoder_warning_is_prefixed_and_the_image_kept(capfd):
    """Stray bytes before the start-of-scan marker: libjpeg says so, the pixels are whole."""
    from camdeploy.runtime.images import decode

    data = _photo_jpeg()
    scan = data.index(b"\xff\xda")
    padded = data[:scan] + b"\x12\x34\x56" + data[scan:]
    loaded = decode(padded, "padded.jpg")
    assert np.array_equal(loaded.pixels, decode(data, "plain.jpg").pixels)
    err = capfd.readouterr().err
    assert err.startswith("camdeploy: warning: padded.jpg: the decoder says: Corrupt JPEG data: 3 extraneous bytes "
                          "before marker 0xda (the image is kept)"), err
    assert all(line.startswith("camdeploy: ") for line in err.splitlines())


def test_a_decoded_size_other_than_the_header_s_is_refused(tmp_path, monkeypatch):
    from camdeploy.runtime import images

    png = cv2.imencode(".png", np.zeros((30, 40, 3), np.uint8))[1].tobytes()
    assert images.decode(png, "fine.png").pixels.shape == (30, 40, 3)
    monkeypatch.setattr(images, "image_size", lambda data: (80, 60))  # what a lying header would say
    with pytest.raises(CamdeployError, match=r"^odd\.png: corrupt image, left out: its header says 80x60 pixels and "
                                             r"the data decodes to 40x30$"):
        images.decode(png, "odd.png")


def test_a_run_lists_the_lying_jpeg_in_failures_with_the_decoders_reason(tmp_path, capfd):
    from conftest import lying_jpeg
    from tiny_models import TorchvisionStyle, seeded

    from camdeploy.cli import main
    from camdeploy.export.exporter import ExportOptions, export_onnx

    model = tmp_path / "tiny.onnx"
    export_onnx(seeded(TorchvisionStyle()), model, ExportOptions(input_size=(32, 32), topk=3, source_model="tiny"))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "good.jpg").write_bytes(_photo_jpeg())
    (tmp_path / "in" / "lie.jpg").write_bytes(lying_jpeg(_photo_jpeg(), 20000, 20000))
    capfd.readouterr()
    assert main(["run", str(model), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-progress"]) == 3
    err = capfd.readouterr().err
    assert all(line.startswith("camdeploy") for line in err.splitlines()), err
    import json

    failure = json.loads((tmp_path / "out" / "failures.jsonl").read_text())
    assert failure["file"].endswith("lie.jpg") and failure["stage"] == "read"
    assert "corrupt image data, left out (the decoder says: " in failure["reason"]
