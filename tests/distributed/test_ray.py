"""Ray: ``run --engine ray`` writes the local engine's run folder, the Python pieces work in a user's
own Ray Data pipeline, ``camdeploy serve`` answers like ``run`` and refuses bad requests, and both
stop cleanly. One local Ray cluster for the whole session (2 CPUs, a small object store, no
dashboard); commands in other processes join it with ``--address``.

The tests that need no cluster (refusals before Ray starts, Ray missing) are not marked ``ray``.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from conftest import DEV, REPO, lying_jpeg

from camdeploy.cli import main

IMAGES = DEV / "images"
COUNT = 60


def dev_images(count: int) -> list[Path]:
    return sorted(IMAGES.glob("*.JPEG"))[:count]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_same_results(got: list[dict], expected: list[dict]) -> None:
    """Same files in the same order, same classes and labels, equal boxes, scores to 1e-6."""
    assert [r["file"] for r in got] == [r["file"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert (a["classes"], a["labels"], a["boxes"]) == (b["classes"], b["labels"], b["boxes"]), a["file"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-6), a["file"]


# -- without a cluster -------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "message"), [
    (["--engine", "ray", "--overlays"], "--overlays with --engine ray: overlays are drawn by the local engine only"),
    (["--engine", "ray", "--backend", "torch"], "--backend torch with --engine ray: the Ray engine runs ONNX Runtime"),
    (["--engine", "ray", "--provider", "cuda"], "--provider cuda with --engine ray"),
    (["--engine", "ray", "--actors", "0"], "--actors 0: expected a positive number of actors"),
    (["--address", "auto"], r"--address auto: an option of --engine ray \(this run uses --engine local\)"),
    (["--actors", "2"], "--actors 2: an option of --engine ray"),
])
def test_ray_options_are_refused_before_anything_starts(tmp_path, capsys, extra, message):
    import re

    code = main(["run", str(tmp_path / "model.onnx"), str(tmp_path), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 1 and re.search(message, err), err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["run", "MODEL", "IMAGES", "--out", "OUT", "--engine", "ray"], ["serve", "MODEL"]])
def test_without_ray_both_commands_name_the_extra(tmp_path, tiny_model, command):
    args = [str(tiny_model) if a == "MODEL" else str(tmp_path) if a == "IMAGES" else str(tmp_path / "o")
            if a == "OUT" else a for a in command]
    (tmp_path / "a.png").write_bytes(b"")  # an input, so that the run gets as far as the engine
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        from camdeploy.cli import main
        sys.exit(main({args!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "needs Ray: install camdeploy with the 'ray' extra (pip install 'camdeploy[ray]')" in done.stderr


@pytest.mark.parametrize(("mode", "configured", "given"), [
    (None, False, True),        # Ray 2.59+ turns auth on for a local cluster: our token, not ~/.ray/auth_token
    ("token", False, True),     # set by Ray itself when this process started a cluster before
    ("disabled", False, False),  # the user's choice
    (None, True, False),        # the user's own token
])
def test_a_private_cluster_gets_this_processs_token(monkeypatch, tmp_path, mode, configured, given):
    from camdeploy.distributed import cluster

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_USAGE_STATS_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    if mode:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
    if configured:
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    with cluster._private_environment():
        assert (os.environ.get("RAY_AUTH_TOKEN") == cluster._TOKEN) is given
        assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    assert "RAY_AUTH_TOKEN" not in os.environ and "RAY_USAGE_STATS_ENABLED" not in os.environ
    assert not (tmp_path / ".ray").exists()


def test_a_workers_error_reaches_the_user_in_one_line():
    """Ray wraps a worker's error in its own, with the worker's traceback as text."""
    from camdeploy.distributed.ray_batch import _cause
    from camdeploy.errors import CamdeployError

    class Wrapped(Exception):  # like ray.data's SystemException under ray's ActorDiedError
        pass

    died = RuntimeError("The actor died because of an error raised in its creation task, "
                        "\x1b[36mray::MapWorker\x1b[39m\nTraceback (most recent call last):\n  File ...\n"
                        "camdeploy.errors.CamdeployError: $CAMDEPLOY_RAY_MODEL_DIR /x: cannot write there "
                        "(Read-only file system)\n")
    died.__cause__ = Wrapped("")
    assert _cause(died) == "$CAMDEPLOY_RAY_MODEL_DIR /x: cannot write there (Read-only file system)"
    outer = RuntimeError("task failed")
    outer.__cause__ = CamdeployError("MODEL m.onnx: bad")
    assert _cause(outer) == "MODEL m.onnx: bad"
    plain = RuntimeError("\x1b[31mobject store full\x1b[0m\nmore lines")
    plain.__cause__ = Wrapped("")
    assert _cause(plain) == "RuntimeError: object store full"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small exported model (the refusal tests need a valid file, not a good one)."""
    from tiny_models import TorchvisionStyle, seeded

    from camdeploy.export.exporter import ExportOptions, export_onnx

    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export_onnx(seeded(TorchvisionStyle()), path, ExportOptions(input_size=(32, 32), topk=3, source_model="tiny"))
    return path


