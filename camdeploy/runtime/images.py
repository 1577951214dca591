"""Reading images and preparing them for a camdeploy graph, and mapping boxes back to the image.

Images are read with OpenCV: EXIF orientation is applied, grayscale becomes three channels,
RGBA is composited over white and 16-bit images are scaled to 8 bits. Preparation resizes to the
model's input size (``stretch``, the default, or ``crop``: scale the short side and cut the
centre) and applies the normalisation stored in the model's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.metadata import RESIZE_MODES, ModelSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_ALPHA_SIGNATURES = (b"\x89PNG", b"RIFF", b"II*\x00", b"MM\x00*")  # PNG, WebP, TIFF


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


def decode_image(data: bytes, source: str = "image") -> np.ndarray:
    """Decode encoded image bytes to an RGB ``uint8`` array ``[H, W, 3]``."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_COLOR applies the EXIF orientation and turns grayscale into 3 channels;
    # IMREAD_ANYDEPTH keeps 16-bit samples so that we scale them ourselves. OpenCV's own log
    # line about an undecodable file is silenced: our error says it in one line.
    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH) if buffer.size else None
    finally:
        logging.setLogLevel(level)
    if image is None:
        raise CamdeployError(f"{source}: not a readable image (corrupt, empty or unknown format)")
    image = _to_uint8(image, source)
    if data[:4] in _ALPHA_SIGNATURES:
        full = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)  # keeps alpha, ignores EXIF orientation
        if full is not None and full.ndim == 3 and full.shape[2] == 4:
            alpha = _oriented_like(full, image, source)
            if alpha is not None:
                weight = alpha.astype(np.float32)[:, :, None] / 255.0
                image = (image * weight + 255.0 * (1.0 - weight) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(image[:, :, ::-1])  # BGR -> RGB


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file to RGB ``uint8`` ``[H, W, 3]``; unreadable files raise CamdeployError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CamdeployError(f"{path}: cannot read the file ({exc.strerror})") from exc
    return decode_image(data, str(path))


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
    scale = np.asarray(spec.normalization.scale, dtype=np.float32)
    offset = np.asarray(spec.normalization.offset, dtype=np.float32)
    x = image.astype(np.float32) * scale + offset  # [H, W, 3]
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def prepare(image: np.ndarray, spec: ModelSpec, resize: str | None = None) -> tuple[np.ndarray, Frame]:
    """Resize and normalise one RGB image for the model described by ``spec``."""
    resized, frame = resize_for_model(image, spec.input_height, spec.input_width,
                                      resize or spec.resize)
    return normalize(resized, spec), frame


def list_images(inputs: list[str]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into image paths; missing paths raise."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.exists():
            found.append(path)
        else:
            raise CamdeployError(f"INPUT {item}: no such file or folder")
    if not found:
        raise CamdeployError(
            f"INPUT {' '.join(inputs)}: no images found; expected files or folders holding "
            f"{', '.join(IMAGE_SUFFIXES)} files"
        )
    return found
