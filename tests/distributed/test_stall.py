"""The stall watch on its own (no Ray): how long it waits, and that it stops a wait blocked in the
main thread with the diagnosis."""

from __future__ import annotations

import threading
import time

import pytest

from camdeploy.distributed.stall import FACTOR, FLOOR_S, START_S, Stalled, StallWatch
from camdeploy.errors import CamdeployError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_is_sized_from_the_intervals_seen():
    clock = Clock()
    watch = StallWatch(None, lambda waited, limit: "", clock=clock)

    def batches():
        for step in (30.0, 2.0, 9.0, 1.0):  # start-up, then intervals of 2, 9 and 1 s
            clock.now += step
            yield step

    seen = []
    for _ in watch.iterate(batches()):
        seen.append(watch.limit())
    assert seen == [START_S, FLOOR_S, FACTOR * 9.0, FACTOR * 9.0]  # 20 x 2 s is under the floor
    assert watch.longest == 9.0  # the 30 s start-up is not an interval
    assert StallWatch(45.0, lambda waited, limit: "").limit() == 45.0
    assert StallWatch(0, lambda waited, limit: "").limit() == 0  # never
    with pytest.raises(CamdeployError, match=r"--stall-timeout -1: expected seconds >= 0"):
        StallWatch(-1, lambda waited, limit: "")


def test_a_wait_blocked_in_the_main_thread_is_stopped_with_the_reason():
    """The iterator blocks for ever in the main thread (as Ray Data's does when the cluster lacks
    resources): the watchdog asks why and interrupts the wait with that reason."""
    blocked = threading.Event()
    asked = []

    def batches():
        yield 1
        yield 2
        blocked.wait()  # never set: a hang
        yield 3

    def diagnose(waited, limit):
        asked.append((waited, limit))
        return "the cluster has 0 of 2 CPUs"

    got = []
    started = time.monotonic()
    with pytest.raises(Stalled, match=r"^the cluster has 0 of 2 CPUs$"), \
            StallWatch(0.5, diagnose, poll_s=0.05) as watch:
        for item in watch.iterate(batches()):
            got.append(item)
    assert got == [1, 2] and len(asked) == 1 and asked[0][0] > 0.5 and asked[0][1] == 0.5
    assert time.monotonic() - started < 10


def test_a_diagnosis_that_fails_still_stops_the_wait():
    def batches():
        threading.Event().wait()
        yield 1

    def diagnose(waited, limit):
        raise ConnectionError("GCS unreachable")

    with pytest.raises(Stalled, match=r"the cluster could not be asked why \(ConnectionError: GCS unreachable\)"), \
            StallWatch(0.3, diagnose, poll_s=0.05) as watch:
        for _ in watch.iterate(batches()):
            pass


def test_ctrl_c_is_still_ctrl_c():
    import signal

    main = threading.main_thread().ident

    def batches():
        threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT)).start()
        threading.Event().wait(30)
        yield 1

    with pytest.raises(KeyboardInterrupt), StallWatch(30, lambda waited, limit: "stalled", poll_s=0.05) as watch:
        for _ in watch.iterate(batches()):
            pass
