"""Staleness and budget verdicts for a running training, on the daemon's own monotonic clock."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlsm.machine.store import read_json_object

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
            expect = beat.get("expect_next_within")
            self.expect_next_within = float(expect) if isinstance(expect, int | float) else None
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


def read_heartbeat(run_dir: Path) -> dict[str, Any] | None:
    """The heartbeat document, or None when absent or mid-replace (never raises)."""
    return read_json_object(run_dir / "heartbeat.json")


def output_size(run_dir: Path) -> int:
    """Combined size of the training's stdout and stderr logs."""
    total = 0
    for name in ("stdout.log", "stderr.log"):
        with contextlib.suppress(OSError):
            total += (run_dir / name).stat().st_size
    return total
