"""``run --engine ray`` on a cluster of several nodes (``ray.cluster_utils.Cluster``: each node its
own raylet and object store on this machine) that loses nodes mid-run.

* A node is lost and capacity remains: Ray restarts the inference actor elsewhere and retries the
  lost reading tasks; the run completes identical to the local engine.
* The last node with CPUs is lost: the run cannot go on. It stops after ``--stall-timeout`` with
  one line naming the missing CPUs and what Ray reports, exit 1, every finished line kept; once a
  node is back, ``--resume`` completes it, identical to the local engine.

The head has no CPU (only the driver and the object store holding the model), so that what runs
where is known. One cluster for the module; each test adds and removes its own worker nodes. The
drivers are ``camdeploy run`` processes that join it with ``--address``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEV, REPO

pytestmark = [pytest.mark.ray, pytest.mark.data, pytest.mark.integration]

COUNT = 160
STORE = 80 * 1024 * 1024  # per node: Ray's least is 75 MiB


def images() -> list[str]:
    return [str(p) for p in sorted((DEV / "images").glob("*.JPEG"))[:COUNT]]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_same_results(got: list[dict], expected: list[dict]) -> None:
    assert [r["file"] for r in got] == [r["file"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert (a["classes"], a["labels"], a["boxes"]) == (b["classes"], b["labels"], b["boxes"]), a["file"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-6), a["file"]


@pytest.fixture(scope="module")
def reference(lite0_onnx, tmp_path_factory):
    from camdeploy.cli import main

    out = tmp_path_factory.mktemp("nodes-local") / "out"
    assert main(["run", str(lite0_onnx), *images(), "--out", str(out), "--no-progress"]) == 0
    return lines(out / "results.jsonl")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": STORE,
                                                          "include_dashboard": False})
    yield nodes
    nodes.shutdown()


def add_node(cluster, models: Path):
    """A worker node with 2 CPUs whose model copies go to ``models`` (so that the test sees which
    node runs the inference actor)."""
    models.mkdir(parents=True, exist_ok=True)
    return cluster.add_node(num_cpus=2, object_store_memory=STORE, env_vars={"CAMDEPLOY_RAY_MODEL_DIR": str(models)})


def start(model: Path, out: Path, address: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "camdeploy", "run", str(model), *images(), "--out", str(out),
                             "--engine", "ray", "--address", address, "--actors", "1", "--batch-size", "2",
                             "--no-progress", *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_until(process: subprocess.Popen, ready, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, (what, process.communicate())
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def written(out: Path) -> int:
    results = out / "results.jsonl"
    return results.read_bytes().count(b"\n") if results.is_file() else 0


def test_a_lost_node_with_capacity_left_changes_nothing(cluster, lite0_onnx, reference, tmp_path):
    nodes = {name: add_node(cluster, tmp_path / f"models-{name}") for name in ("a", "b")}
    out = tmp_path / "out"
    run = start(lite0_onnx, out, cluster.address)
    try:
        def actor_started() -> bool:
            return written(out) >= 1 and any(any((tmp_path / f"models-{n}").iterdir()) for n in nodes)

        wait_until(run, actor_started, "the first results")
        hosting = next(n for n in nodes if any((tmp_path / f"models-{n}").iterdir()))
        before = written(out)
        cluster.remove_node(nodes.pop(hosting))  # the inference actor's node, and the tasks it ran
        stdout, stderr = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
        for node in nodes.values():
            cluster.remove_node(node)
    assert run.returncode == 0, stderr
    assert before < COUNT, "the run was over before the node was lost"
    assert_same_results(lines(out / "results.jsonl"), reference)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert stderr.splitlines()[0].startswith("camdeploy run: Ray: the cluster at") and len(stderr.splitlines()) == 1
    assert "(raylet)" not in stdout + stderr and "core_worker" not in stderr  # Ray's notices go to its log


def test_a_cluster_left_without_cpus_stops_saying_why_and_resumes(cluster, lite0_onnx, reference, tmp_path):
    out = tmp_path / "out"
    node = add_node(cluster, tmp_path / "models-a")
    run = start(lite0_onnx, out, cluster.address, "--stall-timeout", "5")
    try:
        wait_until(run, lambda: written(out) >= 1, "the first results")
        cluster.remove_node(node)  # no CPU left anywhere: the actor cannot restart, nothing can read
        node = None
        started = time.monotonic()
        _, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
        if node is not None:
            cluster.remove_node(node)
    assert run.returncode == 1, stderr
    assert time.monotonic() - started < 120
    said = stderr.strip().splitlines()
    assert len(said) == 2 and said[0].startswith("camdeploy run: Ray: the cluster at"), stderr
    assert said[1].startswith("camdeploy run: error: --engine ray: no result for "), said[1]
    assert "(--stall-timeout 5); the run needs 2 CPUs (1 actor x 1 thread, 1 to read images), the cluster has 0 " \
           "(0 free) on 1 node: 2 CPUs missing; Ray reports " in said[1]
    assert "CamPredictor" in said[1] and "pending demands" in said[1] and "rerun with --resume" in said[1]
    kept = (out / "results.jsonl").read_bytes()
    done = kept.count(b"\n")
    assert kept.endswith(b"\n") and 1 <= done < COUNT
    assert_same_results([json.loads(line) for line in kept.splitlines()], reference[:done])
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == said[1].split(": error: ", 1)[1]

    node = add_node(cluster, tmp_path / "models-b")
    try:
        again = start(lite0_onnx, out, cluster.address, "--resume")
        stdout, stderr = again.communicate(timeout=600)
    finally:
        cluster.remove_node(node)
    assert again.returncode == 0, stderr
    assert f"{done} images were already done (--resume)" in stdout
    assert_same_results(lines(out / "results.jsonl"), reference)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
