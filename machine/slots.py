"""Training slots shared by the experiments of one daemon: `--max-parallel`, and the GPU pool."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from mlsm.handlers import gpus
from mlsm.machine.core.config import Config


class TrainingSlots:
    """At most `limit` owners train at once; with device groups (`0,1` …) each training holds
    a group of its own, so at most one per group. A release wakes the owners that waited."""

    def __init__(self, limit: int, groups: Sequence[str] = ()) -> None:
        self._limit = limit
        self.groups = list(groups)
        self._lock = threading.Lock()
        self._held: dict[object, str | None] = {}  # owner → its group (None: no GPUs)
        self._waiting: dict[object, Callable[[], None]] = {}

    @property
    def limit(self) -> int:
        """Trainings at once: --max-parallel, and at most one per device group (0: no limit)."""
        if not self.groups:
            return self._limit
        return min(self._limit, len(self.groups)) if self._limit > 0 else len(self.groups)

    def use_groups(self, groups: Sequence[str]) -> None:
        """Hand out these device groups from now on (the first experiment's settings win)."""
        with self._lock:
            if not self.groups:
                self.groups = list(groups)

    def try_acquire(self, owner: object, wake: Callable[[], None]) -> bool:
        """Take a slot (True), or queue `wake` to be called when one frees up (False)."""
        with self._lock:
            if owner in self._held:
                return True
            group = self._free_group()
            room = self.limit <= 0 or len(self._held) < self.limit
            if room and (group is not None or not self.groups):
                self._held[owner] = group
                self._waiting.pop(owner, None)
                return True
            self._waiting[owner] = wake
            return False

    def _free_group(self) -> str | None:
        """The first group none of whose devices a holder uses."""
        taken = {d for group in self._held.values() if group for d in group.split(",")}
        return next((g for g in self.groups if taken.isdisjoint(g.split(","))), None)

    def force(self, owner: object, devices: str | None = None) -> None:
        """Hold a slot regardless: a training re-attached after a restart is already running
        (on the devices it recorded, which nobody else may be handed now)."""
        with self._lock:
            if devices is not None or owner not in self._held:
                self._held[owner] = devices

    def devices(self, owner: object) -> str | None:
        """The device group `owner` holds (its CUDA_VISIBLE_DEVICES); None without GPUs."""
        with self._lock:
            return self._held.get(owner)

    def release(self, owner: object) -> None:
        with self._lock:
            if owner not in self._held:
                return
            del self._held[owner]
            waiting = list(self._waiting.values())
        for wake in waiting:
            wake()

    def waiting_sentence(self) -> str:
        """Why an experiment waits, for status.json's `waiting_for`."""
        if self.groups:
            return (f"a GPU group: {self.in_use} of {self.limit} trainings hold the groups "
                    f"{' '.join(self.groups)} (--gpus, --gpus-per-run)")
        return (f"a training slot: {self.in_use} of --max-parallel {self.limit} experiments "
                f"are training")

    @property
    def in_use(self) -> int:
        return len(self._held)


_pools: dict[tuple[str, ...], TrainingSlots] = {}
_pools_lock = threading.Lock()


def pool_for(config: Config, given: TrainingSlots | None) -> TrainingSlots | None:
    """The slots an experiment trains under. Without GPUs: `given` (the daemon's
    --max-parallel, or None: no limit). With GPUs: `given` handing out device groups, else
    one pool per process and set of groups, so the experiments of a daemon share devices."""
    found = gpus.groups(config.gpus, config.gpus_per_run)
    if not found:
        return given
    if given is not None:
        given.use_groups(found)
        return given
    key = (*found, f"max_parallel={config.max_parallel}")
    with _pools_lock:
        return _pools.setdefault(key, TrainingSlots(config.max_parallel, found))
