"""The command line: help everywhere, the torch-free runtime path, one-line errors, export/run/info."""

import json
import os
import pkgutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import camdeploy
from camdeploy.cli import build_parser, main
from camdeploy.errors import CamdeployError

SUBCOMMANDS = ["export", "run", "serve", "info", "demo", "eval", "bench", "calibrate", "convert", "check", "units"]
# Every module but the PyTorch side (export/, models/), which needs torch by design, and
# __main__, which runs the CLI when imported.
RUNTIME_MODULES = ["camdeploy", *sorted(
    info.name for info in pkgutil.walk_packages(camdeploy.__path__, "camdeploy.")
    if not info.name.startswith(("camdeploy.export", "camdeploy.models", "camdeploy.__main__"))
)]


def test_runtime_module_list_is_complete():
    assert {"camdeploy.runtime.onnxruntime_runner", "camdeploy.eval.evaluate", "camdeploy.bench.bench",
            "camdeploy.cli", "camdeploy.distributed.ray_batch", "camdeploy.distributed.ray_serve"
            } <= set(RUNTIME_MODULES)


def test_runtime_path_imports_neither_torch_nor_tensorrt_nor_ray():
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
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tensorrt", "tensorrt_rtx", "ray"))
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
    assert [o["name"] for o in info["outputs"]] == ["logits", "features", "classes", "scores", "cams", "boxes",
                                                    "boxes_exact"]
    assert info["outputs"][4]["shape"][1:] == [2, 32, 32]
    assert info["metadata"]["camdeploy.source_model"] == "mymodels:build"
    assert main(["info", "m/user.onnx"]) == 0
    assert "10 names: thing 0, thing 1, thing 2, ..." in capsys.readouterr().out

    outputs = {}
    for backend in ("ort", "torch"):
        code = main(["run", "m/user.onnx", "photos", "--out", f"out-{backend}", "--backend", backend,
                     "--batch-size", "2", "--no-progress"])
        assert code == 3  # finished, with an input left out
        captured = capsys.readouterr()
        assert "zz_corrupt.jpg: not a readable image" in captured.err
        assert "3 images in" in captured.out and "1 inputs left out (reasons in out-" in captured.out
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
    assert "--model, --feature-module and --linear-module describe the PyTorch model for --backend torch" in (
        capsys.readouterr().err)


def test_run_refuses_a_gpu_provider_for_the_torch_reference(user_model_dir, capsys):
    assert main(["export", "--model", "mymodels:build", "--output", "u.onnx", "--input-size", "32"]) == 0
    assert main(["run", "u.onnx", "photos", "--out", "o", "--backend", "torch", "--model", "mymodels:build",
                 "--provider", "cuda"]) == 1
    assert "--provider cuda selects an ONNX Runtime provider; --backend torch runs on the CPU" in (
        capsys.readouterr().err)


def test_run_skips_its_own_output_folder_and_bad_batch_sizes(user_model_dir, capsys):
    assert main(["export", "--model", "mymodels:build", "--output", "u.onnx", "--input-size", "32"]) == 0
    capsys.readouterr()
    for _ in range(2):  # the second run must not read the first run's overlays
        assert main(["run", "u.onnx", "photos", "--out", "photos/out", "--overlays", "--no-progress",
                     "--overwrite", "--allow-partial"]) == 0
        assert "3 images in" in capsys.readouterr().out
    assert main(["run", "u.onnx", "photos", "--out", "o", "--batch-size", "0"]) == 1
    assert "--batch-size 0: expected 1 to 512" in capsys.readouterr().err


def test_unwritable_output_is_a_one_line_error(user_model_dir, capsys):
    Path("blocker").write_text("a file, not a folder")
    assert main(["export", "--model", "mymodels:build", "--output", "u.onnx", "--input-size", "32"]) == 0
    assert main(["run", "u.onnx", "photos", "--out", "blocker", "--no-progress"]) == 1
    assert "--out blocker: cannot write there" in capsys.readouterr().err
    assert main(["export", "--model", "mymodels:build", "--output", "blocker/m.onnx", "--input-size", "32"]) == 1
    assert "--output blocker/m.onnx: cannot write there" in capsys.readouterr().err


