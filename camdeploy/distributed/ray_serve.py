"""An HTTP service on Ray Serve: ``camdeploy serve``.

Routes (below the application's route prefix, ``/`` by default):

* ``POST /predict``: an image, as the raw body (any content type but multipart) or as the file
  of a ``multipart/form-data`` form (the field ``file``, else the first file). The answer is the
  image's ``results.jsonl`` object (classes, labels, scores, boxes in the image's pixels), with
  ``file`` the uploaded file's name in a form, else ``null``.
* ``GET /health``: ``{"status": "ready", ...}`` with the replica's counts (requests, batches, the
  largest batch), once its model is loaded.
* ``GET /metadata``: labels, input size, T, box threshold, the model's ``camdeploy.*`` metadata,
  its SHA-256, and the service's limits.

Refusals are a 4xx with ``{"error": "one line"}``: an empty body (400), a malformed form (400), a
body over the size limit (413, before it is read when ``Content-Length`` says so), an image over
``max_pixels`` (413), a body that is not a readable image (415); a wrong route is 404, a wrong
method 405. A refusal never stops the replica.

Requests are batched per replica by ``@serve.batch``: up to ``max_batch`` images, waiting at most
``batch_wait_ms`` for the batch to fill. Images are decoded and prepared in the replica (in a
thread, so that the event loop keeps taking requests), before batching, with the code of the
local engine; inference runs in a thread too. Each replica holds one ONNX Runtime session with
``threads`` threads and reserves as many CPUs; the model reaches it through the object store
(:mod:`camdeploy.distributed.model`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camdeploy.backends import RunnerOptions, make_runner
from camdeploy.distributed.model import SharedModel, local_model
from camdeploy.errors import CamdeployError
from camdeploy.runtime.images import DecodeOptions, Frame, decode, prepare_loaded
from camdeploy.runtime.pipeline import result_record

MAX_BATCH = 512
UPLOAD = "the upload"
"""How messages name an image sent without a file name."""


@dataclass(frozen=True)
class ServeOptions:
    """The service's settings (``camdeploy serve``'s options)."""

    host: str = "127.0.0.1"
    """Where Serve's HTTP proxy listens; ``0.0.0.0`` for every interface."""
    port: int = 8000
    replicas: int = 1
    threads: int = 1
    """ONNX Runtime threads per replica, and the CPUs each replica reserves."""
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    max_body_mb: float = 20.0
    """Largest request body, in MiB."""
    max_pixels: int | None = None
    """The decode limit (default :data:`camdeploy.runtime.images.DEFAULT_MAX_PIXELS`)."""
    resize: str | None = None
    name: str = "camdeploy"
    """The Serve application's name."""
    route_prefix: str = "/"

    def check(self) -> None:
        """Refuse settings that cannot work, naming the option."""
        if not 1 <= self.port <= 65535:
            raise CamdeployError(f"--port {self.port}: expected a TCP port, 1 to 65535")
        if self.replicas < 1:
            raise CamdeployError(f"--replicas {self.replicas}: expected a positive number of replicas")
        if self.threads < 1:
            raise CamdeployError(f"--threads {self.threads}: expected a positive number of threads per replica")
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise CamdeployError(f"--max-batch {self.max_batch}: expected 1 to {MAX_BATCH}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise CamdeployError(f"--batch-wait-ms {self.batch_wait_ms}: expected 0 to 10000 milliseconds")
        if not self.max_body_mb > 0:
            raise CamdeployError(f"--max-body-mb {self.max_body_mb}: expected a positive size in MiB")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise CamdeployError(f"--max-pixels {self.max_pixels}: expected a positive number of pixels")
        if not self.route_prefix.startswith("/"):
            raise CamdeployError(f"route prefix {self.route_prefix!r}: expected a path starting with /")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


class Refused(Exception):
    """A request the service answers with a 4xx and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_body(request: Any, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise Refused(400, f"Content-Length {declared!r}: expected a number of bytes") from None
        if length > limit:
            raise Refused(413, f"the body is {length} bytes, more than the limit of {limit} (--max-body-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"the body is more than the limit of {limit} bytes (--max-body-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_from(request: Any, body: bytes) -> tuple[bytes, str | None]:
    """The image's bytes and file name (None when not given): the raw body, or a form's file."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return body, None
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> Any:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16).parse()
    except MultiPartException as exc:
        raise Refused(400, f"the multipart form cannot be read ({exc.message})") from None
    files = [value for key, value in form.multi_items() if isinstance(value, UploadFile)]
    chosen = form.get("file") if isinstance(form.get("file"), UploadFile) else (files[0] if files else None)
    if not isinstance(chosen, UploadFile):
        raise Refused(400, "the multipart form holds no file; send the image as the field 'file'")
    return await chosen.read(), chosen.filename or None


