"""Reading images and preparing them for a camdeploy graph, and mapping boxes back to the image.

Images are read with OpenCV: EXIF orientation is applied, grayscale becomes three channels,
RGBA is composited over white and 16-bit images are scaled to 8 bits. Preparation resizes to the
model's input size (``stretch``, the default, or ``crop``: scale the short side and cut the
centre) and applies the normalisation stored in the model's metadata.

Huge images: the header gives the size before anything is decoded, and an image of more than
:attr:`DecodeOptions.max_pixels` is refused with a clear reason. A JPEG much larger than the model
input (:data:`REDUCE_MARGIN` times, in the part that is resized) is decoded at 1/2, 1/4 or 1/8 of
its size by libjpeg's scaled decoding (``IMREAD_REDUCED_COLOR_*``), which needs a fraction of the
memory and time; the prepared tensor then differs from a full decode by a few levels of 255 at
most (measured in benchmarks/results/RUN_MEMORY.md), and boxes still map to original pixels.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from camdeploy.console import warn
from camdeploy.errors import CamdeployError
from camdeploy.metadata import RESIZE_MODES, ModelSpec
from camdeploy.runtime.image_header import image_size

DEFAULT_MAX_PIXELS = 100_000_000
REDUCE_MARGIN = 2
"""A JPEG is decoded reduced by ``r`` only if the part that is resized stays at least this many
times the model input in both directions."""
_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}

_ALPHA_SIGNATURES = (b"\x89PNG", b"RIFF", b"II*\x00", b"MM\x00*")  # PNG, WebP, TIFF


def _may_have_alpha(data: bytes) -> bool:
    """Whether an image could hold transparency, so that it is worth decoding again with alpha:
    PNG with an alpha channel or a tRNS chunk (before its pixel data), WebP and TIFF."""
    if data[:4] != b"\x89PNG":
        return data[:4] in _ALPHA_SIGNATURES
    colour_type = data[25] if len(data) > 25 else 6
    pixels = data.find(b"IDAT")
    return colour_type in (4, 6) or b"tRNS" in data[:pixels if pixels > 0 else len(data)]


def _to_uint8(image: np.ndarray, source: str) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 65535 -> 255
    if image.dtype in (np.float32, np.float64):
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise CamdeployError(f"{source}: pixel type {image.dtype} is not supported; expected 8 or 16 bit")


def _oriented_like(full: np.ndarray, oriented: np.ndarray, source: str) -> np.ndarray | None:
    """The alpha plane of ``full`` (BGRA as stored) turned like ``oriented`` (BGR after EXIF).

    OpenCV applies the EXIF orientation only when it drops the alpha channel, so find which of
    the eight orientations turns the stored colour planes into ``oriented`` and apply it to alpha.
    """
    stored = _to_uint8(full, source)
    for flip in (False, True):
        planes = stored[:, ::-1] if flip else stored
        for quarter_turns in range(4):
            turned = np.rot90(planes, quarter_turns)
            if turned.shape[:2] == oriented.shape[:2] and np.array_equal(turned[:, :, :3], oriented):
                return turned[:, :, 3]
    return None  # colour planes decoded differently: keep the colours, drop the alpha


@dataclass(frozen=True)
class DecodeOptions:
    """Limits and shortcuts of decoding."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    """Largest image (width x height as decoded) to decode; larger ones are refused."""
    target: tuple[int, int] | None = None
    """The model input ``(height, width)``: with it, a much larger JPEG is decoded reduced."""
    resize: str = "stretch"
    """How the image will be resized (``stretch`` or ``crop``): which part of it must stay large."""


@dataclass(frozen=True)
class LoadedImage:
    """An RGB ``uint8 [h, w, 3]`` image, possibly decoded reduced, and the size of the full image."""

    pixels: np.ndarray
    width: int
    height: int


def _reduction(size: tuple[int, int], options: DecodeOptions) -> int:
    """The JPEG reduction factor (1, 2, 4 or 8) for an image of ``size = (width, height)``."""
    if options.target is None:
        return 1
    (width, height), (target_h, target_w) = size, options.target
    if options.resize == "crop":  # only the centred region with the model's aspect ratio is resized
        ratio = max(target_w / width, target_h / height)
        width, height = min(width, round(target_w / ratio)), min(height, round(target_h / ratio))
    factor = 1
    for r in (2, 4, 8):
        if width / r >= REDUCE_MARGIN * target_w and height / r >= REDUCE_MARGIN * target_h:
            factor = r
    return factor


CORRUPTION = ("premature end", "bad huffman", "instead of rst", "libpng error", "truncated")
"""Decoder messages (lower case) that mean pixels were made up for data that is missing or invalid
(libjpeg fills what it could not decode with grey): the image is refused as corrupt. Any other
message (``extraneous bytes before marker``, a libpng warning about a colour profile) leaves the
pixels intact: it is shown with camdeploy's prefix and the image is kept. The C++ host
(``examples/cpp/src/images.cpp``) applies the same list."""

_capture_lock = threading.Lock()
_capture: dict[int, int] = {}
"""This process's capture file (by process id: a forked child makes its own)."""


