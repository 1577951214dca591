"""One writer per output: an exclusive advisory lock held for as long as a command writes there.

``camdeploy run`` (both engines, ``--resume`` and ``--overwrite`` alike) holds the lock of its
``--out`` folder (the file ``.camdeploy.lock`` inside it); ``export``, ``calibrate``, ``convert``
and ``triton`` hold the lock of the file or model folder they write (``.NAME.lock`` beside it).
A second writer is refused at once, before it changes anything, with one line naming the holder:
its process id, host, since when and its command.

The lock is ``flock(2)`` on an open file: the kernel releases it when the holding process exits,
however it exits (a crash or SIGKILL included), so a lock is never stale; the holder's details
written in the file are only read to explain a refusal. The lock file is removed by its holder when
it is done (a writer that opened the removed file notices and opens the new one, so two writers can
never each hold a different file). The same process may take a lock it already holds (it counts).

Network file systems: on Linux, an NFS client turns ``flock`` into a whole-file POSIX lock on the
server, so writers on different machines exclude each other when the server runs a lock manager
(NFSv4, or NFSv3 with lockd); a mount with ``nolock`` or ``local_lock=all`` only excludes writers on
the same client. On NFS a crashed client's lock is freed when the server reclaims its lease (about
90 s on NFSv4), not at once.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from camdeploy.errors import CamdeployError

FOLDER_LOCK = ".camdeploy.lock"
"""The lock file of a run folder, inside it."""

_held: dict[str, tuple[int, int]] = {}
"""Lock files this process holds: path -> (fd, count)."""
_guard = threading.Lock()


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as written in its lock file."""

    pid: int
    host: str
    since: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.since}: {self.command}"


def folder_lock(folder: Path) -> Path:
    """The lock file of an output folder."""
    return Path(folder) / FOLDER_LOCK


def file_lock(target: Path) -> Path:
    """The lock file of an output file or model folder: ``.NAME.lock`` beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _command() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    words = ["camdeploy" if name in ("camdeploy", "__main__.py") else name, *sys.argv[1:3]]
    return " ".join(words)[:200]


def _read_holder(fd: int) -> Holder | None:
    try:
        data = os.pread(fd, 4096, 0)
        info = json.loads(data.decode("utf-8"))
        return Holder(int(info["pid"]), str(info["host"]), str(info["since"]), str(info["command"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _acquire(path: Path, label: str) -> int:
    """Open and lock ``path``; refuse (one line, naming the holder) when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                for _ in range(20):  # the holder may be writing its details right now
                    holder = _read_holder(fd)
                    if holder is not None:
                        break
                    threading.Event().wait(0.01)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            who = holder.describe() if holder else "a process whose details could not be read"
            raise CamdeployError(f"{label}: another camdeploy is writing there ({who}); wait until it ends or stop "
                                 f"it, or choose another {label.split()[0]}") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # its holder removed it as we opened it: take the new one
    since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since, "command": _command()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, (info + "\n").encode("utf-8"), 0)
    return fd


@contextlib.contextmanager
def exclusive(path: Path, label: str) -> Iterator[None]:
    """Hold the lock file ``path`` (see the module's docstring) for the ``with`` block; ``label``
    names the output in a refusal (``--out DIR``). Failing to create the lock file (a read-only
    folder) is an error naming ``label``."""
    path = Path(os.path.abspath(path))
    key = str(path)
    with _guard:
        if key in _held:
            fd, count = _held[key]
            _held[key] = (fd, count + 1)
        else:
            try:
                fd = _acquire(path, label)
            except OSError as exc:
                raise CamdeployError(f"{label}: cannot write there ({exc.strerror or exc})") from exc
            _held[key] = (fd, 1)
    try:
        yield
    finally:
        with _guard:
            fd, count = _held[key]
            if count > 1:
                _held[key] = (fd, count - 1)
            else:
                del _held[key]
                with contextlib.suppress(OSError):
                    os.unlink(path)  # while still locked: a writer waiting on this file will see it gone
                os.close(fd)


def hold_folder(folder: Path, label: str | None = None) -> contextlib.AbstractContextManager[None]:
    """:func:`exclusive` on an output folder's lock (the folder is created first)."""
    folder = Path(folder)
    label = label or f"--out {folder}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CamdeployError(f"{label}: cannot write there ({exc.strerror or exc})") from exc
    return exclusive(folder_lock(folder), label)


def hold_file(target: Path, label: str | None = None) -> contextlib.AbstractContextManager[None]:
    """:func:`exclusive` on the lock of an output file or model folder (its parent is created first)."""
    target = Path(target)
    label = label or f"--output {target}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CamdeployError(f"{label}: cannot write there ({exc.strerror or exc})") from exc
    return exclusive(file_lock(target), label)