def _json(status: int, value: object) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(value, status_code=status)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class CamService:
    """The Serve deployment's class: one ONNX Runtime runner per replica, batched inference.

    Args:
        model: the model, in the object store (:func:`camdeploy.distributed.model.share_model`).
        runner_options: threshold, box source, INT8 execution (``threads`` comes from ``options``).
        options: the service's settings.
    """

    def __init__(self, model: SharedModel, runner_options: RunnerOptions, options: ServeOptions):
        from ray import serve

        self.options = options
        self.model = model
        threaded = dataclasses.replace(runner_options, threads=options.threads)
        self.runner = make_runner("ort", local_model(model), threaded, model.spec)
        self.runner.open()
        spec = self.runner.spec
        self.resize = options.resize or spec.resize
        self.decode_options = DecodeOptions(target=(spec.input_height, spec.input_width), resize=self.resize,
                                            **({"max_pixels": options.max_pixels} if options.max_pixels else {}))
        self.counts = {"requests": 0, "answered": 0, "refused": 0, "batches": 0, "largest_batch": 0}
        self.started = time.time()
        self._infer = serve.batch(max_batch_size=options.max_batch,
                                  batch_wait_timeout_s=options.batch_wait_ms / 1000)(self._infer_batch)

    def metadata(self) -> dict[str, object]:
        spec = self.runner.spec
        return {"model": self.model.name, "sha256": self.model.sha256, "labels": list(spec.class_names),
                "input_size": [spec.input_height, spec.input_width], "topk": spec.topk,
                "box_threshold": self.runner.box_threshold, "resize": self.resize,
                "execution": self.runner.execution, "box_source": self.runner.box_source,
                "metadata": spec.to_props(),
                "limits": {"max_body_bytes": self.options.max_body_bytes,
                           "max_pixels": self.decode_options.max_pixels, "max_batch": self.options.max_batch,
                           "batch_wait_ms": self.options.batch_wait_ms}}

    def check_health(self) -> None:
        """Serve's periodic health check: a replica without its model is restarted."""
        if not self.runner.is_open:
            raise RuntimeError("the model is not loaded")

    async def _infer_batch(self, items: list[tuple[np.ndarray, Frame]]) -> list[dict]:
        tensors = np.stack([tensor for tensor, _ in items])
        frames = [frame for _, frame in items]
        result = await asyncio.to_thread(self.runner.infer_images, tensors, frames, False, "boxes")
        self.counts["batches"] += 1
        self.counts["largest_batch"] = max(self.counts["largest_batch"], len(items))
        return [result_record(Path(UPLOAD), result, i, self.runner.spec.class_names) for i in range(len(items))]

    async def predict(self, request: Any) -> dict:
        """The record for the image in ``request`` (see the module's docstring); raises :class:`Refused`."""
        body = await read_body(request, self.options.max_body_bytes)
        data, filename = await image_from(request, body)
        if not data:
            raise Refused(400, "the image is empty; send the image's bytes as the body, or as the file of a "
                               "multipart form")
        source = filename or UPLOAD
        try:
            loaded = await asyncio.to_thread(decode, data, source, self.decode_options)
            tensor, frame = await asyncio.to_thread(prepare_loaded, loaded, self.runner.spec, self.resize)
        except CamdeployError as exc:
            status = 413 if "--max-pixels" in str(exc) else 415
            raise Refused(status, _one_line(str(exc))) from None
        record = await self._infer((tensor, frame))
        return {**record, "file": filename}

    async def __call__(self, request: Any) -> Any:
        route = request.url.path[len(request.scope.get("root_path", "")):].rstrip("/") or "/"
        routes = {"/predict": "POST", "/health": "GET", "/metadata": "GET"}
        if route not in routes:
            return _json(404, {"error": f"no route {request.method} {route}; expected POST /predict, GET /health or "
                                        "GET /metadata"})
        if request.method != routes[route]:
            return _json(405, {"error": f"{request.method} {route}: expected {routes[route]}"})
        if route == "/health":
            return _json(200, {"status": "ready" if self.runner.is_open else "loading", **self.counts,
                               "uptime_s": round(time.time() - self.started, 1)})
        if route == "/metadata":
            return _json(200, self.metadata())
        self.counts["requests"] += 1
        try:
            record = await self.predict(request)
        except Refused as refused:
            self.counts["refused"] += 1
            return _json(refused.status, {"error": refused.reason})
        except Exception as exc:  # the replica keeps serving; the client learns why in one line
            self.counts["refused"] += 1
            return _json(500, {"error": _one_line(f"{type(exc).__name__}: {exc}")})
        self.counts["answered"] += 1
        return _json(200, record)


