"""Files to results.jsonl: streamed, resumable, every skip accounted for (a tiny model, images made here)."""

import base64
import json
import os

import cv2
import numpy as np
import pytest
from tiny_models import TorchvisionStyle, seeded

from camdeploy.errors import CamdeployError
from camdeploy.export.exporter import ExportOptions, export_onnx
from camdeploy.runtime.inputs import list_inputs
from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from camdeploy.runtime.pipeline import RunInterrupted, RunOptions, record_path, run_files

SIZE = (32, 32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    path = folder / "tiny.onnx"
    report = export_onnx(seeded(TorchvisionStyle()), path, ExportOptions(input_size=SIZE, topk=3, source_model="tiny"))
    return path, report.spec


def make_images(folder, count, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        paths.append(folder / f"img{i:02d}.png")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 255, (30 + i, 40 + 2 * i, 3), dtype=np.uint8))
    return paths


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_skips_corrupt_images_and_writes_results_failures_and_manifest(tiny, tmp_path):
    path, spec = tiny
    images = tmp_path / "images"
    files = make_images(images, 3)
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    reports: list[str] = []
    with OnnxRuntimeRunner(path) as runner:
        summary = run_files(runner, sorted(images.iterdir()), tmp_path / "out",
                            RunOptions(batch_size=2, overlays=True, progress=False), reports.append)
    assert (summary.processed, summary.skipped, summary.total, summary.overlays) == (3, 1, 4, 3)
    assert not summary.complete and len(reports) == 1 and "broken.png: not a readable image" in reports[0]
    records = [json.loads(line) for line in lines(summary.results_path)]
    assert [r["file"] for r in records] == [str(f) for f in files]
    for record, f in zip(records, files, strict=True):
        h, w = cv2.imread(str(f)).shape[:2]
        assert set(record) == {"file", "classes", "labels", "scores", "boxes"}
        assert record["labels"] == [spec.class_names[c] for c in record["classes"]] and len(record["boxes"]) == 3
        for x0, y0, x1, y1 in record["boxes"]:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    failures = [json.loads(line) for line in lines(summary.failures_path)]
    assert [(f["file"], f["stage"]) for f in failures] == [(str(images / "broken.png"), "read")]
    assert "not a readable image" in failures[0]["reason"]
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["processed"] == 3
    assert manifest["settings"]["model_sha256"] and manifest["settings"]["box_threshold"] == spec.box_threshold
    overlays = sorted(p.name for p in (tmp_path / "out").glob("*_cam.png"))
    assert overlays == ["img00_cam.png", "img01_cam.png", "img02_cam.png"]
    assert cv2.imread(str(tmp_path / "out" / "img02_cam.png")).shape == cv2.imread(str(files[2])).shape
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".partial")]


def test_existing_results_are_never_silently_overwritten(tiny, tmp_path):
    path, _ = tiny
    files = make_images(tmp_path / "images", 3)
    out = tmp_path / "out"
    with OnnxRuntimeRunner(path) as runner:
        run_files(runner, files, out, RunOptions(progress=False))
        with pytest.raises(CamdeployError, match=r"already holds results.jsonl \(3 results\); add --resume .* or "
                                                 r"--overwrite"):
            run_files(runner, files[:1], out, RunOptions(progress=False))
        assert len(lines(out / "results.jsonl")) == 3
        run_files(runner, files[:1], out, RunOptions(progress=False, overwrite=True))
        assert len(lines(out / "results.jsonl")) == 1
        with pytest.raises(CamdeployError, match="--resume and --overwrite: choose one"):
            run_files(runner, files, out, RunOptions(resume=True, overwrite=True))


def test_resume_completes_a_killed_run_to_the_same_file(tiny, tmp_path):
    path, _ = tiny
    files = make_images(tmp_path / "images", 7)
    with OnnxRuntimeRunner(path) as runner:
        whole = run_files(runner, files, tmp_path / "whole", RunOptions(batch_size=3, progress=False))
        expected = lines(whole.results_path)
        # A run killed in its third line: two whole lines and half of the third.
        out = tmp_path / "out"
        run_files(runner, files[:3], out, RunOptions(batch_size=3, progress=False))
        data = (out / "results.jsonl").read_bytes()
        third = data.index(b"\n", data.index(b"\n") + 1) + 1
        (out / "results.jsonl").write_bytes(data[:third + 25])
        resumed = run_files(runner, files, out, RunOptions(batch_size=3, progress=False, resume=True))
    assert (resumed.previously, resumed.processed) == (2, 5)
    assert lines(out / "results.jsonl") == expected  # line for line, input order


