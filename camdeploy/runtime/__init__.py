"""Running exported camdeploy graphs: runners, image preparation, boxes. Imports neither torch nor
the exporter (``camdeploy.export``); the PyTorch reference runner lives there, with the code that
needs torch (:class:`camdeploy.export.reference.TorchRunner`).

>>> from camdeploy.runtime import OnnxRuntimeRunner, load_image, prepare
"""

from camdeploy.runtime.boxes import cam_box, cam_boxes
from camdeploy.runtime.images import Frame, load_image, prepare
from camdeploy.runtime.inputs import list_images
from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from camdeploy.runtime.pipeline import RunOptions, run_files
from camdeploy.runtime.result import CamResult
from camdeploy.runtime.runner import Runner

__all__ = [
    "CamResult", "Frame", "OnnxRuntimeRunner", "RunOptions", "Runner", "cam_box", "cam_boxes", "list_images",
    "load_image", "prepare", "run_files",
]
