"""Whole-file writes that leave nothing half-written, and the one file hash (camdeploy.atomic)."""

import hashlib
import os
import subprocess
import sys

import pytest

from camdeploy.atomic import file_sha256, remove_stale, temporary_path, write_bytes, write_checked
from camdeploy.errors import CamdeployError


def test_a_failed_check_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")

    def refuse(path):
        assert path.read_bytes() == b"new"  # the check sees the new content, under the temporary name
        raise CamdeployError("check failed")

    with pytest.raises(CamdeployError, match="check failed"):
        write_checked(target, lambda path: path.write_bytes(b"new"), refuse)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_an_interrupted_write_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"

    def interrupted(path):
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_checked(target, interrupted)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_target_names_the_label(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CamdeployError, match=r"--json .*: cannot write there"):
        write_bytes(blocker / "inside.json", b"{}", label=f"--json {blocker / 'inside.json'}")


def test_stale_temporaries_of_dead_processes_go_and_live_ones_stay(tmp_path):
    target = tmp_path / "lite0.onnx"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = target.with_name(f".{target.name}.{int(dead.stdout)}.partial")
    stale.write_bytes(b"killed half-way")
    mine = temporary_path(target)
    mine.write_bytes(b"being written")
    other = tmp_path / f".other.onnx.{int(dead.stdout)}.partial"
    other.write_bytes(b"another target")
    assert remove_stale(target) == [stale]
    assert mine.exists() and other.exists() and not stale.exists()


def test_file_sha256_is_the_sha256_of_the_bytes_across_blocks(tmp_path):
    data = os.urandom((1 << 20) * 2 + 12345)  # spans three 1 MiB blocks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(str(empty)) == hashlib.sha256(b"").hexdigest()
