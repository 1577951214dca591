"""Connecting to Ray: an existing cluster, or a private local one with settings for small machines.

``ray`` is imported here, when a session starts, never when camdeploy is imported: the core
install does not need it (the ``ray`` extra brings it).

A private local cluster (no ``--address`` and no ``RAY_ADDRESS``) lives as long as the command and
is set up for a small shared machine or CI rather than with Ray's own defaults:

* an object store of :data:`LOCAL_OBJECT_STORE_MB` MiB (Ray's default is 30% of the memory,
  taken from ``/dev/shm``; a container's 64 MiB ``/dev/shm`` makes Ray fall back to ``/tmp``);
* no dashboard, no usage statistics;
* token authentication (Ray's processes listen on the machine's network interfaces) with a token
  made by this process and kept in its environment: Ray 2.59+ would otherwise write one to
  ``~/.ray/auth_token``; a token the user configured (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
  ``~/.ray/auth_token``) or ``RAY_AUTH_MODE`` is left to Ray;
* Ray's and Ray Data's own log lines and progress bars at warning level (camdeploy prints its own).

For anything else (more memory, a dashboard, several machines) start Ray yourself (``ray start
--head ...``) and pass its address.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import BinaryIO

from camdeploy.errors import CamdeployError

LOCAL_OBJECT_STORE_MB = 512
"""Object store of a private local cluster, in MiB: room for many batches of prepared images in
flight (a 224 x 224 image is 0.6 MB as a tensor)."""
_QUIET_LOGGERS = ("ray", "ray.data", "ray.serve")


def import_ray() -> ModuleType:
    """The ``ray`` module, or a one-line error naming the extra that brings it."""
    try:
        import ray
    except ImportError as exc:
        raise CamdeployError("--engine ray needs Ray: install camdeploy with the 'ray' extra "
                             "(pip install 'camdeploy[ray]')") from exc
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where to run: an existing cluster (``address``) or a private local one."""

    address: str | None = None
    """``host:port`` of a running cluster's head (``ray start --head`` prints it), ``auto`` for one
    started on this machine; default: ``$RAY_ADDRESS`` if set, else a private local cluster."""
    num_cpus: int | None = None
    """CPUs of a private local cluster (default: those this process may use)."""
    object_store_mb: int = LOCAL_OBJECT_STORE_MB
    """Object store of a private local cluster, in MiB."""
    quiet: bool = True
    """Ray's and Ray Data's log lines at warning level, no Ray Data progress bars, and the workers'
    output left in the cluster's logs (not streamed to this process: node crash dumps, actor
    tracebacks and task retries are Ray's to log; camdeploy reports what failed in one line)."""
    driver_log: Path | None = None
    """Where this process's own Ray log lines (its C++ core worker writes them to stderr: notices
    on actor arguments, lost objects, retries) go instead of stderr; None leaves stderr alone (a
    library caller's). The command line gives ``<tmp>/ray/camdeploy-driver-PID.log``."""


@dataclass
class RaySession:
    """The cluster a command runs on."""

    address: str
    """The GCS address of the cluster (what another driver passes as ``--address``)."""
    started: bool
    """Whether this session started the cluster (and shuts it down at the end)."""
    cpus: int
    """CPUs the cluster has now."""


_TOKEN = secrets.token_hex(32)
"""This process's token for the private clusters it starts. One per process: Ray's token loader
keeps the first token it reads."""


def _token_configured() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


@contextlib.contextmanager
def _private_environment() -> Iterator[None]:
    """The environment of a private local cluster (see the module's docstring), restored after.

    Ray 2.59+ turns token authentication on for a local cluster when ``RAY_AUTH_MODE`` is unset,
    and then writes a token to ``~/.ray/auth_token`` unless one is configured: give it this
    process's token instead, in the environment its processes inherit."""
    wanted = {"RAY_USAGE_STATS_ENABLED": "0"}
    # RAY_AUTH_MODE=token may be Ray's own doing, from an earlier private cluster of this process.
    if os.environ.get("RAY_AUTH_MODE", "token").lower() == "token" and not _token_configured():
        wanted["RAY_AUTH_TOKEN"] = _TOKEN
        # Its notice that authentication is on: it is, as the README says.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update({key: value for key, value in wanted.items() if key not in os.environ})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def quiet_ray_data() -> None:
    """Ray Data without progress bars or start-of-run log lines (in this driver, for new datasets)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"


RAY_LINE = re.compile(rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWE] \d+ \d+\] ")
"""A log line of Ray's C++ core (``[2026-12-04 17:18:34,348 E 14156 14156] core_worker.cc:2465: ...``);
fatal ones (``F``) stay on stderr."""


def driver_log_path() -> Path:
    """Where the command line puts this process's Ray log lines: ``<tmp>/ray/camdeploy-driver-PID.log``."""
    return Path(tempfile.gettempdir()) / "ray" / f"camdeploy-driver-{os.getpid()}.log"


