"""``camdeploy units`` end to end on an exported model (ONNX Runtime, with torch, onnxscript,
TensorRT and the exporter blocked) and hand-made Broden-layout data; --compare with an FP16
variant; refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from broden_handmade import QUANTILE, write_broden
from conftest import REPO
from torch import nn

from camdeploy.cli import main
from camdeploy.export.exporter import ExportOptions, export_onnx
from camdeploy.metadata import Normalization

BLOCKED = ("torch", "onnxscript", "tensorrt", "tensorrt_rtx", "camdeploy.export")


class RedBlue(nn.Module):
    """Two units on 4x4 cells: ReLU(R - G - B) (red), ReLU(R - 2G + B) (red or blue)."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            conv.weight[:] = torch.tensor([[1.0, -1.0, -1.0], [1.0, -2.0, 1.0]])[:, :, None, None]
        self.trunk = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(4))
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight[:] = torch.tensor([[0.5, 2.0], [1.5, -1.0]])
            self.fc.bias.zero_()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("units-cli")
    model = root / "redblue.onnx"
    export_onnx(RedBlue().eval(), model, ExportOptions(
        input_size=(32, 32), normalization=Normalization((1 / 255,) * 3, (0.0,) * 3), class_names=("a", "b"),
        topk=1, source_model="redblue", graph_boxes="off"))
    from camdeploy.calibration.quantize import convert_fp16

    fp16 = convert_fp16(model, root / "redblue.fp16.onnx")
    return model, fp16, write_broden(root / "broden")


def test_units_on_onnx_runtime_without_torch(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, fp16, broden = files
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import importlib.abc, json, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in {BLOCKED!r}):
                    raise ImportError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        from camdeploy.cli import main
        code = main(["units", {str(model)!r}, "--broden", {str(broden)!r}, "--out", {str(out)!r}, "--quantile",
                     "{QUANTILE}", "--top-k", "4", "--tile-size", "32", "--classes", "1", "--class-units", "2",
                     "--compare", {str(fp16)!r}, "--no-progress", "--batch-size", "3"])
        loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in {BLOCKED!r}))
        print(json.dumps({{"code": code, "loaded": loaded}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0, "loaded": []}
    assert "2 of 2 units are detectors of 2 unique concepts (IoU >= 0.04)" in done.stdout
    document = json.loads((out / "units.json").read_text())
    assert [(u["label"], u["category"]) for u in document["units"]] == [("square", "object"), ("box", "object")]
    assert [u["iou"] for u in document["units"]] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert [u["threshold"] for u in document["units"]] == [0.0, 0.0]
    assert document["classes"] == [{"class": 1, "name": "b", "units": [
        {"unit": 0, "weight": 1.5, "label": "square", "category": "object", "iou": pytest.approx(1.0),
         "detector": True},
        {"unit": 1, "weight": -1.0, "label": "box", "category": "object", "iou": pytest.approx(1.0),
         "detector": True}]}]
    compare = document["compare"][0]
    assert compare["variant"] == "redblue.fp16.onnx" and compare["detectors_kept"] == 2 and compare["labels_kept"] == 2
    assert (out / "compare.csv").read_text().count("\n") == 3
    assert sorted(p.name for p in (out / "montages").iterdir()) == ["unit_0000.jpg", "unit_0001.jpg"]
    assert not list(out.glob(".units-spill-*"))  # the spill files are gone
    assert (out / "tally.csv").is_file() and (out / "bargraph.svg").is_file() and (out / "index.html").is_file()


def test_images_without_concepts_and_refusals(files: tuple[Path, Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    model, _, broden = files
    out = tmp_path / "plain"
    images = [str(broden / "images" / "im0.png"), str(broden / "images" / "im7.png")]
    assert main(["units", str(model), "--images", *images, "--out", str(out), "--no-progress", "--no-montages"]) == 0
    document = json.loads((out / "units.json").read_text())
    assert document["summary"] is None and document["images"]["read"] == 2
    assert "label" not in document["units"][0] and len(document["units"][0]["top_images"]) == 2
    assert not (out / "tally.csv").exists()
    for argv, message in [
        (["--images", str(broden)], "already holds a units report"),
        (["--broden", str(broden), "--images", str(broden)], "--images with --broden"),
        (["--boxes", str(broden), "--categories", "object"], "--categories object: an option of --broden"),
        (["--broden", str(broden), "--quantile", "1.5"], "--quantile 1.5: expected a fraction"),
        (["--broden", str(broden), "--classes", "7"], "--classes 7: 7 is not a class of MODEL"),
        ([], "no images"),
    ]:
        target = out if "already" in message else tmp_path / "other"
        assert main(["units", str(model), *argv, "--out", str(target), "--no-progress"]) == 1
        assert message in capsys.readouterr().err


def test_run_why_names_the_units_behind_the_top_class(files: tuple[Path, Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from camdeploy.backends import make_runner
    from camdeploy.runtime.images import load_image, prepare
    from camdeploy.units.classes import contributions

    model, _, broden = files
    units = tmp_path / "units"
    assert main(["units", str(model), "--broden", str(broden), "--out", str(units), "--quantile", str(QUANTILE),
                 "--no-progress", "--no-montages"]) == 0
    images = [broden / "images" / f"im{i}.png" for i in (0, 3, 7)]
    out = tmp_path / "run"
    assert main(["run", str(model), *map(str, images), "--out", str(out), "--why", "2", "--why-concepts", str(units),
                 "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    with make_runner("ort", model) as runner:
        batch = np.stack([prepare(load_image(p), runner.spec)[0] for p in images])
        result = runner.infer(batch, features=True, outputs="classes")
        parts = contributions(result.features, runner.class_weight(), result.classes[:, 0])
    for record, part in zip(records, parts, strict=True):
        order = np.lexsort((np.arange(2), -part))
        assert [w["unit"] for w in record["why"]] == order[:2].tolist()
        expected = [round(part[u] / part.sum(), 4) if part.sum() else None for u in order[:2]]  # im7: no red, no blue
        assert [w["share"] for w in record["why"]] == expected
        names = {0: "square (object)", 1: "box (object)"}
        assert [w["concept"] for w in record["why"]] == [names[int(u)] for u in order[:2]]
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["why"] == 2
    assert main(["run", str(model), *map(str, images), "--out", str(out), "--resume", "--no-progress"]) == 1
    assert "made with why 2, this run has None" in capsys.readouterr().err
    assert main(["run", str(model), str(images[0]), "--out", str(tmp_path / "x"), "--why-concepts", str(units)]) == 1
    assert "add --why" in capsys.readouterr().err
    assert main(["run", str(model), str(images[0]), "--out", str(tmp_path / "y"), "--why", "--why-concepts",
                 str(tmp_path)]) == 1
    assert "not the units.json of `camdeploy units`" in capsys.readouterr().err
