"""`bench` end to end on a tiny model with a fake clock: every row, scope and ratio is produced."""

import json

import cv2
import numpy as np
import pytest
from tiny_models import TorchvisionStyle, seeded

from camdeploy.backends import RunnerOptions
from camdeploy.bench.bench import BenchOptions, format_table, plot, run_bench
from camdeploy.errors import CamdeployError
from camdeploy.export.exporter import ExportOptions, export_onnx


class TickClock:
    """Each reading is 1 ms later than the previous one: every timed call lasts 1 ms."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 0.001
        return self.now


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    model = seeded(TorchvisionStyle())
    path = folder / "tiny.onnx"
    export_onnx(model, path, ExportOptions(input_size=(32, 32), topk=3, source_model="tiny"))
    images = []
    for i in range(3):
        images.append(folder / f"img{i}.png")
        cv2.imwrite(str(images[-1]), np.full((40, 50, 3), 40 * i, dtype=np.uint8))
    return model, path, images


def test_rows_for_every_backend_scope_and_batch(tiny, tmp_path):
    model, path, images = tiny
    options = BenchOptions(batch_sizes=(1, 2), warmup=0, repeats=2, e2e_images=4, e2e_repeats=2, torchcam=False,
                           runner=RunnerOptions(torch_model=model))
    report = run_bench([path], images, options, clock=TickClock(), cpu_clock=TickClock(), say=lambda m: None)
    keys = {(r.backend, r.scope, r.stats.batch) for r in report.rows}
    for batch in (1, 2):
        assert {("torch", "model", batch), ("ort", "model", batch), ("ort [classes only]", "model", batch),
                ("ort [no maps]", "model", batch), ("ort [no maps, full-res]", "model", batch),
                ("ort [graph boxes]", "model", batch), ("torch", "end-to-end", batch),
                ("ort", "end-to-end", batch)} <= keys
    assert report.row("ort", "model", 1).box_source == "host"  # type: ignore[union-attr]
    assert report.row("ort [graph boxes]", "model", 1).box_source == "graph"  # type: ignore[union-attr]
    for row in report.rows:
        assert row.speedup == pytest.approx(1.0) and row.speedup_min == pytest.approx(1.0)
        assert row.speedup_cpu == pytest.approx(1.0)
        if row.scope == "model":
            assert row.stats.median_ms == pytest.approx(1.0)  # one tick per call
        else:  # one tick per run of 4 files, reported per batch of `batch` images
            assert row.stats.median_ms == pytest.approx(1.0 * row.stats.batch / 4)
    table = format_table(report)
    assert "[classes only]" in table and "vs torch" in table and report.machine["threads"] >= 1
    assert report.options["load_average_before"] is not None
    json.dumps(report.as_dict())
    if plot(report, tmp_path / "bench.png"):
        assert (tmp_path / "bench.png").stat().st_size > 0


def test_bad_options(tiny):
    _, path, images = tiny
    with pytest.raises(CamdeployError, match="--scopes 'gpu'"):
        run_bench([path], images, BenchOptions(scopes=("gpu",)))
    with pytest.raises(CamdeployError, match="--batch-sizes 0: expected positive numbers"):
        run_bench([path], images, BenchOptions(batch_sizes=(0,)))
    with pytest.raises(CamdeployError, match="--backend 'torch': expected one of ort, tensorrt"):
        run_bench([path], images, BenchOptions(backends=("torch",)))
