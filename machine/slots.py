"""Training slots shared by the experiments of one daemon (`--max-parallel`)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class TrainingSlots:
    """At most `limit` owners train at once; a release wakes the owners that waited."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._held: set[object] = set()
        self._waiting: dict[object, Callable[[], None]] = {}

    def try_acquire(self, owner: object, wake: Callable[[], None]) -> bool:
        """Take a slot (True), or queue `wake` to be called when one frees up (False)."""
        with self._lock:
            if owner in self._held or self.limit <= 0 or len(self._held) < self.limit:
                self._held.add(owner)
                self._waiting.pop(owner, None)
                return True
            self._waiting[owner] = wake
            return False

    def force(self, owner: object) -> None:
        """Hold a slot regardless (a training re-attached after a restart is already running)."""
        with self._lock:
            self._held.add(owner)

    def release(self, owner: object) -> None:
        with self._lock:
            if owner not in self._held:
                return
            self._held.discard(owner)
            waiting = list(self._waiting.values())
        for wake in waiting:
            wake()

    @property
    def in_use(self) -> int:
        return len(self._held)
