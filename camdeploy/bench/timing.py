"""Timing with warm-up and repeats, and the statistics we report; the clock is injectable so that
the logic is tested without depending on machine speed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def time_calls(fn: Callable[[], object], *, warmup: int, repeats: int,
               clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times; return each timed call's seconds."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats {repeats} must be >= 1 and warmup {warmup} >= 0")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = clock()
        fn()
        samples.append(clock() - start)
    return samples


def time_interleaved(calls: dict[str, Callable[[], object]], *, warmup: int, repeats: int,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Like :func:`time_calls` for several functions, taking turns: repeat ``r`` of every function
    runs before repeat ``r + 1`` of any, so that a slow spell of a shared machine hits all alike
    and their ratios stay meaningful."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats {repeats} must be >= 1 and warmup {warmup} >= 0")
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = clock()
            fn()
            samples[name].append(clock() - start)
    return samples


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

    @property
    def ms_per_image(self) -> float:
        return self.median_ms / self.batch

    @property
    def images_per_second(self) -> float:
        return 1000.0 * self.batch / self.median_ms if self.median_ms > 0 else float("inf")

    @classmethod
    def from_samples(cls, samples: list[float], batch: int) -> LatencyStats:
        ms = 1000.0 * np.asarray(samples, dtype=np.float64)
        return cls(batch, len(samples), float(np.median(ms)), float(np.percentile(ms, 90)),
                   float(np.percentile(ms, 99)), float(ms.min()), float(ms.max()))

    def as_dict(self) -> dict[str, float]:
        return {"batch": self.batch, "repeats": self.repeats, "median_ms": self.median_ms, "p90_ms": self.p90_ms,
                "p99_ms": self.p99_ms, "min_ms": self.min_ms, "max_ms": self.max_ms,
                "ms_per_image": self.ms_per_image, "images_per_second": self.images_per_second}
