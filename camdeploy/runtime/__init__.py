"""Running exported camdeploy graphs: runners, image preparation, boxes. Never imports torch.

>>> from camdeploy.runtime import OnnxRuntimeRunner, load_image, prepare
"""

from camdeploy.runtime.boxes import cam_box, cam_boxes
from camdeploy.runtime.images import Frame, list_images, load_image, prepare
from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from camdeploy.runtime.pipeline import RunOptions, run_files
from camdeploy.runtime.result import CamResult
from camdeploy.runtime.runner import Runner
from camdeploy.runtime.torch_runner import TorchRunner

__all__ = [
    "CamResult", "Frame", "OnnxRuntimeRunner", "RunOptions", "Runner", "TorchRunner", "cam_box",
    "cam_boxes", "list_images", "load_image", "prepare", "run_files",
]
