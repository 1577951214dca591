"""Batch inference on Ray Data: ``camdeploy run --engine ray``, and the pieces for your own pipelines.

Two steps, each usable in ``Dataset.map_batches`` (batches in NumPy format):

* :func:`prepare_images`, in Ray tasks: reads (or decodes, from a ``bytes`` column) and prepares
  each image with the code of the local engine (:func:`camdeploy.runtime.images.read_image`,
  :func:`~camdeploy.runtime.images.prepare_loaded`); an image that cannot be read gets its reason
  in ``error`` instead of failing the batch.
* :class:`CamPredictor`, in an actor pool: one ONNX Runtime runner per actor
  (:func:`camdeploy.backends.make_runner`), with as many threads as CPUs the actor reserved; it
  writes each image's ``results.jsonl`` object, as JSON text, in ``record``.

Columns: ``path`` (str or bytes: the file to read), optionally ``bytes`` (the file's content, as
``ray.data.read_binary_files(..., include_paths=True)`` gives) and ``file`` (the name that records
and messages show, default ``path``); :func:`prepare_images` adds ``images``, ``frames`` and
``error`` (empty when the image was read); :class:`CamPredictor` replaces ``images`` and
``frames`` by ``record``. Every other column passes through.

``camdeploy run --engine ray`` (:class:`RayRecords`) lists the inputs on the driver exactly as the
local engine does, sends absolute paths (the workers read the files: they must see them at the
same path, as with any Ray Data file source), the model through the object store
(:mod:`camdeploy.distributed.model`), and writes the run folder through
:func:`camdeploy.runtime.pipeline.run_files`: the same ``results.jsonl`` (input order),
``failures.jsonl``, ``run.json``, resume and exit statuses.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camdeploy.backends import RunnerOptions, make_runner
from camdeploy.distributed.model import SharedModel, local_model, share_model
from camdeploy.distributed.stall import StallWatch
from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec
from camdeploy.runtime.images import DecodeOptions, Frame, decode, prepare_loaded, read_image
from camdeploy.runtime.inputs import Listing
from camdeploy.runtime.pipeline import RunOptions, RunSummary, result_record, run_files
from camdeploy.runtime.runner import Runner

PREPARE_SHARE = 0.2
"""Share of the CPUs left to reading and preparing by default: on Lite0 with one thread,
preparing an ImageNet photo takes about 3.5 ms and inferring it about 13 ms (measured on the
development machine; benchmarks/results/RAY.md)."""
Batch = dict[str, np.ndarray]


def _name(value: object) -> Path:
    """A path from a ``path`` or ``file`` cell: bytes (exact, any file name) or text."""
    if isinstance(value, (bytes, np.bytes_)):
        return Path(os.fsdecode(bytes(value)))
    return Path(str(value))


def _frame(row: np.ndarray) -> Frame:
    return Frame(int(row[0]), int(row[1]), float(row[2]), float(row[3]), float(row[4]), float(row[5]))


def prepare_images(batch: Batch, model: SharedModel | ModelSpec, resize: str | None = None,
                   max_pixels: int | None = None) -> Batch:
    """Read and prepare a batch of images for ``model`` (a task for ``map_batches``).

    Adds ``images float32 [n, 3, S_h, S_w]`` (zeros where the image could not be read),
    ``frames float64 [n, 6]`` (the :class:`~camdeploy.runtime.images.Frame` back to the original
    pixels) and ``error`` (the reason an image was left out, else empty); drops ``bytes``.
    """
    spec = model.spec if isinstance(model, SharedModel) else model
    resize = resize or spec.resize
    options = DecodeOptions(target=(spec.input_height, spec.input_width), resize=resize,
                            **({"max_pixels": max_pixels} if max_pixels else {}))
    paths, data = batch["path"], batch.get("bytes")
    names = batch.get("file", paths)
    count = len(paths)
    images = np.zeros((count, 3, spec.input_height, spec.input_width), np.float32)
    frames = np.zeros((count, 6), np.float64)
    errors = np.full(count, "", dtype=object)
    for i in range(count):
        source = str(_name(names[i]))
        try:
            if data is not None:
                loaded = decode(bytes(data[i]), source, options)
            else:
                loaded = read_image(_name(paths[i]), options, source=source)
            images[i], frame = prepare_loaded(loaded, spec, resize)
        except CamdeployError as exc:
            errors[i] = str(exc)
            continue
        frames[i] = (frame.width, frame.height, frame.scale_x, frame.scale_y, frame.offset_x, frame.offset_y)
    out = {key: value for key, value in batch.items() if key != "bytes"}
    out.update(images=images, frames=frames, error=errors)
    return out


def _assigned_cpus() -> int:
    """The CPUs Ray reserved for this actor (1 outside Ray)."""
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    except Exception:  # not in a Ray worker
        cpus = 1
    return max(1, round(cpus))


class CamPredictor:
    """Infer prepared batches (a callable class for ``map_batches`` in an actor pool).

    Args:
        model: a :class:`~camdeploy.distributed.model.SharedModel` (from :func:`share_model`: no
            worker needs the driver's path) or a path every worker can read.
        options: runner options (threshold, box source, INT8 execution...); ``threads`` defaults
            to the CPUs the actor reserved (``num_cpus`` of ``map_batches``).
    """

    def __init__(self, model: SharedModel | str | os.PathLike[str], options: RunnerOptions = RunnerOptions()):
        spec = model.spec if isinstance(model, SharedModel) else None
        options = dataclasses.replace(options, threads=options.threads or _assigned_cpus())
        self.runner: Runner = make_runner("ort", local_model(model), options, spec)
        self.runner.open()

    def __call__(self, batch: Batch) -> Batch:
        errors = batch["error"]
        names = batch.get("file", batch["path"])
        records = np.full(len(errors), "", dtype=object)
        ready = [i for i, error in enumerate(errors) if not error]
        if ready:
            frames = [_frame(batch["frames"][i]) for i in ready]
            result = self.runner.infer_images(batch["images"][ready], frames, outputs="boxes")
            for j, i in enumerate(ready):
                records[i] = json.dumps(result_record(_name(names[i]), result, j, self.runner.spec.class_names))
        out = {key: value for key, value in batch.items() if key not in ("images", "frames")}
        out["record"] = records
        return out


@dataclass(frozen=True)
class RayBatchOptions:
    """How ``camdeploy run --engine ray`` uses the cluster."""

    actors: int | None = None
    """Inference actors (one ONNX Runtime session each); default :func:`default_actors`."""
    threads: int = 1
    """ONNX Runtime threads per actor, and the CPUs each actor reserves."""
    rows_per_task: int | None = None
    """Images read and prepared per Ray task (default: 4 batches)."""
    stall_timeout: float | None = None
    """Seconds without a batch after which the run stops and says why (``--stall-timeout``); None:
    sized from the batches seen (:mod:`camdeploy.distributed.stall`); 0: wait for ever."""


def default_actors(cpus: int, threads: int) -> int:
    """Actors for a cluster of ``cpus``: all its CPUs but :data:`PREPARE_SHARE` (at least one)
    left to preparing images, divided by the threads per actor; at least 1."""
    prepare = max(1, round(cpus * PREPARE_SHARE))
    return max(1, (cpus - prepare) // threads)


class RayRecords:
    """The :class:`~camdeploy.runtime.pipeline.RecordSource` of ``camdeploy run --engine ray``:
    the files' records computed on the Ray cluster this process is connected to, in input order."""

    def __init__(self, model: SharedModel, runner_options: RunnerOptions, run_options: RunOptions,
                 options: RayBatchOptions, cpus: int):
        if options.threads < 1:
            raise CamdeployError(f"--threads {options.threads}: expected a positive number of threads per actor")
        actors = default_actors(cpus, options.threads) if options.actors is None else options.actors
        if actors < 1:
            raise CamdeployError(f"--actors {actors}: expected a positive number of actors")
        if actors * options.threads >= cpus:
            raise CamdeployError(
                f"--actors {actors} x --threads {options.threads}: the actors would reserve {actors * options.threads} "
                f"of the cluster's {cpus} CPUs and leave none to read and prepare images; expected at most "
                f"{max(1, (cpus - 1) // options.threads)} actors of {options.threads} thread(s) (or fewer threads)")
        self.model, self.run_options = model, run_options
        self.runner_options = dataclasses.replace(runner_options, threads=options.threads)
        self.actors, self.threads = actors, options.threads
        self.rows_per_task = options.rows_per_task or 4 * run_options.batch_size
        self.stall_timeout = options.stall_timeout
        self.settings: dict[str, object] = {"engine": "ray", "actors": actors, "threads_per_actor": options.threads}

    def dataset(self, files: list[Path]) -> Any:
        """The Ray dataset of ``files``: ``index``, ``path``, ``file``, ``error``, ``record``."""
        import pyarrow as pa
        import ray.data

        chunk = self.rows_per_task
        tables = [pa.table({
            "index": pa.array(range(start, min(start + chunk, len(files))), pa.int64()),
            "path": pa.array([os.fsencode(os.path.abspath(p)) for p in files[start:start + chunk]], pa.binary()),
            "file": pa.array([os.fsencode(p) for p in files[start:start + chunk]], pa.binary()),
        }) for start in range(0, len(files), chunk)]
        context = ray.data.DataContext.get_current()
        before = context.execution_options.preserve_order
        context.execution_options.preserve_order = True  # results in input order, as they come
        try:
            ds: Any = ray.data.from_arrow(tables)
            # max_calls=0 is Ray's default for tasks (a worker is never recycled); said here, it keeps
            # Ray Data from fusing the reading tasks into the actors (it fuses maps whose remote
            # arguments match), where reading would no longer overlap inference nor scale apart from it.
            ds = ds.map_batches(prepare_images, batch_size=None, batch_format="numpy", num_cpus=1, max_calls=0,
                                fn_kwargs={"model": self.model, "resize": self.run_options.resize,
                                           "max_pixels": self.run_options.max_pixels})
            return ds.map_batches(CamPredictor, batch_size=self.run_options.batch_size, batch_format="numpy",
                                  compute=ray.data.ActorPoolStrategy(size=self.actors), num_cpus=self.threads,
                                  fn_constructor_kwargs={"model": self.model, "options": self.runner_options})
        finally:
            context.execution_options.preserve_order = before

    def records(self, files: list[Path], on_skip: Callable[[Path, str], None]) -> Iterator[list[dict]]:
        """See :class:`~camdeploy.runtime.pipeline.RecordSource`: rows are put back in input order
        should they ever arrive out of it."""
        if not files:
            return
        waiting: list[tuple[int, str, str]] = []  # (index, error, record) heap
        following = 0
        watch = StallWatch(self.stall_timeout, self.stall_reason)
        batches = iter(self.dataset(files).iter_batches(batch_size=None, batch_format="numpy"))
        try:
            with watch:
                for batch in watch.iterate(batches):
                    for index, error, record in zip(batch["index"], batch["error"], batch["record"], strict=True):
                        heapq.heappush(waiting, (int(index), str(error), str(record)))
                    records = []
                    while waiting and waiting[0][0] == following:
                        index, error, record = heapq.heappop(waiting)
                        if error:
                            on_skip(files[index], error)
                        else:
                            records.append(json.loads(record))
                        following += 1
                    yield records
        except CamdeployError:
            raise
        except Exception as exc:  # Ray's errors, the workers' wrapped in them
            raise CamdeployError(f"--engine ray: the cluster failed: {_cause(exc)}") from exc
        finally:
            # Stop Ray Data's executor now, while Ray is up: left to the garbage collector, its
            # thread can outlive ray.shutdown() and reach the shut-down worker, which then ends the
            # process with status 1 (seen once, on an interrupted run, in CI).
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        if following != len(files):
            raise CamdeployError(f"--engine ray: the cluster returned {following} of {len(files)} images")

    def stall_reason(self, waited: float, limit: float) -> str:
        """Why no batch came for ``waited`` seconds, in one line: the CPUs the run needs against
        those the cluster has now, and what Ray reports about this job's actors that are not alive
        and the resource demands it cannot place."""
        import ray

        total, free = ray.cluster_resources(), ray.available_resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        need = self.actors * self.threads + 1
        have = float(total.get("CPU", 0))
        missing = (f"{need - have:g} CPU{'s' if need - have != 1 else ''} missing" if have < need else
                   "enough CPUs in total, but not where they are needed")
        return (f"--engine ray: no result for {waited:.0f} s (--stall-timeout {limit:.0f}); the run needs {need} "
                f"CPUs ({self.actors} actor{'s' if self.actors > 1 else ''} x {self.threads} thread"
                f"{'s' if self.threads > 1 else ''}, 1 to read images), the cluster has {have:g} "
                f"({float(free.get('CPU', 0)):g} free) on {nodes} node{'s' if nodes != 1 else ''}: {missing}; "
                f"Ray reports {_waiting_actors()} and {_unplaced_demands()}; every finished result is kept: add "
                "capacity, then rerun with --resume")


def _waiting_actors() -> str:
    """This job's actors that are not alive, by class and state (``1 MapWorker(...) RESTARTING``),
    from the cluster's actor table (the state API would need Ray's dashboard)."""
    import collections

    import ray
    from ray._private import state

    try:
        job = ray.get_runtime_context().get_job_id()
        counts = collections.Counter((info.get("ActorClassName", "?"), info.get("State", "?"))
                                     for info in state.actors().values()
                                     if info.get("JobID") == job and info.get("State") not in ("ALIVE", "DEAD"))
    except Exception as exc:  # a private API: say that it failed rather than fail
        return f"no actor states ({type(exc).__name__}: {exc})"
    if not counts:
        return "every actor of this run alive"
    return ", ".join(f"{n} actor{'s' if n > 1 else ''} {name} {what}" for (name, what), n in sorted(counts.items()))


def _unplaced_demands() -> str:
    """The resource demands of pending tasks and actors that the cluster reports (what ``ray
    status`` shows as demands)."""
    import ray

    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        shapes = [f"{request.count} x {dict(sorted(request.bundle.items()))}"
                  for demand in status.resource_demands.ray_task_actor_demand for request in demand.bundles_by_count]
    except Exception as exc:
        return f"no resource demands ({type(exc).__name__}: {exc})"
    return f"pending demands {', '.join(shapes)}" if shapes else "no pending resource demand"


def _cause(exc: BaseException) -> str:
    """One line for an error of the cluster: a camdeploy error raised on a worker (Ray wraps it in
    its own, with the worker's traceback as text), else the first line of Ray's message."""
    chain: list[BaseException] = []
    while exc is not None and len(chain) < 16:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    for error in chain:
        if isinstance(error, CamdeployError):
            return str(error)
    for error in chain:
        found = re.findall(r"CamdeployError: (.+)", str(error))
        if found:
            return found[-1].strip()
    for error in chain:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
        if text:
            return f"{type(error).__name__}: {text.splitlines()[0]}"
    return type(chain[0]).__name__


def run_on_ray(runner: Runner, inputs: list[Path] | Listing, out_dir: str | Path, options: RunOptions = RunOptions(),
               batch: RayBatchOptions = RayBatchOptions(), runner_options: RunnerOptions = RunnerOptions(),
               report: Callable[[str], None] | None = None) -> RunSummary:
    """:func:`~camdeploy.runtime.pipeline.run_files` on the Ray cluster this process is connected to
    (:func:`camdeploy.distributed.cluster.ray_session`).

    ``runner`` is an ``ort`` runner made with ``runner_options``: it describes the run in
    ``run.json`` (and was best opened once, to check the model before the cluster works); it is not
    used to infer. The actors run ``runner_options`` with ``batch.threads`` threads each.
    """
    import ray

    if runner.name != "ort" or runner.model_path is None:
        raise CamdeployError(f"--backend {runner.name}: --engine ray runs ONNX Runtime (--backend ort)")
    cpus = int(ray.cluster_resources().get("CPU", 0))
    source = RayRecords(share_model(runner.model_path), runner_options, options, batch, cpus)
    kwargs = {"report": report} if report else {}
    return run_files(runner, inputs, out_dir, options, model=runner.model_path, source=source, **kwargs)
