"""The deployed runtime stands alone: an exported file runs end to end with torch, onnxscript,
TensorRT and the exporter (camdeploy.export) made impossible to import."""

import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
from conftest import REPO
from tiny_models import TorchvisionStyle, seeded

from camdeploy.export.exporter import ExportOptions, export_onnx

BLOCKED = ("torch", "onnxscript", "tensorrt", "tensorrt_rtx", "camdeploy.export")


def test_runtime_runs_with_torch_and_the_exporter_blocked(tmp_path):
    model = tmp_path / "tiny.onnx"
    export_onnx(seeded(TorchvisionStyle()), model, ExportOptions(input_size=(32, 32), topk=3, source_model="tiny"))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), np.full((20 + i, 30, 3), 60 * i, np.uint8))
    script = textwrap.dedent(f"""
        import importlib.abc, json, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in {BLOCKED!r}):
                    raise ImportError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        from camdeploy.runtime import OnnxRuntimeRunner, RunOptions, run_files
        from camdeploy.runtime.inputs import list_images
        from camdeploy.cli import main

        with OnnxRuntimeRunner({str(model)!r}) as runner:
            summary = run_files(runner, list_images([{str(images)!r}]), {str(tmp_path / "api")!r},
                                RunOptions(progress=False, overlays=True))
        code = main(["run", {str(model)!r}, {str(images)!r}, "--out", {str(tmp_path / "cli")!r}, "--no-progress",
                     "--box-source", "graph"])
        loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in {BLOCKED!r}))
        print(json.dumps({{"processed": summary.processed, "code": code, "loaded": loaded}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"processed": 3, "code": 0, "loaded": []}
    api = (tmp_path / "api" / "results.jsonl").read_text().splitlines()
    cli = (tmp_path / "cli" / "results.jsonl").read_text().splitlines()
    assert len(api) == len(cli) == 3
    assert [json.loads(a)["boxes"] for a in api] == [json.loads(c)["boxes"] for c in cli]  # host == graph boxes
