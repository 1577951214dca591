"""Boxes from the low-resolution maps against the host rule on the graph's own CAMs.

The reference is always ONNX Runtime running the exported CAM head (``graph.cam_head``) on the same
maps, then :func:`cam_boxes`: the boxes ``outputs="all"`` gives. The tiny model's head upsamples
any ``[h, w]`` to 32x32, so one head covers exact (power-of-two) and inexact upsampling factors.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_models import TorchvisionStyle, seeded

from camdeploy import graph
from camdeploy.export.exporter import ExportOptions, export_onnx
from camdeploy.runtime.boxes import cam_boxes
from camdeploy.runtime.map_boxes import (
    bracket,
    coordinate_error,
    decision_margin,
    exact_map_boxes,
    map_boxes,
)
from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

SIZE = (32, 32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    report = export_onnx(seeded(TorchvisionStyle()), path, ExportOptions(input_size=SIZE, topk=3, source_model="tiny"))
    return path, report.spec


@pytest.fixture(scope="module")
def head(tiny):
    path, _ = tiny
    proto = graph.load(path)
    name = graph.cam_head_maps(proto)
    assert name is not None
    session = ort.InferenceSession(graph.cam_head(proto, name).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return lambda maps: session.run(["cams"], {name: maps.astype(np.float32)})[0]


def check(maps, head, threshold=0.2, native=False):
    """Every box equals the host rule on the head's CAMs; returns how many maps were undecided."""
    maps = np.asarray(maps, dtype=np.float32)
    reference = cam_boxes(head(maps), threshold, native=False)
    np.testing.assert_array_equal(exact_map_boxes(maps, SIZE, threshold, head, native=native), reference)
    boxes, decided = map_boxes(maps, SIZE, threshold, native=native)
    np.testing.assert_array_equal(boxes[decided], reference[decided])
    return int((~decided).sum())


def test_coordinate_error_is_zero_only_for_power_of_two_factors():
    assert coordinate_error(7, 224) == coordinate_error(8, 32) == coordinate_error(5, 5) == 0.0
    assert coordinate_error(7, 32) > 0 and coordinate_error(3, 9) > 0 and coordinate_error(10, 299) > 0
    exact, inexact = decision_margin(1.0, (7, 7), (224, 224), 0.2), decision_margin(1.0, (7, 7), (32, 32), 0.2)
    assert 0 < exact < inexact
    assert decision_margin(2.0, (7, 7), (224, 224), 0.2) == pytest.approx(2 * exact)


@pytest.mark.parametrize("source", [8, 7, 5, 16, 3])
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.05])
def test_random_maps_at_exact_and_inexact_factors(head, native, source, threshold):
    rng = np.random.default_rng(source)
    maps = rng.normal(size=(40, 1, source, source)) * rng.uniform(0.01, 100, size=(40, 1, 1, 1))
    undecided = check(maps, head, threshold, native)
    assert undecided < 10  # the host decides nearly every map by itself


def test_the_graphs_mask_lies_between_the_host_masks(head):
    """The margin's claim itself, pixel by pixel, on smooth and on rough maps."""
    rng = np.random.default_rng(1)
    rough = [rng.normal(size=(size, size)) for size in (8, 7, 5) for _ in range(20)]
    smooth = [m.cumsum(axis=0).cumsum(axis=1) for m in rough]
    for raw in (np.float32(m) for m in rough + smooth):
        cam = head(raw[None, None])[0, 0]
        graph_mask = cam >= np.float32(0.2) * cam.max()
        masks = bracket(raw, SIZE, 0.2)
        assert masks is not None
        certain, possible = (m.astype(bool) for m in masks)
        assert not (certain & ~graph_mask).any() and not (graph_mask & ~possible).any()


def test_constant_flat_and_non_finite_maps_go_to_the_graph(head, native):
    maps = np.zeros((6, 1, 8, 8), dtype=np.float32)
    maps[1] = 5.0
    maps[2] = -3.0
    maps[3] = 1000.0 + 1e-4 * np.random.default_rng(0).normal(size=(8, 8))  # span far below rounding
    maps[4, 0, 2, 2] = np.nan
    maps[5, 0, 3, 3] = np.inf
    assert check(maps, head, 0.2, native) == 6
    np.testing.assert_array_equal(exact_map_boxes(maps, SIZE, 0.2, head, native=native)[:3, 0], [[0, 0, 32, 32]] * 3)


def test_values_exactly_at_the_level_are_left_to_the_graph(head, native):
    """Maps whose upsampled values land on the threshold to the last bit, where only the graph's own
    rounding can say which pixels pass: the host must not guess."""
    maps = np.zeros((4, 1, 8, 8), dtype=np.float32)
    maps[0, 0, 2:5, 2:5] = 1.6  # 1.6 / 8 = 0.2: the level, up to float32 rounding
    maps[1, 0, 1, 1] = maps[1, 0, 5, 6] = 0.8
    maps[2, 0, 4, :] = np.float32(1 / 0.2)
    maps[3, 0, 0, 0], maps[3, 0, 7, 7] = 1.0, 0.2
    for threshold in (0.2, 0.125, 0.375):
        check(maps, head, threshold, native)