def _pump(source: int, stderr: int, log: Path) -> None:
    """Copy what arrives on ``source`` to ``stderr``, except Ray's log lines, which go to ``log``."""
    pending = b""
    sink: list[BinaryIO] = []

    def aside(line: bytes) -> None:
        try:
            if not sink:
                log.parent.mkdir(parents=True, exist_ok=True)
                sink.append(open(log, "ab"))  # noqa: SIM115 - held open while the pump runs
            sink[0].write(line + b"\n")
            sink[0].flush()
        except OSError:
            pass  # no room for Ray's notices: they are not camdeploy's to show

    def show(data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(stderr, data)

    while True:
        try:
            chunk = os.read(source, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            if RAY_LINE.match(line):
                aside(line)
            else:
                show(line + b"\n")
        # A partial line is shown at once (a progress bar has no newline to wait for), unless it may
        # still become one of Ray's.
        if pending and not (pending.startswith(b"[") and (RAY_LINE.match(pending) or len(pending) < 40)):
            show(pending)
            pending = b""
    if pending:
        aside(pending) if RAY_LINE.match(pending) else show(pending)
    for handle in sink:
        handle.close()
    os.close(source)


@contextlib.contextmanager
def ray_lines_to(log: Path) -> Iterator[None]:
    """While the block runs, this process's stderr (file descriptor 2, where Ray's C++ code writes)
    passes through a filter: Ray's own log lines (:data:`RAY_LINE`) go to ``log``, everything else
    to stderr as before, in order."""
    sys.stderr.flush()
    saved = os.dup(2)
    read, write = os.pipe()
    os.set_inheritable(read, False)
    os.dup2(write, 2)
    os.close(write)
    pump = threading.Thread(target=_pump, args=(read, saved, log), name="camdeploy-ray-lines", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the pump drains it and ends
        pump.join(timeout=10)
        os.close(saved)


@contextlib.contextmanager
def _ray_messages_to(log: Path) -> Iterator[None]:
    """Ray's driver also prints the cluster's error notices for this job on stdout (``(raylet) Task
    ... failed. There are infinite retries remaining...``), through ``print_to_stdstream`` of
    ``ray._private.worker`` (whatever ``log_to_driver`` says): send them to ``log`` too. A private
    function of Ray: when it is not there, nothing is changed."""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        yield
        return

    def aside(data: dict, ignore_prefix: bool) -> None:
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a", encoding="utf-8") as handle:
                for line in data.get("lines", []):
                    handle.write(f"({data.get('pid', '?')}) {line}\n")
        except OSError:
            pass

    worker.print_to_stdstream = aside  # type: ignore[assignment]
    try:
        yield
    finally:
        worker.print_to_stdstream = original  # type: ignore[assignment]


@contextlib.contextmanager
def ray_session(options: RayOptions = RayOptions()) -> Iterator[RaySession]:
    """Connect to the cluster ``options`` names, or start a private local one; disconnect (and stop
    the private cluster) at the end. When this process is already connected to Ray (a user's own
    ``ray.init()``), that connection is used as it is and left open."""
    ray = import_ray()
    if options.num_cpus is not None and options.num_cpus < 1:
        raise CamdeployError(f"num_cpus {options.num_cpus}: expected a positive number of CPUs")
    if options.object_store_mb < 75:  # Ray refuses smaller object stores
        raise CamdeployError(f"object_store_mb {options.object_store_mb}: expected at least 75 (MiB)")
    level = logging.WARNING if options.quiet else logging.INFO
    if ray.is_initialized():
        yield _describe(ray, started=False)
        return
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    with contextlib.ExitStack() as stack:
        try:
            if options.driver_log is not None:
                stack.enter_context(ray_lines_to(options.driver_log))
                stack.enter_context(_ray_messages_to(options.driver_log))
            if address:
                ray.init(address=address, logging_level=level, log_to_driver=not options.quiet)
            else:
                from camdeploy.runtime.onnxruntime_runner import usable_cpus

                stack.enter_context(_private_environment())
                ray.init(address="local", num_cpus=options.num_cpus or usable_cpus(),
                         object_store_memory=options.object_store_mb * 1024 * 1024, include_dashboard=False,
                         logging_level=level, log_to_driver=not options.quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"--address {address}" if address else "a local Ray cluster"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CamdeployError(f"{where}: cannot start or reach Ray ({first})") from exc
        try:
            if options.quiet:
                quiet_ray_data()
            yield _describe(ray, started=not address)
        finally:
            ray.shutdown()


def _describe(ray: ModuleType, started: bool) -> RaySession:
    context = ray.get_runtime_context()
    return RaySession(address=context.gcs_address, started=started,
                      cpus=int(ray.cluster_resources().get("CPU", 0)))
