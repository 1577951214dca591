"""`camdeploy run` as a user runs it, a real process over real images: interrupted, killed, resumed,
and soaked; the results lose nothing and memory does not grow."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEV, REPO

pytestmark = [pytest.mark.integration, pytest.mark.data]


def start(model: Path, inputs: Path, out: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "camdeploy", "run", str(model), str(inputs), "--out", str(out),
                             "--no-progress", "--batch-size", "8", *options],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True) if path.is_file() else []


def wait_for(process: subprocess.Popen, results: Path, count: int, timeout: float = 120.0) -> None:
    """Until ``results`` holds ``count`` lines (the process still running)."""
    deadline = time.monotonic() + timeout
    while len(lines_of(results)) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)


def test_interrupted_then_killed_then_resumed_equals_an_uninterrupted_run(lite0_onnx, tmp_path):
    images = DEV / "images"
    whole = start(lite0_onnx, images, tmp_path / "whole")
    assert whole.wait(timeout=300) == 0, whole.communicate()
    expected = lines_of(tmp_path / "whole" / "results.jsonl")
    assert len(expected) == 699

    out = tmp_path / "out"
    results = out / "results.jsonl"
    first = start(lite0_onnx, images, out)
    wait_for(first, results, 100)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert "camdeploy run: interrupted after" in err and "rerun with --resume" in err
    assert "Traceback" not in err
    done = lines_of(results)
    assert 100 <= len(done) < 699 and done == expected[:len(done)]  # whole lines, in order
    assert all(json.loads(line)["file"] for line in done)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"

    second = start(lite0_onnx, images, out, "--resume")
    wait_for(second, results, len(done) + 100)
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=60)
    killed = results.read_bytes()
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # it never said goodbye
    whole_lines = killed[: killed.rfind(b"\n") + 1].splitlines(keepends=True)
    assert whole_lines == expected[:len(whole_lines)]  # every finished line survives the kill

    third = start(lite0_onnx, images, out, "--resume")
    stdout, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    assert f"{len(whole_lines)} images were already done (--resume)" in stdout
    assert lines_of(results) == expected  # line for line
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads RSS from /proc (Linux)")
def test_soak_memory_does_not_grow_with_the_number_of_images(lite0_onnx, tmp_path):
    """3000 files (links to the dev images): RSS after 500 results against the end grows < 5 %."""
    folder = tmp_path / "soak"
    folder.mkdir()
    sources = sorted((DEV / "images").iterdir())
    for i in range(3000):
        (folder / f"{i:05d}.jpg").symlink_to(sources[i % len(sources)])
    out = tmp_path / "out"
    results = out / "results.jsonl"
    process = start(lite0_onnx, folder, out, "--batch-size", "16")
    samples: list[tuple[int, int]] = []  # (results written, RSS KiB)
    deadline = time.monotonic() + 240
    while process.poll() is None:
        assert time.monotonic() < deadline, "the soak took too long"
        rss = rss_kib(process.pid)
        if rss is not None:
            samples.append((len(lines_of(results)), rss))
        time.sleep(0.1)
    assert process.returncode == 0, process.communicate()
    assert len(lines_of(results)) == 3000
    after_500 = next(rss for done, rss in samples if done >= 500)
    end = max(rss for done, rss in samples if done >= 2500)
    growth = end / after_500 - 1
    print(f"RSS after 500 results {after_500 / 1024:.0f} MiB, highest after 2500 {end / 1024:.0f} MiB "
          f"({100 * growth:+.1f} %)")
    assert growth < 0.05, (after_500, end)