def _capture_file() -> int:
    pid = os.getpid()
    if pid not in _capture:
        if hasattr(os, "memfd_create"):
            _capture[pid] = os.memfd_create("camdeploy-decoder", os.MFD_CLOEXEC)
        else:  # pragma: no cover - not Linux
            fd, name = tempfile.mkstemp(prefix="camdeploy-decoder-")
            os.unlink(name)
            _capture[pid] = fd
    return _capture[pid]


def _with_decoder_messages(decode: Callable[[], np.ndarray | None]) -> tuple[np.ndarray | None, list[str]]:
    """Call ``decode`` with file descriptor 2 captured: the decoder libraries (libjpeg, libpng)
    print their warnings there, unprefixed. Returns the result and their lines; what other threads
    wrote meanwhile (camdeploy's own lines, a progress bar) is passed on to stderr."""
    with _capture_lock:
        sys.stderr.flush()
        capture = _capture_file()
        os.ftruncate(capture, 0)
        os.lseek(capture, 0, os.SEEK_SET)  # shared with the descriptor 2 made from it: write from the start
        saved = os.dup(2)
        os.dup2(capture, 2)
        try:
            result = decode()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        said = os.pread(capture, 1 << 16, 0).decode("utf-8", "replace")
    messages: list[str] = []
    for line in said.splitlines(keepends=True):
        if line.startswith("camdeploy") or "\r" in line:
            with contextlib.suppress(OSError):
                os.write(2, line.encode("utf-8"))
        elif line.strip():
            messages.append(line.strip())
    return result, messages


def _imdecode(buffer: np.ndarray, flags: int, source: str = "image") -> np.ndarray | None:
    """``cv2.imdecode``, with OpenCV's own log line about an undecodable file silenced (our error
    says it in one line) and the decoder libraries' messages checked (:data:`CORRUPTION`): data
    that is missing or invalid is refused as corrupt, other messages become warnings."""
    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)

    def call() -> np.ndarray | None:
        try:
            return cv2.imdecode(buffer, flags) if buffer.size else None
        except cv2.error:  # beyond OpenCV's own pixel limit, among others
            return None

    try:
        image, messages = _with_decoder_messages(call)
    finally:
        logging.setLogLevel(level)
    for message in messages:
        if any(word in message.lower() for word in CORRUPTION):
            raise CamdeployError(f"{source}: corrupt image data, left out (the decoder says: {message})")
    for message in dict.fromkeys(messages):
        warn(f"{source}: the decoder says: {message} (the image is kept)")
    return image