def test_resume_refuses_other_settings_or_models(tiny, tmp_path):
    path, _ = tiny
    files = make_images(tmp_path / "images", 2)
    out = tmp_path / "out"
    with OnnxRuntimeRunner(path) as runner:
        run_files(runner, files, out, RunOptions(progress=False))
    with OnnxRuntimeRunner(path, box_threshold=0.5) as runner, pytest.raises(
            CamdeployError, match=r"made with box_threshold 0.2, this run has 0.5; resume with the same model"):
        run_files(runner, files, out, RunOptions(progress=False, resume=True))
    other = tmp_path / "other.onnx"
    export_onnx(seeded(TorchvisionStyle(), seed=1), other, ExportOptions(input_size=SIZE, topk=3, source_model="x"))
    with OnnxRuntimeRunner(other) as runner, pytest.raises(CamdeployError, match="made with model_sha256"):
        run_files(runner, files, out, RunOptions(progress=False, resume=True))
    (out / "run.json").unlink()
    with OnnxRuntimeRunner(path) as runner, pytest.raises(CamdeployError, match=r"no run\.json to check it against"):
        run_files(runner, files, out, RunOptions(progress=False, resume=True))


class InterruptAfter:
    """A runner wrapper whose second batch is a Ctrl-C."""

    def __init__(self, runner, batches):
        self.runner, self.left = runner, batches

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def infer_images(self, *args, **kwargs):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.runner.infer_images(*args, **kwargs)


def test_an_interrupted_run_keeps_what_it_finished(tiny, tmp_path):
    path, _ = tiny
    files = make_images(tmp_path / "images", 6)
    with OnnxRuntimeRunner(path) as runner:
        with pytest.raises(RunInterrupted) as stop:
            run_files(InterruptAfter(runner, 1), files, tmp_path / "out",  # type: ignore[arg-type]
                      RunOptions(batch_size=2, progress=False), model=path)
        summary = stop.value.summary
        assert (summary.processed, summary.remaining, summary.interrupted) == (2, 4, True)
        assert [json.loads(line)["file"] for line in lines(summary.results_path)] == [str(f) for f in files[:2]]
        assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "interrupted"
        done = run_files(runner, files, tmp_path / "out", RunOptions(batch_size=2, progress=False, resume=True))
    assert (done.previously, done.processed, done.complete) == (2, 4, True)


def test_listing_problems_are_failures_and_names_round_trip(tiny, tmp_path):
    path, _ = tiny
    images = tmp_path / "images"
    make_images(images, 2)
    (images / "gone.jpg").symlink_to(images / "missing.jpg")
    raw = os.fsencode(str(images)) + b"/caf\xe9.png"
    with open(raw, "wb") as handle:
        handle.write(cv2.imencode(".png", np.full((20, 20, 3), 90, np.uint8))[1].tobytes())
    with OnnxRuntimeRunner(path) as runner:
        summary = run_files(runner, list_inputs([str(images)]), tmp_path / "out", RunOptions(progress=False),
                            lambda message: None)
    assert (summary.processed, summary.skipped) == (3, 1)
    records = [json.loads(line) for line in lines(summary.results_path)]  # strict UTF-8 JSON
    odd = [r for r in records if "file_b64" in r]
    assert len(odd) == 1 and "\ufffd" in odd[0]["file"]
    assert base64.b64decode(odd[0]["file_b64"]) == raw and record_path(odd[0]) == raw
    assert os.path.isfile(os.fsdecode(record_path(odd[0])))
    failure = json.loads(lines(summary.failures_path)[0])
    assert failure["file"].endswith("gone.jpg") and failure["stage"] == "list"


def test_a_large_jpeg_is_decoded_reduced_and_its_boxes_stay_in_original_pixels(tiny, tmp_path):
    """A 2000x1500 JPEG for a 32x32 model decodes at 1/8 (250x188): the record's boxes are in the
    2000x1500 frame, close to those of a full decode, and the overlay is drawn at the decoded size."""
    from camdeploy.runtime.images import DecodeOptions, decode, prepare_loaded, read_image

    path, _ = tiny
    y, x = np.mgrid[0:1500, 0:2000]
    picture = np.stack([(x / 8) % 255, (y / 6) % 255, ((x + y) / 14) % 255], axis=-1).astype(np.uint8)
    jpeg = tmp_path / "big.jpg"
    cv2.imwrite(str(jpeg), picture)
    reduced = read_image(jpeg, DecodeOptions(target=(32, 32)))
    assert reduced.pixels.shape == (188, 250, 3) and (reduced.width, reduced.height) == (2000, 1500)
    whole = decode(jpeg.read_bytes(), "big")  # no target: whole
    assert whole.pixels.shape == (1500, 2000, 3)
    _, spec = tiny
    small, small_frame = prepare_loaded(reduced, spec)
    full, full_frame = prepare_loaded(whole, spec)
    levels = np.abs(small - full).max() / spec.normalization.scale[0]  # in 0..255 pixel levels
    assert levels <= 6, levels  # RUN_MEMORY.md measures 2 levels on a photo
    assert small_frame.to_original(np.array([0, 0, 32, 32])).tolist() == pytest.approx(
        full_frame.to_original(np.array([0, 0, 32, 32])).tolist(), abs=8)
    with OnnxRuntimeRunner(path) as runner:
        summary = run_files(runner, [jpeg], tmp_path / "out", RunOptions(progress=False, overlays=True))
    record = json.loads(lines(summary.results_path)[0])
    for x0, y0, x1, y1 in record["boxes"]:
        assert 0 <= x0 < x1 <= 2000 and 0 <= y0 < y1 <= 1500
    assert cv2.imread(str(tmp_path / "out" / "big_cam.png")).shape == (188, 250, 3)