# -- one cluster for the session ---------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A local Ray cluster for the session, started like the CLI's private one (2 CPUs, a 256 MiB
    object store, no dashboard, a per-process token); model copies go to a folder of the session."""
    from camdeploy.distributed.cluster import RayOptions, ray_session

    os.environ["CAMDEPLOY_RAY_MODEL_DIR"] = str(tmp_path_factory.mktemp("ray-models"))  # inherited by workers
    with ray_session(RayOptions(num_cpus=2, object_store_mb=256)) as session:
        assert session.started and session.cpus == 2
        yield session


@pytest.fixture(scope="module")
def local_run(lite0_onnx, tmp_path_factory):
    """The local engine on 60 dev images and two unreadable files: the reference."""
    folder = tmp_path_factory.mktemp("local")
    bad = folder / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image\n")
    inputs = [str(p) for p in dev_images(COUNT)] + [str(bad)]
    code = main(["run", str(lite0_onnx), *inputs, "--out", str(folder / "out"), "--no-progress"])
    assert code == 3
    return inputs, folder / "out"


@pytest.mark.ray
@pytest.mark.data
@pytest.mark.integration
def test_ray_engine_writes_the_local_engines_run_folder(cluster, lite0_onnx, local_run, tmp_path, capsys):
    inputs, reference = local_run
    out = tmp_path / "ray"
    code = main(["run", str(lite0_onnx), *inputs, "--out", str(out), "--engine", "ray", "--batch-size", "4",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 3, err  # two inputs left out, as locally
    assert "Ray: the cluster at" in err and "1 actor x 1 thread" in err
    got, expected = lines(out / "results.jsonl"), lines(reference / "results.jsonl")
    assert len(got) == COUNT
    assert_same_results(got, expected)
    assert lines(out / "failures.jsonl") == lines(reference / "failures.jsonl")
    assert [f["stage"] for f in lines(out / "failures.jsonl")] == ["read", "read"]
    manifest, before = (json.loads((d / "run.json").read_text()) for d in (out, reference))
    assert manifest["status"] == "complete" and manifest["counts"] == before["counts"]
    assert manifest["settings"] == {**before["settings"], "engine": "ray", "actors": 1, "threads_per_actor": 1}


@pytest.mark.ray
@pytest.mark.data
@pytest.mark.integration
def test_ray_engine_completes_a_local_run(cluster, lite0_onnx, local_run, tmp_path):
    """--resume across engines: the local engine's first 20 images, then Ray for the rest."""
    inputs, reference = local_run
    out = tmp_path / "out"
    assert main(["run", str(lite0_onnx), *inputs[:20], "--out", str(out), "--no-progress"]) == 0
    assert main(["run", str(lite0_onnx), *inputs, "--out", str(out), "--engine", "ray", "--resume",
                 "--no-progress"]) == 3
    assert_same_results(lines(out / "results.jsonl"), lines(reference / "results.jsonl"))
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert (counts["previously"], counts["processed"], counts["skipped"]) == (20, COUNT - 20, 2)


@pytest.mark.ray
@pytest.mark.data
@pytest.mark.integration
def test_an_interrupted_ray_run_keeps_its_results_and_resumes(cluster, lite0_onnx, local_run, tmp_path):
    """SIGTERM (a scheduler's pre-emption) in a process that joined the cluster: exit 130, every
    finished line kept, run.json interrupted; --resume completes it in input order."""
    images = [str(p) for p in sorted(IMAGES.glob("*.JPEG"))]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "camdeploy", "run", str(lite0_onnx), str(IMAGES), "--out", str(out),
               "--engine", "ray", "--address", cluster.address, "--batch-size", "1", "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if results.is_file() and results.stat().st_size > 0:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted after" in err and "rerun with --resume" in err
    kept = lines(results)
    assert 0 < len(kept) < len(images)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert main(["run", str(lite0_onnx), str(IMAGES), "--out", str(out), "--engine", "ray", "--resume",
                 "--no-progress"]) == 0
    done = lines(results)
    assert [r["file"] for r in done] == images
    reference = {r["file"]: r for r in lines(local_run[1] / "results.jsonl")}
    assert_same_results([r for r in done if r["file"] in reference], list(reference.values()))


