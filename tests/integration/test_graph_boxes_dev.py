"""`--graph-boxes on` on every dev image: the graph's own boxes against the host rule on its CAMs."""

import numpy as np
import pytest
from conftest import DEV

from camdeploy.metadata import read_spec
from camdeploy.runtime.boxes import cam_boxes
from camdeploy.runtime.images import load_image, prepare
from camdeploy.runtime.inputs import list_images
from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

pytestmark = [pytest.mark.integration, pytest.mark.data]


def test_graph_boxes_equal_host_boxes_on_all_dev_images(lite0_onnx):
    spec = read_spec(str(lite0_onnx))
    paths = list_images([str(DEV / "images")])
    assert len(paths) == 699
    equal = flagged = maps = 0
    top1_equal = 0
    with OnnxRuntimeRunner(lite0_onnx, box_source="graph") as runner:
        for start in range(0, len(paths), 32):
            x = np.stack([prepare(load_image(p), spec)[0] for p in paths[start:start + 32]])
            raw = runner.run_outputs(["cams", "boxes", "boxes_exact"], x)
            cams, boxes, exact = raw["cams"], raw["boxes"], raw["boxes_exact"]
            host = cam_boxes(cams, spec.box_threshold)
            same = (boxes == host).all(axis=-1)
            equal += int(same.sum())
            top1_equal += int(same[:, 0].sum())
            flagged += int((~exact).sum())
            maps += same.size
    # Every map of every image (5 per image), raw graph output, no host fallback involved.
    assert (equal, flagged, top1_equal) == (maps, 0, 699)
