# Types of camdeploy's C extension (camdeploy/native/module.c). The arrays are C-contiguous float32
# (bool or uint8 for `decided`); the outputs are written in place.
import numpy as np

def map_boxes(maps: np.ndarray, count: int, h: int, w: int, out_h: int, out_w: int, tau: float,
              margin_per_unit: float, boxes: np.ndarray, decided: np.ndarray, /) -> None: ...
def cam_boxes(cams: np.ndarray, count: int, height: int, width: int, tau: float, boxes: np.ndarray, /) -> None: ...
