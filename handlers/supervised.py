"""What agent steps and trainings share: a launched run, its watcher thread, and its owner."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mlsm.handlers.launchers.base import Handle, Launched, Launcher
from mlsm.machine.core.events import Event


class RunOwner(Protocol):
    """Who owns a run's kills (the supervisor): a run reports, it never kills by itself."""

    def kill_run(self, run: SupervisedRun, reason: str, detail: str,
                 seconds: float | None = None) -> None:
        """Kill `run` now for `reason` (a stale heartbeat, a timeout); blocks until done."""

    def cleanup(self, run: SupervisedRun) -> int:
        """`run`'s main process has ended: kill what it left behind; returns how many."""


class SupervisedRun:
    """One launched run (an agent step or a training) and the thread that waits for it."""

    kind = "run"
    POLL_S = 0.25

    def __init__(self, launcher: Launcher, run_dir: Path, emit: Callable[[Event], None],
                 log: Any, clock: Callable[[], float] = time.monotonic,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.launcher, self.run_dir, self.emit, self.log = launcher, run_dir, emit, log
        self.clock, self.stopping = clock, stopping
        self.launched: Launched | None = None
        self.owner: RunOwner | None = None
        self.killing = False
        self._abandon = threading.Event()

    @property
    def handle(self) -> Handle | None:
        return None if self.launched is None else self.launched.handle

    @property
    def run_id(self) -> str | None:
        return None if self.launched is None else self.launched.handle.get("run_id")

    def abandon(self) -> None:
        """Stop watching without reporting (STOP or shutdown killed it; the engine knows)."""
        self._abandon.set()

    @property
    def abandoned(self) -> bool:
        return self._abandon.is_set()

    def pause(self, seconds: float) -> None:
        """Sleep, cut short when the run is abandoned."""
        self._abandon.wait(seconds)

    def start_watching(self, name: str) -> None:
        threading.Thread(target=self._watch, name=name, daemon=True).start()

    def _watch(self) -> None:
        raise NotImplementedError

    def kill_for(self, reason: str, detail: str, seconds: float | None = None) -> None:
        """Ask the owner to kill this run (the owner does; this run only reports why)."""
        self.killing = True
        if self.owner is not None:
            self.owner.kill_run(self, reason, detail, seconds)

    def cleanup(self) -> int:
        return 0 if self.owner is None else self.owner.cleanup(self)
