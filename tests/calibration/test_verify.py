"""``camdeploy calibrate`` checks the INT8 model on held-back images before it writes it."""

import json

import cv2
import numpy as np
import onnx
import pytest
from tiny_models import TorchvisionStyle, seeded

from camdeploy.calibration import verify
from camdeploy.calibration.verify import Agreement, refuse_disagreement
from camdeploy.cli import main
from camdeploy.errors import CamdeployError
from camdeploy.export.exporter import ExportOptions, export_onnx
from camdeploy.graph import calibration_files


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify")
    path = folder / "tiny.onnx"
    export_onnx(seeded(TorchvisionStyle()), path, ExportOptions(input_size=(32, 32), topk=3, source_model="tiny"))
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):
        cv2.imwrite(str(images / f"img{i:02d}.png"),
                    cv2.GaussianBlur(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), (9, 9), 0))
    return path, images


def test_calibrate_verifies_records_and_refuses_overlap(tiny, tmp_path, capsys):
    path, images = tiny
    out = tmp_path / "q.onnx"
    assert main(["calibrate", str(path), "--images", str(images), "--count", "40", "--verify-count", "12",
                 "--target", "cpu", "--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "verified: top-1 agreement" in printed and "on 12 held-back images" in printed
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    summary = json.loads(props["camdeploy.calibration_verification"])
    assert summary["images"] == 12 and summary["top1_agreement"] >= 0.9 and summary["execution"].startswith("int8")
    assert props["camdeploy.int8_target"] == "cpu"
    assert len(calibration_files(out)) == 52  # 40 for ranges + 12 held back: all refused by eval


def test_a_model_below_the_bound_is_refused_unless_forced(tiny, tmp_path, monkeypatch, capsys):
    path, images = tiny
    poor = Agreement(12, 0.5, 0.7, "int8 kernels (U8S8)", "avx2")
    monkeypatch.setattr(verify, "compare_models", lambda *args, **kwargs: poor)
    out = tmp_path / "q.onnx"
    command = ["calibrate", str(path), "--images", str(images), "--count", "40", "--verify-count", "12",
               "--output", str(out), "--no-progress"]
    assert main(command) == 1
    error = capsys.readouterr().err
    assert "keeps the float model's top-1 class on only 50.0 % of 12 held-back images" in error
    assert "--force writes the model anyway" in error and len(error.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())
    assert main([*command, "--force"]) == 0
    assert out.is_file() and "written anyway (--force)" in capsys.readouterr().err
    assert main([*command, "--min-agreement", "1.5"]) == 1
    assert "--min-agreement 1.5: expected a fraction in [0, 1]" in capsys.readouterr().err


def test_refuse_disagreement_bound():
    refuse_disagreement(Agreement(100, 0.9, 0.9, "simulated int8", "avx2"), 0.9)
    with pytest.raises(CamdeployError, match=r"only 89.0 % of 100 held-back images \(--min-agreement 0.9\)"):
        refuse_disagreement(Agreement(100, 0.89, 0.9, "simulated int8", "avx2"), 0.9)