def application(model: SharedModel, runner_options: RunnerOptions, options: ServeOptions) -> Any:
    """The Serve application (``serve.run`` it) of :class:`CamService` with ``options``."""
    from ray import serve

    options.check()
    # Enough requests in flight per replica to fill a batch while the previous one runs.
    ongoing = max(8, 2 * options.max_batch)
    deployment: Any = serve.deployment(CamService, name="CamService", num_replicas=options.replicas,
                                  max_ongoing_requests=ongoing, ray_actor_options={"num_cpus": options.threads})
    return deployment.bind(model, runner_options, options)


def http_address(options: ServeOptions) -> str:
    """The URL of the service's routes."""
    host = f"[{options.host}]" if ":" in options.host else options.host
    return f"http://{host}:{options.port}{options.route_prefix.rstrip('/')}"


def start_service(model: SharedModel, runner_options: RunnerOptions, options: ServeOptions,
                  quiet: bool = True) -> str:
    """Start Serve's HTTP proxy on ``options.host:port`` (or check the one already running on the
    cluster listens there) and deploy the service; return its URL once every replica is ready."""
    import ray
    from ray import serve

    options.check()
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if options.replicas * options.threads > cpus:  # Serve would wait for them for ever
        raise CamdeployError(f"--replicas {options.replicas} x --threads {options.threads}: the replicas would "
                             f"reserve {options.replicas * options.threads} CPUs and the cluster has {cpus}; expected "
                             f"at most {max(1, cpus // options.threads)} replicas of {options.threads} thread(s)")
    if quiet:  # importing ray.serve sets its logger to INFO
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    logging_config = {"log_level": "WARNING", "enable_access_log": False} if quiet else None
    serve.start(http_options={"host": options.host, "port": options.port}, logging_config=logging_config)
    _check_proxy(options)
    serve.run(application(model, runner_options, options), name=options.name, route_prefix=options.route_prefix,
              blocking=False, logging_config=logging_config)
    return http_address(options)


def _check_proxy(options: ServeOptions) -> None:
    """Serve on a cluster keeps the HTTP address it started with: say so when it differs."""
    try:
        from ray.serve.context import _get_global_client

        client: Any = _get_global_client()
        config = client.http_config
        host, port = config.host, config.port
    except Exception:  # an internal API that moved: nothing to compare
        return
    if (host, port) != (options.host, options.port):
        raise CamdeployError(f"--host {options.host} --port {options.port}: Serve already runs on this cluster with "
                             f"its HTTP proxy on {host}:{port}, which cannot change while it runs; use --host {host} "
                             f"--port {port}, or `serve shutdown` first")


def stop_service(name: str) -> None:
    """Delete the application ``name`` (its replicas finish the requests they hold). Serve's proxy
    and controller stay with the cluster: a private one takes them down when it stops."""
    from ray import serve

    serve.delete(name)