@pytest.mark.ray
@pytest.mark.data
@pytest.mark.integration
def test_the_python_pieces_in_a_users_own_pipeline(cluster, lite0_onnx, local_run, tmp_path):
    """The README's example: read_binary_files -> prepare_images (tasks) -> CamPredictor (actors),
    with a model whose file is gone before the workers start (they get it from the object store)."""
    import ray

    from camdeploy.distributed import CamPredictor, prepare_images, share_model

    copy = tmp_path / "model.onnx"
    shutil.copyfile(lite0_onnx, copy)
    model = share_model(copy)
    copy.unlink()  # no worker may read the driver's path
    files = dev_images(8)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    ds = ray.data.read_binary_files([str(f) for f in files] + [str(tmp_path / "broken.jpg")], include_paths=True)
    ds = ds.map_batches(prepare_images, fn_kwargs={"model": model}, batch_size=4)
    ds = ds.map_batches(CamPredictor, fn_constructor_kwargs={"model": model}, batch_size=4,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=4), num_cpus=1)
    rows = {Path(row["path"]).name: row for row in ds.iter_rows()}
    assert set(rows) == {f.name for f in files} | {"broken.jpg"}
    assert "not a readable image" in rows["broken.jpg"]["error"] and rows["broken.jpg"]["record"] == ""
    reference = {Path(r["file"]).name: r for r in lines(local_run[1] / "results.jsonl")}
    for f in files:
        assert rows[f.name]["error"] == ""
        record = json.loads(rows[f.name]["record"])
        assert Path(record["file"]).name == f.name
        assert_same_results([{**record, "file": f.name}], [{**reference[f.name], "file": f.name}])


@pytest.mark.ray
def test_the_model_cache_of_a_node(cluster, tiny_model, tmp_path, monkeypatch):
    """A node fetches the model once; a copy with the wrong content is fetched again; bytes that do
    not match the SHA-256 are never used."""
    import dataclasses

    import ray

    from camdeploy.distributed.model import local_model, share_model
    from camdeploy.errors import CamdeployError

    monkeypatch.setenv("CAMDEPLOY_RAY_MODEL_DIR", str(tmp_path / "cache"))
    model = share_model(tiny_model)
    first = local_model(model)
    assert first.read_bytes() == tiny_model.read_bytes() and first.name == f"{model.sha256}.onnx"
    assert local_model(dataclasses.replace(model, ref=None)) == first  # found on the node: nothing fetched
    first.write_bytes(b"damaged")
    assert local_model(model).read_bytes() == tiny_model.read_bytes()
    first.unlink()
    with pytest.raises(CamdeployError, match="the bytes received differ from the file's SHA-256"):
        local_model(dataclasses.replace(model, ref=ray.put(b"something else")))
    assert not first.exists()


# -- serve -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serve_port(cluster):
    """Serve's HTTP proxy is the cluster's: one port for every serve test of the session."""
    return free_port()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            chunked: bool = False) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if chunked:
            connection.request(method, path, body=iter([body or b""]), headers=headers or {}, encode_chunked=True)
        else:
            connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:  # Serve's proxy answers unknown routes in plain text
            return response.status, {"text": data.decode("utf-8", "replace")}
    finally:
        connection.close()


