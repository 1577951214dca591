"""A run on a cluster that stops making progress says so and stops, instead of waiting for ever.

Ray Data waits as long as it takes for resources: when nodes leave and an actor that must be
restarted (or a reading task) finds no CPU left, the run would hang in silence. :class:`StallWatch`
times the arrivals of batches on the driver; when none has come for :meth:`StallWatch.limit`
seconds, a watchdog thread asks ``diagnose`` why (what is missing, what Ray reports) and stops the
main thread's wait with that reason: :class:`Stalled`, which ``run --engine ray`` turns into one
line and exit 1, with every finished line kept for ``--resume``.

The limit: a fixed number of seconds when given (``--stall-timeout``; 0 waits for ever); otherwise
:data:`START_S` until the first batch (actors start, the model loads, an autoscaler may be adding
nodes), then :data:`FACTOR` times the longest interval between batches seen so far, at least
:data:`FLOOR_S`.

The watchdog interrupts the main thread with a signal (:data:`SIGNAL`, whose handler this watch
installs while it runs), because Ray Data's iterator blocks there; a watch used outside the main
thread cannot interrupt it and only ever times.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from camdeploy.errors import CamdeployError

START_S = 600.0
"""Seconds allowed for the first batch."""
FACTOR = 20.0
"""Multiple of the longest interval seen between batches that counts as a stall."""
FLOOR_S = 120.0
"""The shortest limit sized from intervals (a batch of a few milliseconds would make one of seconds)."""
SIGNAL = signal.SIGUSR1
"""How the watchdog stops the main thread's wait (Ray uses neither SIGUSR1 nor its handler)."""

T = TypeVar("T")


class Stalled(CamdeployError):
    """No batch arrived within the limit; the message says why, as far as the cluster tells."""


class _Interrupt(BaseException):
    """Raised in the main thread by the signal handler: a BaseException, so that no ``except
    Exception`` in Ray's code on the way catches it."""


class StallWatch:
    """Time the batches of an iterator and stop waiting on it after a stall (see the module).

    Args:
        timeout: seconds without a batch that count as a stall; None sizes it from the intervals
            seen; 0 never stops.
        diagnose: ``(seconds waited, limit) -> reason``, called on the watchdog thread (it may ask
            the cluster; an exception it raises becomes part of the reason).
        clock: for tests.
    """

    def __init__(self, timeout: float | None, diagnose: Callable[[float, float], str],
                 clock: Callable[[], float] = time.monotonic, poll_s: float = 0.5):
        if timeout is not None and timeout < 0:
            raise CamdeployError(f"--stall-timeout {timeout:g}: expected seconds >= 0 (0 waits for ever)")
        self.timeout, self.diagnose, self.clock, self.poll_s = timeout, diagnose, clock, poll_s
        self.longest = 0.0
        """The longest interval between two batches so far, in seconds."""
        self.batches = 0
        self.reason: str | None = None
        self._since = clock()
        self._waiting = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: object = None
        self._main = threading.current_thread() is threading.main_thread()

    def limit(self) -> float:
        """Seconds without a batch that count as a stall now (0: none)."""
        if self.timeout is not None:
            return self.timeout
        if self.batches < 2:
            return START_S
        return max(FLOOR_S, FACTOR * self.longest)

    def overdue(self) -> float | None:
        """Seconds waited when the wait now exceeds the limit, else None."""
        limit = self.limit()
        waited = self.clock() - self._since
        return waited if self._waiting and limit > 0 and waited > limit else None

    def _handle(self, signum: int, frame: object) -> None:
        if self.reason is not None and self._waiting:
            raise _Interrupt

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            waited = self.overdue()
            if waited is None or self.reason is not None:
                continue
            limit = self.limit()
            try:
                reason = self.diagnose(waited, limit)
            except Exception as exc:  # the cluster could not be asked: say so, still stop
                reason = (f"no batch for {waited:.0f} s (stall limit {limit:.0f} s), and the cluster could not be "
                          f"asked why ({type(exc).__name__}: {exc})")
            self.reason = reason
            if self._main:
                signal.pthread_kill(threading.main_thread().ident or 0, SIGNAL)
            return

    def __enter__(self) -> StallWatch:
        if self.timeout == 0:
            return self
        if self._main:
            self._previous = signal.signal(SIGNAL, self._handle)
        self._since = self.clock()
        self._thread = threading.Thread(target=self._watch, name="camdeploy-stall-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._main and self._previous is not None:
            signal.signal(SIGNAL, self._previous)  # type: ignore[arg-type]

    def iterate(self, items: Iterator[T]) -> Iterator[T]:
        """``items``, timed; raises :class:`Stalled` (with the reason) when a wait exceeds the limit."""
        try:
            while True:
                self._since = self.clock()
                self._waiting = True
                try:
                    if self.reason is not None:
                        raise _Interrupt
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    self._waiting = False
                interval = self.clock() - self._since
                if self.batches >= 1:  # the first batch's wait is start-up, not an interval
                    self.longest = max(self.longest, interval)
                self.batches += 1
                if self.reason is not None:  # it arrived as the watchdog gave up: stop all the same
                    raise _Interrupt
                yield item
        except _Interrupt:
            raise Stalled(self.reason or "stalled") from None
