"""Pictures of a result: the CAM as a heatmap over the photo, with the box and the label."""

from __future__ import annotations

import cv2
import numpy as np

from camdeploy.runtime.images import Frame


def cam_to_image(cam: np.ndarray, frame: Frame) -> np.ndarray:
    """Place an input-space map ``[S_h, S_w]`` on the original image's ``[H, W]`` grid."""
    s_h, s_w = cam.shape
    x0, y0 = round(frame.offset_x), round(frame.offset_y)
    width = max(1, round(s_w * frame.scale_x))
    height = max(1, round(s_h * frame.scale_y))
    full = np.zeros((frame.height, frame.width), dtype=np.float32)
    patch = cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    region = full[y0:y0 + height, x0:x0 + width]
    region[...] = patch[: region.shape[0], : region.shape[1]]
    return full


def draw_overlay(image: np.ndarray, cam: np.ndarray, box: np.ndarray, label: str, frame: Frame,
                 alpha: float = 0.45) -> np.ndarray:
    """RGB ``uint8`` picture: ``image`` blended with the JET heatmap of ``cam``, box and label.

    ``frame`` and ``box`` are in the original image's pixels; an ``image`` decoded reduced (a huge
    JPEG) is drawn on at its own size, the frame and the box scaled to it.
    """
    height, width = image.shape[:2]
    if (width, height) != (frame.width, frame.height):
        sx, sy = width / frame.width, height / frame.height
        frame = Frame(width, height, frame.scale_x * sx, frame.scale_y * sy, frame.offset_x * sx, frame.offset_y * sy)
        box = np.asarray(box, dtype=np.float64) * np.array([sx, sy, sx, sy])
    heat = cam_to_image(cam, frame)
    colored = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    picture = cv2.addWeighted(image, 1.0 - alpha, colored, alpha, 0.0)
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    thickness = max(2, round(min(image.shape[:2]) / 150))
    cv2.rectangle(picture, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (0, 255, 0), thickness)
    font_scale = max(0.45, min(image.shape[:2]) / 500)
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    ty = y0 - 4 if y0 - th - base - 4 >= 0 else min(image.shape[0] - 1, y0 + th + 4)
    cv2.rectangle(picture, (x0, ty - th - 2), (x0 + tw + 4, ty + base), (0, 0, 0), -1)
    cv2.putText(picture, label, (x0 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return picture
