"""The one event type that handlers, waiters, timers and signals put on an engine's queue."""

from __future__ import annotations

import dataclasses
from typing import Any

WAKE = "wake"          # something may have changed on disk: reconcile
STOP = "stop"          # STOP appeared; the killer has acted
EXITED = "exited"      # a supervised process finished (data: outcome / exit record)
RETRY = "retry"        # a failed agent step's back-off elapsed
SHUTDOWN = "shutdown"  # the daemon is stopping


@dataclasses.dataclass(frozen=True)
class Event:
    """Something happened; `run_id` ties process events to the run that caused them."""

    kind: str
    run_id: str | None = None
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