def test_normalisation_pairs_cannot_be_mixed(user_model_dir, capsys):
    assert main(["export", "--model", "mymodels:build", "--output", "x.onnx", "--mean", "0.5,0.5,0.5",
                 "--std", "0.2,0.2,0.2", "--offset", "0,0,0"]) == 1
    assert "give one pair" in capsys.readouterr().err


def test_model_instances_and_failing_factories(user_model_dir, capsys):
    Path("more.py").write_text(
        "from tiny_models import build_torchvision_style\n"
        "instance = build_torchvision_style()\n"
        "def broken():\n    raise RuntimeError('no weights here')\n")
    assert main(["export", "--model", "more:instance", "--output", "i.onnx", "--input-size", "32"]) == 0
    assert main(["export", "--model", "more:broken", "--output", "b.onnx"]) == 1
    assert "--model more:broken: broken() raised RuntimeError: no weights here" in capsys.readouterr().err
    Path("syntax.py").write_text("def f(:\n")
    assert main(["export", "--model", "syntax:f", "--output", "s.onnx"]) == 1
    assert "cannot import module 'syntax' (SyntaxError" in capsys.readouterr().err


def test_info_on_a_plain_onnx_file(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "no camdeploy metadata" in out and "x " in out and "y " in out


def test_exit_status_resume_and_renamed_flags(user_model_dir, capsys):
    assert main(["export", "--model", "mymodels:build", "--output", "u.onnx", "--input-size", "32",
                 "--boxes", "host"]) == 0  # the former name of --graph-boxes off
    captured = capsys.readouterr()
    assert "--boxes is now --graph-boxes off" in captured.err and "boxes: not in the graph" in captured.out
    assert main(["run", "u.onnx", "photos", "--out", "o", "--no-progress"]) == 3
    capsys.readouterr()
    assert main(["run", "u.onnx", "photos", "--out", "o", "--no-progress"]) == 1
    assert "--out o: already holds results.jsonl (3 results); add --resume" in capsys.readouterr().err
    assert main(["run", "u.onnx", "photos", "--out", "o", "--no-progress", "--resume", "--box-path", "host"]) == 3
    captured = capsys.readouterr()
    assert "3 images were already done (--resume)" in captured.out and "--box-path is now --box-source" in captured.err
    assert len(Path("o/results.jsonl").read_text().splitlines()) == 3
    assert main(["run", "u.onnx", "photos", "--out", "o", "--no-progress", "--resume", "--allow-partial"]) == 0


def test_a_broken_model_is_one_line_and_leaves_no_output(user_model_dir, tmp_path, capsys):
    import onnx

    assert main(["export", "--model", "mymodels:build", "--output", "u.onnx", "--input-size", "32"]) == 0
    capsys.readouterr()
    model = onnx.load("u.onnx")  # camdeploy metadata on a graph whose outputs are other ones
    model.graph.output[2].name = "labels_renamed"
    model.graph.node.append(onnx.helper.make_node("Identity", ["classes"], ["labels_renamed"]))
    onnx.save(model, "mismatched.onnx")
    Path("empty.onnx").write_bytes(b"")
    for bad, message in (("mismatched.onnx", "lacks the output(s) classes"), ("empty.onnx", "not an ONNX model")):
        assert main(["run", bad, "photos", "--out", "out-bad", "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not Path("out-bad").exists()
    assert main(["info", "empty.onnx"]) == 1
    assert "empty.onnx: not an ONNX model (the file is empty" in capsys.readouterr().err


def test_a_folder_of_good_and_bad_files(user_model_dir, capsys):
    """20 good images and 12 entries that cannot be results: exit 3, one failure record for each
    bad one with its reason, one result for each good one."""
    import os

    assert main(["export", "--model", "mymodels:build", "--output", "u.onnx", "--input-size", "32"]) == 0
    folder = Path("mixed")
    folder.mkdir()
    rng = np.random.default_rng(5)
    good = []
    for i in range(20):
        suffix = (".png", ".jpg", ".bmp", ".tiff")[i % 4]
        good.append(folder / f"good{i:02d}{suffix}")
        cv2.imwrite(str(good[-1]), rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "good_gray.png"), rng.integers(0, 255, (16, 16), dtype=np.uint8))
    good.append(folder / "good_gray.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.png").write_bytes(cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1].tobytes()[:60])
    (folder / "text.jpg").write_text("not an image at all")
    (folder / "pdf.png").write_bytes(b"%PDF-1.4 a document named like an image")
    (folder / "garbage.bmp").write_bytes(rng.integers(0, 255, 300, dtype=np.uint8).tobytes())
    (folder / "broken.png").symlink_to(folder.resolve() / "nowhere.png")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "loop").symlink_to(folder.resolve())
    (folder / "huge.png").write_bytes(cv2.imencode(".png", np.zeros((200, 300, 3), np.uint8))[1].tobytes())
    (folder / "tiff.tif").write_bytes(b"II*\x00 not a tiff body")
    (folder / "webp.webp").write_bytes(b"RIFF\x10\x00\x00\x00WEBPVP8 broken")
    (folder / "jpeg.jpeg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (folder / "notes.txt").write_text("not listed: not named like an image")
    (folder / "album.jpg").mkdir()  # a folder named like an image: walked, with a warning
    capsys.readouterr()
    code = main(["run", "u.onnx", "mixed", "--out", "out", "--no-progress", "--max-pixels", "50000"])
    captured = capsys.readouterr()
    assert code == 3
    results = [json.loads(line) for line in Path("out/results.jsonl").read_text().splitlines()]
    failures = [json.loads(line) for line in Path("out/failures.jsonl").read_text().splitlines()]
    assert sorted(r["file"] for r in results) == sorted(str(p) for p in good)
    reasons = {Path(f["file"]).name: (f["stage"], f["reason"]) for f in failures}
    assert set(reasons) == {"empty.jpg", "truncated.png", "text.jpg", "pdf.png", "garbage.bmp", "broken.png",
                            "pipe.jpg", "loop", "huge.png", "tiff.tif", "webp.webp", "jpeg.jpeg"}
    assert reasons["loop"][0] == "list" and "symbolic link loop" in reasons["loop"][1]
    assert reasons["broken.png"][0] == "list" and reasons["pipe.jpg"][0] == "list"
    assert "300x200 pixels is more than the limit of 50000 (--max-pixels)" in reasons["huge.png"][1]
    assert all(stage == "read" for name, (stage, _) in reasons.items() if name not in ("loop", "broken.png",
                                                                                          "pipe.jpg"))
    assert "21 images in" in captured.out and "12 inputs left out" in captured.out
    assert "album.jpg is a folder, not an image file" in captured.err
    assert len([line for line in captured.err.splitlines() if line.startswith("camdeploy: warning: skipped")]) == 12
    manifest = json.loads(Path("out/run.json").read_text())
    # 30 image files listed (21 good, 9 unreadable) and 3 entries left out by the listing itself
    assert manifest["counts"] == {"listed": 30, "processed": 21, "previously": 0, "skipped": 12, "remaining": 0,
                                  "unlisted": 0}
    # the folder named like an image is walked, not left out: its warning stays in run.json, not in failures
    assert [w for w in manifest["warnings"] if "album.jpg" in w] == ["mixed/album.jpg is a folder, not an image "
                                                                     "file; its contents are listed"]
    assert "album.jpg" not in reasons
    assert main(["run", "u.onnx", "mixed", "--out", "out2", "--no-progress", "--max-pixels", "50000",
                 "--allow-partial"]) == 0


def test_a_closed_output_pipe_ends_quietly_with_141():
    """`camdeploy ... | head`: the reader goes away before the output ends; no traceback."""
    program = textwrap.dedent("""
        import sys
        from camdeploy.cli import info, main
        def endless(args):
            for _ in range(200000):
                print("line of a long report " * 4)
            return 0
        info.cmd_info = endless
        sys.exit(main(["info", "model.onnx"]))
    """)
    process = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()
    process.stdout.close()  # as `head -1` does
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_ctrl_c_in_the_first_second_is_one_line_not_a_traceback(tmp_path):
    """Ctrl-C while the command is still importing its modules (ONNX Runtime, OpenCV) or parsing its
    arguments: 'interrupted' and 130, as later. (A signal before Python has started camdeploy's code
    at all, in the first few tens of milliseconds, is Python's to report.)"""
    import signal

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((8, 8, 3), np.uint8))
    for delay in (0.25, 0.45, 0.65):
        process = subprocess.Popen([sys.executable, "-m", "camdeploy", "run", str(tmp_path / "none.onnx"),
                                    str(images), "--out", str(tmp_path / "out")], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        if process.returncode == 1 and "MODEL" in err:  # it got as far as the model before the signal
            continue
        assert "Traceback" not in err, err
        assert process.returncode == 130 and len(err.strip().splitlines()) == 1, err
        assert err.strip() in ("camdeploy: interrupted", "camdeploy run: interrupted"), err


def _run_measured(args: list[str], timeout: float = 60) -> tuple[int, str, int]:
    """Exit status, stderr and the peak resident memory (KiB) of ``python ARGS`` in its own process
    (a forked child starts with this process's memory: compare with ``python -c pass``)."""
    import tempfile

    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"camdeploy {' '.join(args)} did not end within {timeout} s")
            time.sleep(0.02)
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return process.returncode, err.read().decode(), usage.ru_maxrss


