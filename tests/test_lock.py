"""One writer per output: the lock itself, and the real commands raced against each other.

The races hold a first ``camdeploy run`` still (SIGSTOP) once it has written results, start the
second writer against the same ``--out``, and let the first one go on afterwards: the second must be
refused in one line naming the first (pid, host, since when), exit 1 and change nothing; the first
then finishes with exactly one complete, correct ``results.jsonl``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO

from camdeploy.errors import CamdeployError
from camdeploy.lock import FOLDER_LOCK, file_lock, hold_file, hold_folder

COUNT = 150


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import TorchvisionStyle, seeded

    from camdeploy.export.exporter import ExportOptions, export_onnx

    folder = tmp_path_factory.mktemp("lock")
    model = folder / "tiny.onnx"
    export_onnx(seeded(TorchvisionStyle()), model, ExportOptions(input_size=(32, 32), topk=3, source_model="tiny"))
    # Large PNGs (about 20 ms each to decode), so that a run lasts a few seconds: links to two files.
    sources = []
    for seed in range(2):
        sources.append(folder / f"big{seed}.png")
        cv2.imwrite(str(sources[-1]), np.random.default_rng(seed).integers(0, 255, (1500, 1500, 3), np.uint8))
    images = folder / "images"
    images.mkdir()
    for i in range(COUNT):
        (images / f"{i:03d}.png").symlink_to(sources[i % 2])
    reference = folder / "reference"
    done = subprocess.run(command(model, images, reference), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return model, images, (reference / "results.jsonl").read_bytes()


def command(model: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "camdeploy", "run", str(model), str(images), "--out", str(out), "--no-progress",
            "--batch-size", "1", *extra]


def start(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([str(a) for a in args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def held_after_results(process: subprocess.Popen, out: Path) -> None:
    """Wait until the run wrote a result, then stop it there (SIGSTOP)."""
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while not (results.is_file() and results.read_bytes().count(b"\n") >= 1):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first run wrote no result"
        time.sleep(0.005)
    process.send_signal(signal.SIGSTOP)
    assert results.read_bytes().count(b"\n") < COUNT, "the first run finished before it could be held"


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def assert_refused(done: subprocess.CompletedProcess, holder: subprocess.Popen, out: Path) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert f"--out {out}: another camdeploy is writing there (pid {holder.pid} on {socket.gethostname()}, since " \
        in lines[0], lines[0]
    assert "camdeploy run" in lines[0]


def finish(holder: subprocess.Popen, out: Path, expected: bytes) -> None:
    holder.send_signal(signal.SIGCONT)
    _, err = holder.communicate(timeout=300)
    assert holder.returncode == 0, err
    assert (out / "results.jsonl").read_bytes() == expected  # one complete, correct file: nothing lost or doubled
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert not (out / FOLDER_LOCK).exists()  # released and removed


@pytest.mark.parametrize("second", [["--resume"], ["--overwrite"], []], ids=["resume", "overwrite", "fresh"])
def test_a_second_writer_is_refused_while_a_run_goes_on(tiny, tmp_path, second):
    model, images, expected = tiny
    out = tmp_path / "out"
    first = start(*command(model, images, out))
    try:
        held_after_results(first, out)
        before = snapshot(out)
        done = subprocess.run(command(model, images, out, *second), cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert_refused(done, first, out)
        assert snapshot(out) == before  # not a byte changed, no file added or removed
        finish(first, out, expected)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
    again = subprocess.run(command(model, images, out, "--resume"), cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and f"{COUNT} images were already done" in again.stdout, again.stderr


def test_two_fresh_runs_started_together_leave_one_complete_result(tiny, tmp_path):
    model, images, expected = tiny
    out = tmp_path / "out"
    runs = [start(*command(model, images, out)) for _ in range(2)]
    outcomes = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 1], outcomes
    refusal = next(err for code, _, err in outcomes if code == 1).strip()
    assert len(refusal.splitlines()) == 1, refusal
    # refused by the lock while the other ran, or by the results it left if it was already done
    assert "another camdeploy is writing there" in refusal or "already holds results.jsonl" in refusal, refusal
    assert (out / "results.jsonl").read_bytes() == expected


@pytest.mark.ray
def test_the_ray_engine_is_refused_before_a_cluster_starts(tiny, tmp_path):
    model, images, expected = tiny
    out = tmp_path / "out"
    first = start(*command(model, images, out))
    try:
        held_after_results(first, out)
        before = snapshot(out)
        started = time.monotonic()
        done = subprocess.run(command(model, images, out, "--resume", "--engine", "ray"), cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert_refused(done, first, out)
        assert "Ray:" not in done.stderr and time.monotonic() - started < 30  # no cluster was started
        assert snapshot(out) == before
        finish(first, out, expected)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()


HOLD = textwrap.dedent("""
    import sys, time
    from camdeploy.lock import hold_file
    with hold_file(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


def test_a_killed_holder_frees_the_lock(tmp_path):
    target = tmp_path / "model.onnx"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(CamdeployError, match=rf"--output {target}: another camdeploy is writing there "
                           rf"\(pid {holder.pid} on .+, since .+\); wait until it ends or stop it, or choose another "
                           "--output"), hold_file(target):
            pass
        holder.kill()  # SIGKILL: no clean-up runs; the kernel frees the lock
        holder.wait(timeout=30)
        assert file_lock(target).exists()  # its stale details stay, and do not matter
        with hold_file(target):
            info = json.loads(file_lock(target).read_text())
            assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert not file_lock(target).exists()
    finally:
        holder.kill()


def test_the_same_process_may_take_its_own_lock_again(tmp_path):
    with hold_folder(tmp_path / "out"):
        with hold_folder(tmp_path / "out"):
            assert (tmp_path / "out" / FOLDER_LOCK).exists()
        assert (tmp_path / "out" / FOLDER_LOCK).exists()  # still held by the outer block
    assert not (tmp_path / "out" / FOLDER_LOCK).exists()


def test_a_read_only_out_is_refused_naming_out(tiny, tmp_path):
    """The real command into a folder it may not write: read-only for a user, immutable for root
    (``chattr +i``, which binds root too)."""
    model, images, _ = tiny
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
        undo = ["chmod", "755", str(out)]
    else:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(out)], capture_output=True).returncode != 0:
            pytest.skip("running as root, and this file system cannot make a folder immutable (chattr +i)")
        undo = [chattr, "-i", str(out)]
    try:
        done = subprocess.run(command(model, images / "000.png", out), cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    finally:
        subprocess.run(undo, check=True)
    assert done.returncode == 1, done.stderr
    assert re.fullmatch(rf"camdeploy run: error: --out {re.escape(str(out))}: cannot write there "
                        r"\((Permission denied|Operation not permitted)\)\n", done.stderr), done.stderr
    assert list(out.iterdir()) == []


def test_a_failed_write_in_out_names_out(tiny, tmp_path, capsys):
    from camdeploy.cli import main

    model, images, _ = tiny
    (tmp_path / "out" / "failures.jsonl").mkdir(parents=True)  # a folder where the run writes a file
    assert main(["run", str(model), str(images / "000.png"), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == f"camdeploy run: error: --out {tmp_path / 'out'}: cannot write there (Is a directory)\n"


def test_an_empty_out_is_refused(tiny, tmp_path, capsys, monkeypatch):
    from camdeploy.cli import main

    model, images, _ = tiny
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(model), str(images / "000.png"), "--out", "", "--no-progress"]) == 1
    assert capsys.readouterr().err == ("camdeploy run: error: --out '': expected a folder path (an empty one would "
                                       "write into the current folder)\n")
    assert list(tmp_path.iterdir()) == []


def held_at_lock(process: subprocess.Popen, lock: Path) -> None:
    """Wait until the command took its lock, then stop it there (SIGSTOP)."""
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.stat().st_size > 0):  # taken, and its holder's details written
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the command never took its lock"
        time.sleep(0.002)
    process.send_signal(signal.SIGSTOP)


