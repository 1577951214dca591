"""The command line: help everywhere, the torch-free runtime path, one-line errors, export/run/info."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from camdeploy.cli import build_parser, main

SUBCOMMANDS = ["export", "run", "info", "demo", "eval", "bench"]
RUNTIME_MODULES = [
    "camdeploy", "camdeploy.cli", "camdeploy.errors", "camdeploy.metadata", "camdeploy.labels",
    "camdeploy.cache", "camdeploy.demo", "camdeploy.runtime.images", "camdeploy.runtime.boxes",
    "camdeploy.runtime.result", "camdeploy.runtime.runner", "camdeploy.runtime.onnxruntime_runner",
    "camdeploy.runtime.torch_runner", "camdeploy.runtime.pipeline", "camdeploy.runtime.overlay",
    "camdeploy.runtime.cams", "camdeploy.eval.datasets", "camdeploy.eval.metrics", "camdeploy.eval.box_modes",
    "camdeploy.eval.evaluate", "camdeploy.eval.report", "camdeploy.bench.timing", "camdeploy.bench.bench",
]


def test_runtime_path_imports_neither_torch_nor_tensorrt():
    script = textwrap.dedent(f"""
        import contextlib, importlib, io, sys
        for name in {RUNTIME_MODULES!r}:
            importlib.import_module(name)
        from camdeploy.cli import main
        for command in {[[]] + [[c] for c in SUBCOMMANDS]!r}:
            with contextlib.redirect_stdout(io.StringIO()) as out:
                try:
                    main(command + ["--help"])
                except SystemExit as exit:
                    assert exit.code == 0, (command, exit.code)
            assert "usage: camdeploy" in out.getvalue(), command
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tensorrt", "tensorrt_rtx"))
        print("HEAVY", heavy)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_useful_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args([command, "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: camdeploy {command}" in text and len(text.splitlines()) > 5


def test_user_errors_are_one_line_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "camdeploy", "run", str(tmp_path / "nope.onnx"),
                           str(tmp_path), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "camdeploy run: error: INPUT" in done.stderr or "camdeploy run: error: MODEL" in done.stderr
    assert "Traceback" not in done.stderr


MODULE = """
from tiny_models import build_torchvision_style as build
"""


@pytest.fixture()
def user_model_dir(tmp_path, monkeypatch):
    """A working directory holding a user module with a torchvision-style classifier."""
    (tmp_path / "mymodels.py").write_text(MODULE)
    (tmp_path / "labels.txt").write_text("".join(f"thing {i}\n" for i in range(10)))
    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        cv2.imwrite(str(images / f"p{i}.jpg"), rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8))
    (images / "notes.txt").write_text("not an image, not listed")
    (images / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_export_run_info_with_a_user_model(user_model_dir, capsys):
    assert main(["export", "--model", "mymodels:build", "--output", "m/user.onnx", "--input-size", "32",
                 "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--labels", "labels.txt",
                 "--topk", "2"]) == 0
    out = capsys.readouterr().out
    assert "torchvision style: features + classifier" in out and "verified on ONNX Runtime" in out

    assert main(["info", "m/user.onnx", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [o["name"] for o in info["outputs"]] == ["logits", "features", "classes", "scores", "cams"]
    assert info["outputs"][4]["shape"][1:] == [2, 32, 32]
    assert info["metadata"]["camdeploy.source_model"] == "mymodels:build"
    assert main(["info", "m/user.onnx"]) == 0
    assert "10 names: thing 0, thing 1, thing 2, ..." in capsys.readouterr().out

    outputs = {}
    for backend in ("ort", "torch"):
        code = main(["run", "m/user.onnx", "photos", "--out", f"out-{backend}", "--backend", backend,
                     "--batch-size", "2", "--no-progress"])
        assert code == 0
        captured = capsys.readouterr()
        assert "zz_corrupt.jpg: not a readable image" in captured.err
        assert "3 images in" in captured.out and "1 files skipped" in captured.out
        outputs[backend] = [json.loads(line) for line in
                            Path(f"out-{backend}/results.jsonl").read_text().splitlines()]
    # Same results from the graph and from the reference, up to score rounding.
    for a, b in zip(outputs["ort"], outputs["torch"], strict=True):
        assert (a["file"], a["classes"], a["labels"]) == (b["file"], b["classes"], b["labels"])
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=0.011)
        assert a["labels"][0].startswith("thing ")


def test_export_argument_errors(user_model_dir, capsys):
    assert main(["export", "--model", "mymodels:nothing", "--output", "x.onnx"]) == 1
    assert "module 'mymodels' has no attribute 'nothing'" in capsys.readouterr().err
    assert main(["export", "--model", "resnet9000", "--output", "x.onnx"]) == 1
    assert "expected a built-in name (efficientnet_lite0" in capsys.readouterr().err
    assert main(["export", "--model", "mymodels:build", "--output", "x.onnx", "--mean", "0.5,0.5,0.5"]) == 1
    assert "--mean and --std go together" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--model", "mymodels:build", "--output", "x.onnx", "--std", "1,2"])
    assert "expected three numbers R,G,B, got 2" in capsys.readouterr().err
    assert not Path("x.onnx").exists()


def test_run_refuses_torch_model_with_ort_backend(user_model_dir, capsys):
    assert main(["export", "--model", "mymodels:build", "--output", "u.onnx", "--input-size", "32"]) == 0
    assert main(["run", "u.onnx", "photos", "--out", "o", "--model", "mymodels:build"]) == 1
    assert "--model names the PyTorch model for --backend torch" in capsys.readouterr().err
