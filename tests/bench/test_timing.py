"""The timing logic of `bench`, with a fake clock: no dependence on machine speed."""

import pytest

from camdeploy.bench.timing import LatencyStats, time_calls


class FakeClock:
    """Advances by the next scripted duration every time the timed function runs."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = list(durations)
        self.calls = 0

    def __call__(self):
        return self.now

    def work(self):
        self.calls += 1
        self.now += self.durations.pop(0)


def test_warmup_is_not_timed_and_repeats_are():
    clock = FakeClock([100.0, 100.0, 0.010, 0.020, 0.030])
    cpu = FakeClock([])
    timings = time_calls(clock.work, warmup=2, repeats=3, clock=clock, cpu_clock=cpu)
    assert clock.calls == 5
    assert timings.wall == pytest.approx([0.010, 0.020, 0.030])
    assert timings.cpu == [0.0, 0.0, 0.0]  # the CPU clock is read around each timed call too


def test_cpu_time_is_reported_beside_wall_time():
    wall = [0.001 * v for v in (4, 2, 3)]
    stats = LatencyStats.from_samples(wall, batch=2, cpu=[0.006, 0.004, 0.005])
    assert stats.cpu_ms == pytest.approx(5.0) and stats.cpu_ms_per_image == pytest.approx(2.5)
    assert stats.min_ms == pytest.approx(2.0) and stats.as_dict()["cpu_ms_per_image"] == pytest.approx(2.5)
    assert LatencyStats.from_samples(wall, batch=2).cpu_ms is None


def test_statistics():
    samples = [0.001 * v for v in range(1, 101)]  # 1 .. 100 ms
    stats = LatencyStats.from_samples(samples, batch=4)
    assert stats.median_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert (stats.min_ms, stats.max_ms) == (pytest.approx(1.0), pytest.approx(100.0))
    assert stats.ms_per_image == pytest.approx(50.5 / 4)
    assert stats.images_per_second == pytest.approx(4000 / 50.5)
    assert stats.as_dict()["repeats"] == 100


def test_bad_repeats_are_refused():
    with pytest.raises(ValueError, match="repeats 0 must be >= 1"):
        time_calls(lambda: None, warmup=0, repeats=0)


def test_interleaved_timing_takes_turns():
    from camdeploy.bench.timing import time_interleaved

    order, now = [], [0.0]

    def clock():
        return now[0]

    def work(name, seconds):
        def fn():
            order.append(name)
            now[0] += seconds
        return fn

    slept = []
    timings = time_interleaved({"a": work("a", 1.0), "b": work("b", 3.0), "c": work("c", 2.0)}, warmup=1,
                               repeats=40, clock=clock, cpu_clock=clock, settle_after={"b"}, sleep=slept.append)
    assert order[:3] == ["a", "b", "c"]  # the warm-up
    turns = [order[i:i + 3] for i in range(3, len(order), 3)]
    assert len(turns) == 40 and all(sorted(turn) == ["a", "b", "c"] for turn in turns)  # every repeat: each once
    assert {turn[0] for turn in turns} == {"a", "b", "c"}  # the order changes: none always follows another
    assert slept == [0.05] * 40  # the untimed pause after each timed call of "b"
    assert {name: set(t.wall) for name, t in timings.items()} == {"a": {1.0}, "b": {3.0}, "c": {2.0}}
    assert timings["b"].cpu == [3.0] * 40
    with pytest.raises(ValueError):
        time_interleaved({"a": lambda: None}, warmup=0, repeats=0)
