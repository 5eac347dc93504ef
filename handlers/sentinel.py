"""Staleness and budget verdicts for a running training, on the daemon's own monotonic clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from mlsm.hooks.rundir import finite, whole

MAX_RANKS = 1 << 16  # a `world` beyond this in a heartbeat is not believed

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
class Beat:
    """One rank's last `seq`, when it changed (daemon clock), and its `expect_next_within`."""

    seq: Any
    at: float
    expect: float | None


@dataclasses.dataclass
class HeartbeatWatch:
    """Tracks the last change of every rank's heartbeat `seq` and of log sizes; decides
    staleness. A rank the beats' `world` names but that never beat counts from the start."""

    heartbeat_timeout: float
    startup_grace: float
    output_timeout: float
    run_timeout: float
    clock: Callable[[], float]
    started: float = dataclasses.field(init=False)
    beats: dict[int, Beat] = dataclasses.field(default_factory=dict)  # by rank
    world: int = 1
    last_size: int = -1
    last_growth: float = dataclasses.field(init=False)
    warned: bool = False

    def __post_init__(self) -> None:
        self.started = self.last_growth = self.clock()

    def observe(self, beat: dict[str, Any] | None, output_size: int) -> Verdict | None:
        """Feed the latest heartbeat document and log size; a Verdict when action is due."""
        return self.observe_ranks({} if beat is None else {0: beat}, output_size)

    def observe_ranks(self, beats: Mapping[int, dict[str, Any]],
                      output_size: int) -> Verdict | None:
        """Feed every rank's latest heartbeat and the log size; a Verdict when action is due."""
        now = self.clock()
        for rank, beat in beats.items():
            self._seen(rank, beat, now)
        if output_size != self.last_size:
            if self.last_size >= 0:  # the first reading is a baseline, not growth
                self.last_growth = now
            self.last_size = output_size
        if self.run_timeout and now - self.started > self.run_timeout:
            return Verdict("run_timeout", now - self.started,
                           f"training ran longer than --run-timeout {self.run_timeout:g}s")
        if not self.beats:
            return self._without_beats(now)
        return self._stale(now)

    def _seen(self, rank: int, beat: dict[str, Any], now: float) -> None:
        world = whole(beat.get("world"))
        if world is not None and 1 < world <= MAX_RANKS:
            self.world = max(self.world, world)
        last = self.beats.get(rank)
        if last is None or beat.get("seq") != last.seq:
            self.beats[rank] = Beat(beat.get("seq"), now, finite(beat.get("expect_next_within")))

    def _stale(self, now: float) -> Verdict | None:
        """The rank that went silent first, once any rank is past its limit."""
        due: list[tuple[float, int, float]] = []  # (when its limit ran out, rank, limit)
        for rank in set(range(self.world)) | set(self.beats):
            beat = self.beats.get(rank)
            if beat is None:  # named by the world, never beat: judged from the start
                limit, since = max(self.heartbeat_timeout, self.startup_grace), self.started
            else:
                limit, since = max(self.heartbeat_timeout, beat.expect or 0.0), beat.at
            if now - since > limit:
                due.append((since + limit, rank, limit))
        if not due:
            return None
        _, rank, limit = min(due)
        since = self.beats[rank].at if rank in self.beats else self.started
        quiet = now - since
        who = f"rank {rank} went silent first: " if len(self.beats) > 1 or self.world > 1 else ""
        return Verdict("stale_heartbeat", quiet,
                       f"{who}no heartbeat for {quiet:.1f}s (limit {limit:g}s)")

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

