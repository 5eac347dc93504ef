"""Staleness and budget verdicts for a running training, on the daemon's own monotonic clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from mlsm.hooks.rundir import finite

NO_BEATS_HINT = (
    "training has not written a heartbeat; falling back to log growth. Add "
    "`from mlsm import hooks` and call `hooks.heartbeat(step)` or `hooks.log(...)` each step"
)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Why a training must be killed (reason is the exit.json reason) or a warning."""

    reason: str  # "stale_heartbeat" | "run_timeout" | "warn_no_heartbeat"
    seconds: float
    detail: str

    @property
    def kill(self) -> bool:
        return not self.reason.startswith("warn_")


@dataclasses.dataclass
class HeartbeatWatch:
    """Tracks the last change of the heartbeat `seq` and of log sizes; decides staleness."""

    heartbeat_timeout: float
    startup_grace: float
    output_timeout: float
    run_timeout: float
    clock: Callable[[], float]
    started: float = dataclasses.field(init=False)
    last_seq: Any = None
    last_beat: float = dataclasses.field(init=False)
    expect_next_within: float | None = None
    last_size: int = -1
    last_growth: float = dataclasses.field(init=False)
    warned: bool = False

    def __post_init__(self) -> None:
        self.started = self.last_beat = self.last_growth = self.clock()

    def observe(self, beat: dict[str, Any] | None, output_size: int) -> Verdict | None:
        """Feed the latest heartbeat document and log size; a Verdict when action is due."""
        now = self.clock()
        if beat is not None and beat.get("seq") != self.last_seq:
            self.last_seq = beat.get("seq")
            self.last_beat = now
            self.expect_next_within = finite(beat.get("expect_next_within"))
        if output_size != self.last_size:
            if self.last_size >= 0:  # the first reading is a baseline, not growth
                self.last_growth = now
            self.last_size = output_size
        if self.run_timeout and now - self.started > self.run_timeout:
            return Verdict("run_timeout", now - self.started,
                           f"training ran longer than --run-timeout {self.run_timeout:g}s")
        if self.last_seq is None:
            return self._without_beats(now)
        limit = max(self.heartbeat_timeout, self.expect_next_within or 0.0)
        quiet = now - self.last_beat
        if quiet > limit:
            return Verdict("stale_heartbeat", quiet,
                           f"no heartbeat for {quiet:.1f}s (limit {limit:g}s)")
        return None

    def _without_beats(self, now: float) -> Verdict | None:
        if now - self.started <= self.startup_grace:
            return None
        quiet = now - self.last_growth
        if quiet > self.output_timeout:
            return Verdict("stale_heartbeat", quiet,
                           f"no heartbeat ever and no log output for {quiet:.1f}s "
                           f"(limit {self.output_timeout:g}s)")
        if not self.warned:
            self.warned = True
            return Verdict("warn_no_heartbeat", now - self.started, NO_BEATS_HINT)
        return None

