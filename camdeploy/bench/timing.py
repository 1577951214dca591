"""Timing with warm-up and repeats, and the statistics we report; the clocks are injectable so that
the logic is tested without depending on machine speed.

Every call is timed twice: wall-clock time (``time.perf_counter``) and this process's CPU time
(``time.process_time``, all its threads). On a shared machine, other tenants slow the wall clock of
a call but barely its CPU time, so CPU time per image is the steadier figure for comparing two
rows; wall-clock minimum and median are what a user waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np

Clock = Callable[[], float]


@dataclass
class Timings:
    """Seconds per timed call: wall-clock and process CPU time."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def _timed(fn: Callable[[], object], clock: Clock, cpu_clock: Clock, into: Timings) -> None:
    start, cpu_start = clock(), cpu_clock()
    fn()
    into.wall.append(clock() - start)
    into.cpu.append(cpu_clock() - cpu_start)


def _check(warmup: int, repeats: int) -> None:
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats {repeats} must be >= 1 and warmup {warmup} >= 0")


def time_calls(fn: Callable[[], object], *, warmup: int, repeats: int, clock: Clock = time.perf_counter,
               cpu_clock: Clock = time.process_time) -> Timings:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times, timing each call."""
    _check(warmup, repeats)
    for _ in range(warmup):
        fn()
    timings = Timings()
    for _ in range(repeats):
        _timed(fn, clock, cpu_clock, timings)
    return timings


def time_interleaved(calls: dict[str, Callable[[], object]], *, warmup: int, repeats: int,
                     clock: Clock = time.perf_counter, cpu_clock: Clock = time.process_time,
                     settle_after: Collection[str] = (), settle_seconds: float = 0.05,
                     sleep: Callable[[float], object] = time.sleep, seed: int = 0) -> dict[str, Timings]:
    """Like :func:`time_calls` for several functions, taking turns: repeat ``r`` of every function
    runs before repeat ``r + 1`` of any, so that a slow spell of a shared machine hits all alike
    and their ratios stay meaningful.

    What a call leaves behind must not land on one function only: the order within a repeat is
    shuffled (seeded by ``seed``), so that no function always follows the same one, and after a
    function of ``settle_after`` the next waits ``settle_seconds``, untimed: PyTorch's OpenMP
    threads keep spinning for milliseconds after a call returns, and would slow and bill whatever
    ran next.
    """
    _check(warmup, repeats)
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    timings = {name: Timings() for name in calls}
    names = list(calls)
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        for index in rng.permutation(len(names)):
            name = names[index]
            _timed(calls[name], clock, cpu_clock, timings[name])
            if name in settle_after:
                sleep(settle_seconds)
    return timings


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of per-call latencies for calls of ``batch`` images; times in milliseconds."""

    batch: int
    repeats: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    cpu_ms: float | None = None
    """Median process CPU time per call (all threads), when measured."""

    @property
    def ms_per_image(self) -> float:
        return self.median_ms / self.batch

    @property
    def cpu_ms_per_image(self) -> float | None:
        return None if self.cpu_ms is None else self.cpu_ms / self.batch

    @property
    def images_per_second(self) -> float:
        return 1000.0 * self.batch / self.median_ms if self.median_ms > 0 else float("inf")

    @classmethod
    def from_samples(cls, samples: list[float], batch: int, cpu: list[float] | None = None) -> LatencyStats:
        ms = 1000.0 * np.asarray(samples, dtype=np.float64)
        cpu_ms = float(np.median(1000.0 * np.asarray(cpu, dtype=np.float64))) if cpu else None
        return cls(batch, len(samples), float(np.median(ms)), float(np.percentile(ms, 90)),
                   float(np.percentile(ms, 99)), float(ms.min()), float(ms.max()), cpu_ms)

    @classmethod
    def from_timings(cls, timings: Timings, batch: int, per: float = 1.0) -> LatencyStats:
        """Statistics of ``timings``, each sample scaled by ``per`` (e.g. from a run to a batch)."""
        return cls.from_samples([t * per for t in timings.wall], batch, [t * per for t in timings.cpu])

    def as_dict(self) -> dict[str, float | None]:
        return {"batch": self.batch, "repeats": self.repeats, "median_ms": self.median_ms, "p90_ms": self.p90_ms,
                "p99_ms": self.p99_ms, "min_ms": self.min_ms, "max_ms": self.max_ms,
                "ms_per_image": self.ms_per_image, "images_per_second": self.images_per_second,
                "cpu_ms": self.cpu_ms, "cpu_ms_per_image": self.cpu_ms_per_image}