def multipart(name: str, data: bytes) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.ray
@pytest.mark.data
@pytest.mark.integration
def test_serve_answers_like_run_and_refuses_bad_requests(cluster, serve_port, lite0_onnx, local_run):
    from camdeploy.backends import RunnerOptions
    from camdeploy.distributed.model import share_model
    from camdeploy.distributed.ray_serve import ServeOptions, start_service, stop_service
    from camdeploy.errors import CamdeployError
    from camdeploy.metadata import read_spec

    options = ServeOptions(port=serve_port, max_batch=8, batch_wait_ms=20, max_body_mb=2, name="test-serve")
    url = start_service(share_model(lite0_onnx), RunnerOptions(), options)
    assert url == f"http://127.0.0.1:{serve_port}"
    try:
        reference = {r["file"]: r for r in lines(local_run[1] / "results.jsonl")}
        files = dev_images(20)

        def ask(job: tuple[Path, bool]) -> tuple[Path, bool, int, dict]:
            path, as_form = job
            data = path.read_bytes()
            body, headers = multipart(path.name, data) if as_form else (data, {"Content-Type": "image/jpeg"})
            return (path, as_form, *request(serve_port, "POST", "/predict", body, headers))

        jobs = [(f, as_form) for as_form in (False, True) for f in files]  # 40 requests
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, jobs, timeout=300))
        for path, as_form, status, record in answers:
            assert status == 200, record
            assert record["file"] == (path.name if as_form else None)
            assert_same_results([{**record, "file": str(path)}], [reference[str(path)]])

        text, big = b"just some text\n", b"\xff\xd8\xff" + bytes(3 * 1024 * 1024)
        refusals = {
            "text": request(serve_port, "POST", "/predict", text, {"Content-Type": "text/plain"}),
            "empty": request(serve_port, "POST", "/predict", b""),
            "large": request(serve_port, "POST", "/predict", big),
            "large, chunked": request(serve_port, "POST", "/predict", big, chunked=True),
            "empty form": request(serve_port, "POST", "/predict", *multipart("nothing.jpg", b"")),
            "GET": request(serve_port, "GET", "/predict"),
            "lying header": request(serve_port, "POST", "/predict", lying_jpeg(files[1].read_bytes(), 20000, 20000)),
        }
        statuses = {name: status for name, (status, _) in refusals.items()}
        assert statuses == {"text": 415, "empty": 400, "large": 413, "large, chunked": 413, "empty form": 400,
                            "GET": 405, "lying header": 415}
        for _, answer in refusals.values():
            assert set(answer) == {"error"} and "\n" not in answer["error"] and answer["error"]
        assert "not a readable image" in refusals["text"][1]["error"]
        assert "more than the limit of 2097152" in refusals["large"][1]["error"]
        assert "corrupt image data, left out (the decoder says: " in refusals["lying header"][1]["error"]

        status, record = request(serve_port, "POST", "/predict", files[0].read_bytes())  # still serving
        assert status == 200 and record["classes"] == reference[str(files[0])]["classes"]
        status, health = request(serve_port, "GET", "/health")
        assert status == 200 and health["status"] == "ready"
        assert (health["answered"], health["refused"]) == (41, 6)
        assert health["largest_batch"] >= 2  # four clients at once: the server batched them
        status, metadata = request(serve_port, "GET", "/metadata")
        spec = read_spec(lite0_onnx)
        assert status == 200 and metadata["labels"] == list(spec.class_names) and metadata["input_size"] == [224, 224]
        assert metadata["metadata"]["camdeploy.topk"] == "5" and metadata["limits"]["max_body_bytes"] == 2 * 1024**2

        with pytest.raises(CamdeployError, match=r"--replicas 3 x --threads 1: the replicas would reserve 3 CPUs and "
                                                 r"the cluster has 2; expected at most 2 replicas"):
            start_service(share_model(lite0_onnx), RunnerOptions(), ServeOptions(port=serve_port, replicas=3))
        with pytest.raises(CamdeployError, match=rf"Serve already runs on this cluster with its HTTP proxy on "
                                                 rf"127.0.0.1:{serve_port}"):
            start_service(share_model(lite0_onnx), RunnerOptions(), ServeOptions(port=free_port(), name="other"))
    finally:
        stop_service(options.name)
    assert request(serve_port, "GET", "/health")[0] == 404  # the application is gone, the proxy stays


@pytest.mark.ray
@pytest.mark.data
@pytest.mark.integration
def test_serve_command_stops_cleanly_on_ctrl_c(cluster, serve_port, lite0_onnx):
    command = [sys.executable, "-m", "camdeploy", "serve", str(lite0_onnx), "--address", cluster.address,
               "--port", str(serve_port), "--name", "test-cli"]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = request(serve_port, "GET", "/health")
            except OSError:
                health = None
            if health and health[0] == 200:
                break
            time.sleep(0.2)
        assert health and health[1]["status"] == "ready"
        status, record = request(serve_port, "POST", "/predict", *multipart("x.jpg", dev_images(1)[0].read_bytes()))
        assert status == 200 and record["file"] == "x.jpg"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "camdeploy serve: stopping" in err and err.rstrip().endswith("camdeploy serve: stopped")
    assert "Traceback" not in err
    assert request(serve_port, "GET", "/health")[0] == 404