@pytest.mark.parametrize(("prefetch", "during"), [(2, 1), (0, 3)])
def test_opencv_leaves_the_cores_to_the_model_while_the_loader_decodes(tiny, tmp_path, monkeypatch, prefetch, during):
    path, _ = tiny
    files = make_images(tmp_path / "images", 4)
    seen = []
    previous = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        with OnnxRuntimeRunner(path) as runner:
            real = runner.infer_images
            monkeypatch.setattr(runner, "infer_images",
                                lambda *args, **kw: (seen.append(cv2.getNumThreads()), real(*args, **kw))[1])
            run_files(runner, files, tmp_path / "out", RunOptions(batch_size=2, progress=False, prefetch=prefetch))
        assert seen == [during, during] and cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(previous)


def test_a_full_disk_leaves_whole_lines_and_says_failed(tiny, tmp_path, monkeypatch):
    """ENOSPC injected into the results file's third write, after half its bytes, and into every
    new file after it (run.json then cannot be replaced): whole lines only, run.json rewritten in
    place with ``failed`` and the reason; --resume completes it to an uninterrupted run's file."""
    import errno

    from camdeploy.runtime import pipeline

    path, _ = tiny
    files = make_images(tmp_path / "images", 9)
    with OnnxRuntimeRunner(path) as runner:
        expected = lines(run_files(runner, files, tmp_path / "whole", RunOptions(batch_size=2, progress=False))
                         .results_path)
        out = tmp_path / "out"
        real_write, real_text = os.write, pipeline.write_text
        state = {"writes": 0, "full": False}

        def write(fd, data):
            if os.readlink(f"/proc/self/fd/{fd}").endswith("results.jsonl"):
                state["writes"] += 1
                if state["writes"] == 3:
                    state["full"] = True
                    real_write(fd, bytes(data)[:len(data) // 2])  # the kernel wrote part, then the disk filled
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        def write_text(target, text, label=None):
            if state["full"]:
                raise CamdeployError(f"{label}: cannot write there (No space left on device)")
            return real_text(target, text, label=label)

        monkeypatch.setattr(pipeline.os, "write", write)
        monkeypatch.setattr(pipeline, "write_text", write_text)
        with pytest.raises(CamdeployError, match=rf"^--out {out}: cannot write there \(No space left on device\)$"):
            run_files(runner, files, out, RunOptions(batch_size=2, progress=False))
        data = (out / "results.jsonl").read_bytes()
        assert data.endswith(b"\n") and data.splitlines() == [line.encode() for line in expected[:4]]
        manifest = json.loads((out / "run.json").read_text())
        assert manifest["status"] == "failed" and "No space left on device" in manifest["error"]
        assert manifest["counts"]["processed"] == 4
        monkeypatch.undo()
        resumed = run_files(runner, files, out, RunOptions(batch_size=2, progress=False, resume=True))
    assert (resumed.previously, resumed.processed) == (4, 5)
    assert lines(out / "results.jsonl") == expected
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_a_file_size_limit_cuts_no_line_in_the_real_command(tiny, tmp_path):
    """The kernel itself refuses part of a write: RLIMIT_FSIZE lets results.jsonl grow to 3000 bytes
    and no further (EFBIG), in the real command."""
    import resource
    import subprocess
    import sys

    from conftest import REPO

    path, _ = tiny
    images = tmp_path / "images"
    make_images(images, 40)
    out = tmp_path / "out"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    command = [sys.executable, "-m", "camdeploy", "run", str(path), str(images), "--out", str(out), "--no-progress",
               "--batch-size", "4"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"camdeploy run: error: --out {out}: cannot write there (File too large)\n"
    data = (out / "results.jsonl").read_bytes()
    assert 0 < len(data) <= 3000 and data.endswith(b"\n")
    assert all(json.loads(line) for line in data.splitlines())
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"].endswith("(File too large)")
    assert manifest["counts"]["processed"] == data.count(b"\n")
    whole = subprocess.run([*command[:7], str(tmp_path / "whole"), *command[8:]], cwd=REPO, capture_output=True,
                           timeout=120)
    assert whole.returncode == 0
    resumed = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "results.jsonl").read_bytes() == (tmp_path / "whole" / "results.jsonl").read_bytes()


def test_resume_with_fewer_inputs_says_so_and_keeps_the_others(tiny, tmp_path, capsys):
    from camdeploy.cli import main

    path, _ = tiny
    files = make_images(tmp_path / "images", 5)
    out = tmp_path / "out"
    assert main(["run", str(path), *map(str, files), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["run", str(path), *map(str, files[:3]), "--out", str(out), "--no-progress", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "3 images were already done (--resume)" in printed
    assert f"2 results in {out / 'results.jsonl'} are of files this run did not list" in printed
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["unlisted"] == 2
    assert len(lines(out / "results.jsonl")) == 5