def _check_size(decoded: tuple[int, int], stored: tuple[int, int] | None, factor: int, source: str) -> None:
    """Refuse an image whose decoded size is not the one its header states (``stored``, divided by
    the reduction ``factor``, either way round for an EXIF orientation)."""
    if stored is None:
        return
    expected = (-(-stored[0] // factor), -(-stored[1] // factor))
    if decoded not in (expected, expected[::-1]):
        raise CamdeployError(f"{source}: corrupt image, left out: its header says {stored[0]}x{stored[1]} pixels "
                             f"and the data decodes to {decoded[0] * factor}x{decoded[1] * factor}")


def _plan(head: bytes, source: str, options: DecodeOptions) -> tuple[tuple[int, int] | None, int]:
    """The stored size (from the header, if readable) and the JPEG reduction factor; refuses an
    image above the pixel limit before anything is decoded."""
    stored = image_size(head)
    if stored is None:
        return None, 1
    factor = _reduction(stored, options) if head[:3] == b"\xff\xd8\xff" else 1
    if (stored[0] // factor) * (stored[1] // factor) > options.max_pixels:
        raise CamdeployError(f"{source}: {stored[0]}x{stored[1]} pixels is more than the limit of "
                             f"{options.max_pixels} (--max-pixels); raise the limit or downscale the image")
    return stored, factor


def decode(data: bytes, source: str = "image", options: DecodeOptions = DecodeOptions()) -> LoadedImage:
    """Decode encoded image bytes within ``options``' limits (see the module's docstring)."""
    stored, factor = _plan(data, source, options)
    if stored is None or factor == 1:
        image = decode_image(data, source, options.max_pixels)
        _check_size((image.shape[1], image.shape[0]), stored, 1, source)
        return LoadedImage(image, image.shape[1], image.shape[0])
    reduced = _imdecode(np.frombuffer(data, dtype=np.uint8), _REDUCED[factor], source)
    if reduced is None:
        raise CamdeployError(f"{source}: not a readable image (corrupt, empty or unknown format)")
    _check_size((reduced.shape[1], reduced.shape[0]), stored, factor, source)
    width, height = stored
    if (reduced.shape[1], reduced.shape[0]) != (-(-width // factor), -(-height // factor)):
        width, height = height, width  # EXIF orientation turned it a quarter
    return LoadedImage(cv2.cvtColor(reduced, cv2.COLOR_BGR2RGB), width, height)


def decode_image(data: bytes, source: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to an RGB ``uint8`` array ``[H, W, 3]``, whole."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_COLOR applies the EXIF orientation and turns grayscale into 3 channels;
    # IMREAD_ANYDEPTH keeps 16-bit samples so that we scale them ourselves.
    image = _imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH, source)
    if image is None:
        raise CamdeployError(f"{source}: not a readable image (corrupt, empty or unknown format)")
    if image.shape[0] * image.shape[1] > max_pixels:  # a format whose header we do not read
        raise CamdeployError(f"{source}: {image.shape[1]}x{image.shape[0]} pixels is more than the limit of "
                             f"{max_pixels} (--max-pixels); raise the limit or downscale the image")
    image = _to_uint8(image, source)
    if _may_have_alpha(data):
        full = _imdecode(buffer, cv2.IMREAD_UNCHANGED, source)  # keeps alpha, ignores EXIF orientation
        if full is not None and full.ndim == 3 and full.shape[2] == 4:
            alpha = _oriented_like(full, image, source)
            if alpha is not None:
                weight = alpha.astype(np.float32)[:, :, None] / 255.0
                image = (image * weight + 255.0 * (1.0 - weight) + 0.5).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_bytes(path: Path, source: str | None = None) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CamdeployError(f"{source or path}: cannot read the file ({exc.strerror})") from exc


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file to RGB ``uint8`` ``[H, W, 3]``, whole; unreadable files raise CamdeployError."""
    return decode_image(_read_bytes(Path(path)), str(path))


HEADER_BYTES = 1 << 18
"""Bytes read first, for the header: enough for a JPEG's start-of-frame after its EXIF data."""


def read_image(path: str | Path, options: DecodeOptions = DecodeOptions(), source: str | None = None) -> LoadedImage:
    """Read an image file within ``options``' limits, reduced where they allow it. The header is
    read first: a file above the pixel limit is refused without being read whole. Errors name
    ``source`` (default: ``path``)."""
    source = source or str(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEADER_BYTES)
            _plan(head, source, options)
            data = head + handle.read()
    except OSError as exc:
        raise CamdeployError(f"{source}: cannot read the file ({exc.strerror})") from exc
    return decode(data, source, options)


@dataclass(frozen=True)
class Frame:
    """How an input-tensor pixel maps to the original image: ``orig = tensor * scale + offset``.

    Boxes use pixel-edge coordinates (a box covering pixel columns 3..5 has x0=3, x1=6), so the
    mapping is a plain affine map, exact for stretch and crop alike.
    """

    width: int
    height: int
    scale_x: float
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``[..., 4]`` boxes ``x0, y0, x1, y1`` from tensor pixels to original-image pixels."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[..., 0::2] = boxes[..., 0::2] * self.scale_x + self.offset_x
        out[..., 1::2] = boxes[..., 1::2] * self.scale_y + self.offset_y
        np.clip(out[..., 0::2], 0, self.width, out=out[..., 0::2])
        np.clip(out[..., 1::2], 0, self.height, out=out[..., 1::2])
        return out

    def to_tensor(self, boxes: np.ndarray) -> np.ndarray:
        """The inverse map: ``[..., 4]`` boxes from original-image pixels to tensor pixels."""
        out = np.array(boxes, dtype=np.float64, copy=True)
        out[..., 0::2] = (out[..., 0::2] - self.offset_x) / self.scale_x
        out[..., 1::2] = (out[..., 1::2] - self.offset_y) / self.scale_y
        return out


def resize_for_model(image: np.ndarray, height: int, width: int, mode: str = "stretch"
                     ) -> tuple[np.ndarray, Frame]:
    """Resize an RGB image to ``height x width``; return it and the :class:`Frame` back to it."""
    if mode not in RESIZE_MODES:
        raise CamdeployError(f"--resize {mode!r}: expected one of {', '.join(RESIZE_MODES)}")
    h0, w0 = image.shape[:2]
    left = top = 0
    if mode == "crop":  # the centred region with the model's aspect ratio, cut before resizing
        ratio = max(width / w0, height / h0)
        crop_w, crop_h = min(w0, max(1, round(width / ratio))), min(h0, max(1, round(height / ratio)))
        left, top = (w0 - crop_w) // 2, (h0 - crop_h) // 2
        image = image[top:top + crop_h, left:left + crop_w]
    src_h, src_w = image.shape[:2]
    shrinking = width < src_w or height < src_h
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return resized, Frame(w0, h0, src_w / width, src_h / height, float(left), float(top))


def normalize(image: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` -> model input ``float32 [3, H, W]`` with the spec's normalisation."""
    scale = np.asarray(spec.normalization.scale, dtype=np.float32)[:, None, None]
    offset = np.asarray(spec.normalization.offset, dtype=np.float32)[:, None, None]
    out = np.empty((3, *image.shape[:2]), dtype=np.float32)
    np.multiply(image.transpose(2, 0, 1), scale, out=out)  # float32(pixel) * scale, then + offset:
    np.add(out, offset, out=out)  # two roundings, as hosts in other languages compute it
    return out


def prepare(image: np.ndarray, spec: ModelSpec, resize: str | None = None) -> tuple[np.ndarray, Frame]:
    """Resize and normalise one RGB image for the model described by ``spec``."""
    resized, frame = resize_for_model(image, spec.input_height, spec.input_width,
                                      resize or spec.resize)
    return normalize(resized, spec), frame


def prepare_loaded(loaded: LoadedImage, spec: ModelSpec, resize: str | None = None) -> tuple[np.ndarray, Frame]:
    """:func:`prepare` for a :class:`LoadedImage`: the frame maps to the full image's pixels even when
    it was decoded reduced."""
    tensor, frame = prepare(loaded.pixels, spec, resize)
    h, w = loaded.pixels.shape[:2]
    if (w, h) == (loaded.width, loaded.height):
        return tensor, frame
    sx, sy = loaded.width / w, loaded.height / h
    return tensor, Frame(loaded.width, loaded.height, frame.scale_x * sx, frame.scale_y * sy,
                         frame.offset_x * sx, frame.offset_y * sy)