def assert_one_line_refusal(done: subprocess.CompletedProcess, holder: subprocess.Popen, label: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert f"{label}: another camdeploy is writing there (pid {holder.pid} on {socket.gethostname()}" in lines[0]


@pytest.mark.parametrize("kind", ["export", "calibrate"])
def test_a_second_export_or_calibration_of_one_file_is_refused(tiny, tmp_path, kind):
    """Both take the lock of --output first (before torch loads, before the draw), so the second
    writer is refused at once; the first then writes its file."""
    model, images, _ = tiny
    (tmp_path / "mymodels.py").write_text("from tiny_models import build_torchvision_style as build\n")
    if kind == "export":
        args = ["export", "--model", "mymodels:build", "--input-size", "32", "--output", "u.onnx"]
    else:
        calibration = tmp_path / "calibration"
        calibration.mkdir()
        for i in range(24):
            os.symlink(images / f"{i:03d}.png", calibration / f"{i:02d}.png")
        args = ["calibrate", str(model), "--images", str(calibration), "--count", "16", "--verify-count", "4",
                "--min-agreement", "0", "--target", "cpu", "--no-progress", "--output", "u.onnx"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen([sys.executable, "-m", "camdeploy", *args], cwd=tmp_path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        held_at_lock(first, tmp_path / ".u.onnx.lock")
        done = subprocess.run([sys.executable, "-m", "camdeploy", *args], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=120)
        assert_one_line_refusal(done, first, "--output u.onnx")
        assert not (tmp_path / "u.onnx").exists()
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
    from camdeploy.metadata import read_spec

    assert read_spec(tmp_path / "u.onnx").input_height == 32
    assert not (tmp_path / ".u.onnx.lock").exists()


def test_triton_is_refused_while_another_writer_holds_the_model_folder(tiny, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2",
                        reason="tritonclient is not installed (the 'triton' extra)")
    model, _, _ = tiny
    repo = tmp_path / "repo"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(repo / "tiny")], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        done = subprocess.run([sys.executable, "-m", "camdeploy", "triton", str(model), "--repo", str(repo)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert_one_line_refusal(done, holder, f"--repo {repo} (model folder tiny)")
        assert sorted(p.name for p in repo.iterdir()) == [".tiny.lock"]  # the holder's; nothing of the refused one
    finally:
        holder.kill()
        holder.wait(timeout=30)
    done = subprocess.run([sys.executable, "-m", "camdeploy", "triton", str(model), "--repo", str(repo)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (repo / "tiny" / "config.pbtxt").is_file()
