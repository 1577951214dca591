"""On every dev image, against the host rule on the graph's CAMs: `--graph-boxes on` (the graph's own
boxes), and the boxes found from the low-resolution maps alone (`outputs="boxes"`, run's path)."""

import numpy as np
import pytest
from conftest import DEV

from camdeploy.metadata import read_spec
from camdeploy.runtime.boxes import NATIVE, cam_boxes
from camdeploy.runtime.images import load_image, prepare
from camdeploy.runtime.inputs import list_images
from camdeploy.runtime.map_boxes import map_boxes
from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

pytestmark = [pytest.mark.integration, pytest.mark.data]


def test_graph_boxes_and_low_resolution_boxes_equal_host_boxes_on_all_dev_images(lite0_onnx):
    spec = read_spec(str(lite0_onnx))
    paths = list_images([str(DEV / "images")])
    assert len(paths) == 699
    equal = flagged = maps = 0
    top1_equal = 0
    low_equal = 0
    implementations = (False, True) if NATIVE else (False,)  # OpenCV, and C where built (CI builds it)
    undecided = dict.fromkeys(implementations, 0)
    size = (spec.input_height, spec.input_width)
    with OnnxRuntimeRunner(lite0_onnx, box_source="graph") as runner, \
            OnnxRuntimeRunner(lite0_onnx, box_source="host") as low:
        for start in range(0, len(paths), 32):
            x = np.stack([prepare(load_image(p), spec)[0] for p in paths[start:start + 32]])
            raw = runner.run_outputs(["cams", "boxes", "boxes_exact"], x)
            cams, boxes, exact = raw["cams"], raw["boxes"], raw["boxes_exact"]
            host = cam_boxes(cams, spec.box_threshold, native=False)
            if NATIVE:
                np.testing.assert_array_equal(cam_boxes(cams, spec.box_threshold, native=True), host)
            low_equal += int((low.infer(x, outputs="boxes").boxes == host).all(axis=-1).sum())
            raw_maps = low._run(x, False, "boxes")["maps"]  # what infer(outputs="boxes") boxed
            for native in implementations:
                boxes_low, decided = map_boxes(raw_maps, size, spec.box_threshold, native=native)
                np.testing.assert_array_equal(boxes_low[decided], host[decided])
                undecided[native] += int((~decided).sum())
            same = (boxes == host).all(axis=-1)
            equal += int(same.sum())
            top1_equal += int(same[:, 0].sum())
            flagged += int((~exact).sum())
            maps += same.size
    # Every map of every image (5 per image), raw graph output, no host fallback involved.
    assert (equal, flagged, top1_equal) == (maps, 0, 699)
    # Every box from the low-resolution maps; the graph's head was needed for a few maps only.
    assert low_equal == maps and all(count < maps // 50 for count in undecided.values())
