"""Staleness verdicts on an injected clock: heartbeats, expect_next_within, the output fallback."""

from __future__ import annotations

from mlsm.handlers.sentinel import HeartbeatWatch


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def watch(clock: Clock, **kw: float) -> HeartbeatWatch:
    args = {"heartbeat_timeout": 10.0, "startup_grace": 30.0, "output_timeout": 60.0,
            "run_timeout": 0.0, **kw}
    return HeartbeatWatch(clock=clock, **args)


def test_fresh_beats_are_healthy_and_stale_after_timeout() -> None:
    c = Clock()
    w = watch(c)
    assert w.observe({"seq": 1}, 0) is None
    c.t += 9
    assert w.observe({"seq": 2}, 0) is None
    c.t += 10
    assert w.observe({"seq": 2}, 0) is None
    c.t += 0.5
    v = w.observe({"seq": 2}, 0)
    assert v is not None and v.kill and v.reason == "stale_heartbeat"
    assert 10 < v.seconds < 11


def test_expect_next_within_extends_the_limit() -> None:
    c = Clock()
    w = watch(c)
    w.observe({"seq": 1, "expect_next_within": 100}, 0)
    c.t += 90
    assert w.observe({"seq": 1, "expect_next_within": 100}, 0) is None
    c.t += 11
    assert w.observe({"seq": 1}, 0) is not None
    w.observe({"seq": 2}, 0)  # the next beat without it restores the normal limit
    c.t += 11
    assert w.observe({"seq": 2}, 0) is not None


def test_startup_grace_before_first_beat() -> None:
    c = Clock()
    w = watch(c, output_timeout=5.0)
    c.t += 29
    assert w.observe(None, 0) is None
    c.t += 2
    v = w.observe(None, 0)
    assert v is not None and v.reason == "stale_heartbeat" and "no heartbeat ever" in v.detail


def test_output_growth_fallback_warns_once_then_judges_by_logs() -> None:
    c = Clock()
    w = watch(c)
    size = 0
    for _ in range(4):
        c.t += 20
        size += 100
        v = w.observe(None, size)
        assert v is None or (not v.kill and "hooks.heartbeat" in v.detail)
    warnings = w.warned
    assert warnings
    c.t += 61
    v = w.observe(None, size)
    assert v is not None and v.kill


def test_run_timeout() -> None:
    c = Clock()
    w = watch(c, run_timeout=50.0)
    for _ in range(6):
        c.t += 9
        v = w.observe({"seq": c.t}, 0)
    assert v is not None and v.reason == "run_timeout"
