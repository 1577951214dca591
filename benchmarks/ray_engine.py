"""Ray on one machine: `camdeploy run --engine ray` beside the local engine, and `camdeploy serve`.

    python benchmarks/ray_engine.py [--data ../shared/data/imagenet-val] [--repeats 3] [--only batch|serve]

Batch. Scope: image files to results.jsonl, each command a fresh process, as a user runs it
(`camdeploy run MODEL DIR --out OUT`), on the dev images, in turns (the order rotates from repeat
to repeat), after one warm-up run of each:

* local, 1 ONNX Runtime thread (the loader thread reads and prepares beside it);
* ray, 1 actor x 1 thread, on a private local cluster of all the CPUs (the other CPU reads and
  prepares in Ray tasks): the same threads as the line above;
* local, ONNX Runtime on every CPU (the default), for reference.

Each repeat also runs each command on one image: that time is the fixed cost (process start, model
load, for ray the cluster's start and the actor pool's), and (N - 1) / (time for N - time for 1)
the throughput once started. In one process, the script then splits Ray's fixed cost: starting the
cluster, and a run of one image on the started cluster (actor start, model fetch, first batch).

Serve. Scope: HTTP request to JSON answer over loopback, on a private local cluster: one replica of
1 thread, `--max-batch 16 --batch-wait-ms 5` and then `--max-batch 1`; C client threads (1, 4, 16)
each with its own keep-alive connection send raw JPEG bodies, a fixed number of requests in all
(bounded), after a warm-up; latency per request (p50, p99) and requests per second. The clients run
on the same machine and take CPU from the server.

On a cluster, `--address HEAD:PORT --actors N` runs the ray lines there (the images at the same
path on every node), to measure scaling out: the local lines stay on this machine for reference.

Writes benchmarks/results/RAY.md and benchmarks/results/ray.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
CAMDEPLOY = [sys.executable, "-m", "camdeploy"]


def machine() -> dict[str, object]:
    flags = subprocess.run("grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni' /proc/cpuinfo | sort -u", shell=True,
                           capture_output=True, text=True).stdout.split()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    import numpy
    import onnxruntime
    import ray

    import camdeploy
    return {"cpu": model, "cpus": os.cpu_count(), "isa": flags, "python": platform.python_version(),
            "camdeploy": camdeploy.__version__, "ray": ray.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__, "platform": platform.platform(), "load_before": os.getloadavg()}


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def batch(model: Path, images: Path, repeats: int, work: Path, address: str | None, actors: int
          ) -> dict[str, object]:
    one = work / "one"
    one.mkdir()
    first = sorted(images.iterdir())[0]
    (one / first.name).symlink_to(first)
    count = len(list(images.iterdir()))
    variants = {
        "local, 1 thread": ["--threads", "1"],
        f"ray, {actors} actor{'s' if actors > 1 else ''} x 1 thread": [
            "--engine", "ray", "--actors", str(actors), "--threads", "1", *(["--address", address] if address else [])],
        f"local, {os.cpu_count()} threads (default)": [],
    }
    times: dict[str, dict[str, list[float]]] = {name: {"all": [], "one": []} for name in variants}
    names = list(variants)
    for repeat in range(repeats + 1):  # the first round warms up and is not kept
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in order:
            for scope, source in (("all", images), ("one", one)):
                out = work / f"out-{names.index(name)}-{scope}"
                seconds = timed([*CAMDEPLOY, "run", str(model), str(source), "--out", str(out), "--overwrite",
                                 "--no-progress", *variants[name]])
                if repeat:
                    times[name][scope].append(seconds)
                print(f"  {'warm-up' if not repeat else f'repeat {repeat}'}: {name}, {scope}: {seconds:.2f} s",
                      file=sys.stderr)
    reference = (work / "out-0-all" / "results.jsonl").read_text()
    same = {name: (work / f"out-{i}-all" / "results.jsonl").read_text() == reference for i, name in enumerate(names)}
    rows = {}
    for name in names:
        full, single = statistics.median(times[name]["all"]), statistics.median(times[name]["one"])
        rows[name] = {"all_s": times[name]["all"], "one_s": times[name]["one"], "median_all_s": full,
                      "median_one_s": single, "images_per_s": count / full,
                      "images_per_s_started": (count - 1) / (full - single), "same_results_as_local": same[name]}
    split = split_start(model, images, work) if address is None else None
    return {"images": count, "repeats": repeats, "address": address, "rows": rows, "split": split}


def split_start(model: Path, images: Path, work: Path) -> dict[str, float]:
    """Ray's fixed cost in one process: the cluster's start, then a one-image run on it."""
    from camdeploy.backends import RunnerOptions, make_runner
    from camdeploy.distributed.cluster import RayOptions, ray_session
    from camdeploy.distributed.ray_batch import RayBatchOptions, run_on_ray
    from camdeploy.runtime.pipeline import RunOptions

    options = RunnerOptions(threads=1)
    runner = make_runner("ort", model, options)
    first = sorted(images.iterdir())[:1]
    start = time.perf_counter()
    with ray_session(RayOptions()):
        started = time.perf_counter()
        run_on_ray(runner, first, work / "split-1", RunOptions(progress=False, overwrite=True),
                   RayBatchOptions(actors=1, threads=1), options, report=lambda message: None)
        one = time.perf_counter()
        run_on_ray(runner, first, work / "split-2", RunOptions(progress=False, overwrite=True),
                   RayBatchOptions(actors=1, threads=1), options, report=lambda message: None)
        again = time.perf_counter()
    stopped = time.perf_counter()
    return {"cluster_start_s": started - start, "first_run_1_image_s": one - started,
            "second_run_1_image_s": again - one, "cluster_stop_s": stopped - again}


def serve(model: Path, images: Path, requests: int) -> dict[str, object]:
    from camdeploy.backends import RunnerOptions
    from camdeploy.distributed.cluster import RayOptions, ray_session
    from camdeploy.distributed.model import share_model
    from camdeploy.distributed.ray_serve import ServeOptions, start_service, stop_service

    bodies = [path.read_bytes() for path in sorted(images.iterdir())[:64]]
    with socket.socket() as sock:  # a free port on loopback
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results: dict[str, object] = {}
    with ray_session(RayOptions()):
        shared = share_model(model)
        for max_batch in (16, 1):
            options = ServeOptions(port=port, max_batch=max_batch, batch_wait_ms=5, name="bench")
            start_service(shared, RunnerOptions(), options)
            load(port, bodies, 4, 16)  # warm-up
            before = health(port)
            for clients in (1, 4, 16):
                row = load(port, bodies, clients, requests)
                row.update(batches(before, after := health(port)))
                before = after
                results[f"max_batch {max_batch}, {clients} clients"] = row
                print(f"  serve --max-batch {max_batch}, {clients} clients: {row['requests_per_s']:.1f} req/s, "
                      f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, mean batch {row['mean_batch']:.2f}",
                      file=sys.stderr)
            stop_service(options.name)
    return {"requests_per_level": requests, "replicas": 1, "threads": 1, "batch_wait_ms": 5, "rows": results}


def health(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/health")
    value = json.loads(connection.getresponse().read())
    connection.close()
    return value


def batches(before: dict, after: dict) -> dict[str, float]:
    answered, made = after["answered"] - before["answered"], after["batches"] - before["batches"]
    return {"mean_batch": answered / made if made else 0.0, "largest_batch_so_far": after["largest_batch"]}


def load(port: int, bodies: list[bytes], clients: int, total: int) -> dict[str, float]:
    """``total`` requests from ``clients`` threads, each on its own keep-alive connection."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                start = time.perf_counter()
                connection.request("POST", "/predict", body=bodies[index % len(bodies)],
                                   headers={"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise SystemExit(f"request {index}: HTTP {response.status}")
                with lock:
                    latencies.append(time.perf_counter() - start)
        finally:
            connection.close()

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result(timeout=600)
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"clients": clients, "requests": len(ordered), "seconds": wall, "requests_per_s": len(ordered) / wall,
            "p50_ms": 1000 * ordered[len(ordered) // 2],
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def report(data: dict) -> str:
    info = data["machine"]
    out = ["# Ray on one machine: `run --engine ray` beside the local engine, and `camdeploy serve`", "",
           f"Generated by `{data['command']}`. Model: EfficientNet-Lite0 (224x224, top-5) as `camdeploy demo` "
           "exports it; boxes on the host (ONNX Runtime CPU).", ""]
    if "batch" in data:
        b = data["batch"]
        out += ["## Batch: image files to results.jsonl (each command a fresh process)", "",
                f"{b['images']} dev images, batch 8, {b['repeats']} repeats in turns after a warm-up round.", "",
                "| command | median s, all | images/s | median s, 1 image (fixed cost) | images/s once started | "
                "same results.jsonl as local |", "|---|---:|---:|---:|---:|---|"]
        for name, row in b["rows"].items():
            out.append(f"| {name} | {row['median_all_s']:.2f} | {row['images_per_s']:.1f} | {row['median_one_s']:.2f} "
                       f"| {row['images_per_s_started']:.1f} | {'yes' if row['same_results_as_local'] else 'NO'} |")
        local, ray = list(b["rows"].values())[:2]
        end_to_end = ray["images_per_s"] / local["images_per_s"]
        started = ray["images_per_s_started"] / local["images_per_s_started"]
        out += ["", f"Ray against local at the same threads: **{end_to_end:.2f}x** throughput end to end, "
                f"**{started:.2f}x** once started; fixed cost {ray['median_one_s']:.1f} s against "
                f"{local['median_one_s']:.1f} s.",
                "", "Every run, s: " + "; ".join(
                    f"{name}: {' '.join(f'{t:.2f}' for t in row['all_s'])} (1 image: "
                    f"{' '.join(f'{t:.2f}' for t in row['one_s'])})" for name, row in b["rows"].items()), ""]
        s = b["split"]
        if s:
            out += [f"Ray's fixed cost, split in one process: starting the private cluster {s['cluster_start_s']:.1f} "
                    "s; a first one-image run on it (actor pool start, model from the object store, first batch) "
                    f"{s['first_run_1_image_s']:.1f} s, a second {s['second_run_1_image_s']:.1f} s (Ray Data starts "
                    f"an actor pool per run); stopping the cluster {s['cluster_stop_s']:.1f} s.", ""]
    if "serve" in data:
        s = data["serve"]
        out += ["## Serve: HTTP request to JSON answer (loopback)", "",
                f"One replica, 1 ONNX Runtime thread, `--batch-wait-ms {s['batch_wait_ms']:g}`; "
                f"{s['requests_per_level']} requests per line (raw JPEG bodies of 64 dev images in turn), after a "
                "warm-up; clients on the same machine.", "",
                "| server | clients | requests/s | p50 ms | p99 ms | mean batch |", "|---|---:|---:|---:|---:|---:|"]
        for name, row in s["rows"].items():
            server = name.split(",")[0]
            out.append(f"| `--{server.replace('_', '-')}` | {row['clients']} | "
                       f"{row['requests_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                       f"{row['mean_batch']:.2f} |")
        rows = s["rows"]
        ratios = [rows[f"max_batch 16, {c} clients"]["requests_per_s"]
                  / rows[f"max_batch 1, {c} clients"]["requests_per_s"] for c in (1, 4, 16)]
        out += ["", "Server-side batching (`--max-batch 16` against `--max-batch 1`), requests/s: " + ", ".join(
            f"{c} clients **{r:.2f}x**" for c, r in zip((1, 4, 16), ratios, strict=True)) + ". A lone request "
            "waits up to `--batch-wait-ms` for others to share its batch; a batch shares the model's cost only, not "
            "the HTTP proxy's, the hop from proxy to replica, the decoding, nor (here) the clients' own CPU.", ""]
    out += ["## What one 2-core machine can and cannot show", "",
            "It can show that the Ray engine writes the same results; its fixed cost (the cluster's start, the actor "
            "pool's, the model through the object store: seconds per run, which matter for a few hundred images and "
            "not for millions); its cost per image once started on one node (prepared images through the object "
            "store, Ray Data's scheduling) against the local engine at the same threads; and, for the service, the "
            "cost of a request and what batching does when the CPU is the limit.", "",
            "It cannot show scaling out. One actor and one CPU for reading already fill two CPUs: more actors only "
            "share the same cores (and `run` refuses actors that leave no CPU to reading). What scaling out costs "
            "does not exist on one machine: the model reaching other nodes, prepared images crossing the network "
            "as float32 (0.6 MB per 224 x 224 image, several times the JPEG) when a task and an actor run on "
            "different machines, reading from a shared file system, the single driver that lists the inputs and "
            "writes `results.jsonl`, Serve's proxies on several nodes, a node lost mid-run.", "",
            "On a cluster: run this script on the head with `--address HEAD:PORT --actors N` (the images on a file "
            "system every node mounts at the same path), for 1, 2, 4, 8 worker nodes at a fixed number of actors "
            "per node (N = actors per node x nodes), the driver on its own machine; report images/s against nodes, "
            "with Ray Data's per-operator statistics, the object store's spilling and the network traffic between "
            "nodes, and the driver's CPU. For the service: clients on other machines, replicas spread over the "
            "nodes behind their proxies, requests/s and p99 against replicas, and batching where the model "
            "dominates a request's cost (larger models, GPUs).", "",
            "## Machine and versions", "",
            f"- CPU: {info['cpu']}, {info['cpus']} CPUs; `grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni' "
            f"/proc/cpuinfo | sort -u`: {', '.join(info['isa'])}",
            f"- camdeploy {info['camdeploy']}, Ray {info['ray']}, ONNX Runtime {info['onnxruntime']}, numpy "
            f"{info['numpy']}, Python {info['python']}; {info['platform']}",
            f"- load average before: {' '.join(f'{v:.2f}' for v in info['load_before'])}; after: "
            f"{' '.join(f'{v:.2f}' for v in data['load_after'])}", "",
            "The machine is a shared 2-core VM: compare the ratios of one run, not absolute times across runs.", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "imagenet-val")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="requests per serve line (default 200)")
    parser.add_argument("--only", choices=("batch", "serve"))
    parser.add_argument("--report", action="store_true", help="only rewrite RAY.md from ray.json")
    parser.add_argument("--address", help="batch: run the ray lines on this cluster instead of a private local one "
                        "(the images must be at the same path on its nodes)")
    parser.add_argument("--actors", type=int, default=1, help="batch: actors of the ray line (default 1)")
    args = parser.parse_args()
    if args.report:
        (RESULTS / "RAY.md").write_text(report(json.loads((RESULTS / "ray.json").read_text())))
        return
    from camdeploy.cache import cached_export

    model = cached_export()
    images = args.data / "dev" / "images"
    data: dict[str, object] = {"command": "python benchmarks/ray_engine.py" + "".join(
        f" {a}" for a in sys.argv[1:]), "machine": machine()}
    with tempfile.TemporaryDirectory() as work:
        if args.only != "serve":
            data["batch"] = batch(model, images, args.repeats, Path(work), args.address, args.actors)
        if args.only != "batch":
            data["serve"] = serve(model, images, args.requests)
    data["load_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / "ray.json"
    if args.only and previous.is_file():  # keep the other part of the last full run
        other = "serve" if args.only == "batch" else "batch"
        kept = json.loads(previous.read_text())
        if other in kept:
            data[other] = kept[other]
            data["command"] = f"{kept['command']}, then {data['command']}"

    (RESULTS / "ray.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "RAY.md").write_text(report(data))
    print(f"wrote {RESULTS / 'RAY.md'} and {RESULTS / 'ray.json'}")


if __name__ == "__main__":
    main()