@pytest.mark.parametrize("source", [8, 7, 5])
def test_thresholds_equal_to_the_graphs_own_values(head, native, source):
    """The hardest case: the threshold is the graph's normalised value of some pixel, so that pixel
    passes by equality, and the host's own rounding would put it on either side."""
    rng = np.random.default_rng(source)
    maps = (rng.normal(size=(6, 1, source, source)) * 37.0).astype(np.float32)
    cams = head(maps)
    undecided = 0
    for i in range(len(maps)):
        values = np.unique(cams[i, 0])
        for threshold in rng.choice(values[(values > 0.05) & (values < 0.95)], size=12, replace=False):
            undecided += check(maps[i:i + 1], head, float(threshold), native)
    assert undecided > 0  # some of these are left to the graph, as they must be


def test_ties_thin_shapes_and_many_components(head, native):
    maps = np.zeros((5, 1, 8, 8), dtype=np.float32)
    maps[0, 0, 1, 1] = maps[0, 0, 6, 6] = 1.0  # two equal blobs: raster order decides
    maps[1, 0, 1, 6] = maps[1, 0, 6, 1] = 1.0
    maps[2, 0, ::2, :] = 1.0  # stripes
    maps[3, 0, ::2, ::2] = 1.0  # checkerboard of peaks
    maps[4] = np.arange(64, dtype=np.float32).reshape(8, 8) % 3  # ridges
    for threshold in (0.2, 0.6, 0.95):
        check(maps, head, threshold, native)


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_threshold_extremes(head, native, threshold):
    maps = np.random.default_rng(2).normal(size=(10, 1, 8, 8)).astype(np.float32)
    check(maps, head, threshold, native)


def test_runner_boxes_without_maps_equal_the_boxes_with_them(tiny):
    path, _ = tiny
    x = np.random.default_rng(4).normal(size=(12, 3, *SIZE)).astype(np.float32)
    for threshold in (None, 0.05, 0.5, 0.9):
        with OnnxRuntimeRunner(path, box_threshold=threshold, box_source="host") as runner:
            full = runner.infer(x)
            low = runner.infer(x, outputs="boxes", features=True)
            assert "maps" in runner._sessions  # the graph cut before the upsampling ran
        np.testing.assert_array_equal(low.boxes, full.boxes)
        np.testing.assert_array_equal(low.classes, full.classes)
        np.testing.assert_array_equal(low.scores, full.scores)
        assert low.cams is None and low.features is not None


def test_box_maps_full_and_unrecognised_heads_use_the_graphs_cams(tiny, tmp_path):
    path, _ = tiny
    x = np.random.default_rng(5).normal(size=(3, 3, *SIZE)).astype(np.float32)
    with OnnxRuntimeRunner(path, box_maps="full") as runner:
        boxes = runner.infer(x, outputs="boxes").boxes
        assert "maps" not in runner._sessions
    proto = graph.load(path)
    for node in proto.graph.node:
        if node.op_type == "Resize":
            for attribute in node.attribute:
                if attribute.name == "mode":
                    attribute.s = b"nearest"
    assert graph.cam_head_maps(proto) is None
    edited = tmp_path / "nearest.onnx"
    onnx.save(proto, edited)
    with OnnxRuntimeRunner(edited) as runner:
        runner.infer(x, outputs="boxes")
        assert "maps" not in runner._sessions
    with pytest.raises(Exception, match="box_maps 'half'"):
        OnnxRuntimeRunner(path, box_maps="half")
    assert boxes.shape == (3, 3, 4)


def test_open_loads_the_graph_of_the_expected_outputs_only(tiny):
    path, _ = tiny
    x = np.random.default_rng(6).normal(size=(2, 3, *SIZE)).astype(np.float32)
    with OnnxRuntimeRunner(path, outputs="boxes") as runner:
        assert set(runner._sessions) == {"maps"}  # what `run` asks for; the whole graph is not loaded
        runner.infer(x, outputs="boxes")
        assert set(runner._sessions) == {"maps"}
        runner.infer(x)  # another output set: its graph is loaded when first asked for
        assert set(runner._sessions) == {"maps", "main"}
    with OnnxRuntimeRunner(path) as runner:
        assert set(runner._sessions) == {"main"}
    with OnnxRuntimeRunner(path, outputs="classes") as runner:
        assert set(runner._sessions) == {"classes"}
    with pytest.raises(Exception, match="outputs 'cams'"):
        OnnxRuntimeRunner(path, outputs="cams")


def test_the_head_alone_computes_the_graphs_own_cams(tiny, head):
    """Maps the host leaves undecided are boxed on the head's CAMs: they must be the whole graph's,
    bit for bit, one map at a time or all together."""
    path, _ = tiny
    x = np.random.default_rng(7).normal(size=(6, 3, *SIZE)).astype(np.float32)
    with OnnxRuntimeRunner(path, box_source="host") as runner:
        cams = runner.infer(x).cams
        maps = runner._run(x, False, "boxes")["maps"]
        own = runner._head_cams(maps.reshape(-1, 1, *maps.shape[2:]))  # the runner's light session
    np.testing.assert_array_equal(head(maps), cams)
    one_by_one = head(maps.reshape(-1, 1, *maps.shape[2:])).reshape(cams.shape)
    np.testing.assert_array_equal(one_by_one, cams)
    np.testing.assert_array_equal(own.reshape(cams.shape), cams)