@pytest.mark.parametrize("kind", ["device", "fifo", "huge", "folder"])
def test_a_model_path_that_is_no_regular_file_or_too_large_is_refused_before_reading(tmp_path, kind):
    """/dev/zero used to be read until memory ran out, a fifo blocked for ever: each is refused in one
    line, exit 1, in the memory of a command that read nothing."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((8, 8, 3), np.uint8))
    if kind == "device":
        model, why = Path("/dev/zero"), "a character device"
    elif kind == "fifo":
        model, why = tmp_path / "model.onnx", "a fifo"
        os.mkfifo(model)
    elif kind == "folder":
        model, why = tmp_path / "model.onnx", "a folder"
        model.mkdir()
    else:
        model, why = tmp_path / "model.onnx", "3072 MiB is more than the limit of 2048 MiB"
        with open(model, "wb") as handle:
            handle.truncate(3 * 2**30)  # sparse: takes no room
    _, _, baseline_kib = _run_measured(["-c", "pass"])
    for args in (["run", str(model), str(images), "--out", str(tmp_path / "out")], ["info", str(model)]):
        code, err, peak_kib = _run_measured(["-m", "camdeploy", *args])
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert f"error: MODEL {model}: {why}" in err, err
        assert peak_kib < baseline_kib + 400 * 1024, (peak_kib, baseline_kib)  # its libraries, never the file
    assert not (tmp_path / "out").exists()


def test_the_model_size_limit_can_be_raised(tmp_path, monkeypatch):
    from camdeploy.graph import check_model_file

    model = tmp_path / "model.onnx"
    with open(model, "wb") as handle:
        handle.truncate(3 * 2**20)
    monkeypatch.setenv("CAMDEPLOY_MAX_MODEL_MB", "2")
    with pytest.raises(CamdeployError, match=r"3 MiB is more than the limit of 2 MiB .* set \$CAMDEPLOY_MAX_MODEL_MB"):
        check_model_file(model)
    monkeypatch.setenv("CAMDEPLOY_MAX_MODEL_MB", "4")
    assert check_model_file(model) == 3 * 2**20


def test_a_link_to_a_device_in_a_folder_gets_the_reason_of_the_device_itself(tmp_path):
    from camdeploy.runtime.inputs import list_inputs

    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    listing = list_inputs([str(tmp_path)])
    assert dict(listing.problems) == {str(tmp_path / "gone.jpg"): "a symbolic link to nothing (its target is missing)",
                                      str(tmp_path / "zero.jpg"): "not a regular file (a character device)"}
    named = list_inputs([str(tmp_path / "zero.jpg")])
    assert named.problems == [(str(tmp_path / "zero.jpg"), "not a regular file (a character device)")]
