"""File events: a real inotify observer routes an experiment root's events to the engine."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import structlog

from mlsm.handlers.fsevents import ExperimentHandler, native_observer


class Seen:
    """What the handler asked for, with when STOP was first requested."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.stop_at = 0.0
        self.wakes = 0

    def request_stop(self) -> None:
        if not self.stop.is_set():
            self.stop_at = time.monotonic()
            self.stop.set()

    def wake(self) -> None:
        self.wakes += 1


def _watch(root: Path, seen: Seen):  # type: ignore[no-untyped-def]
    observer = native_observer()
    handler = ExperimentHandler(str(root), seen.wake, seen.request_stop, structlog.get_logger())
    observer.schedule(handler, str(root), recursive=False)
    observer.start()
    return observer


def test_stop_is_not_held_behind_a_rename_out_of_the_root(tmp_path: Path) -> None:
    """watchdog holds an unpaired IN_MOVED_FROM (a file renamed out of the watched root) to pair
    it, and every event behind it waits: 0.5 s by default, whatever else is queued. STOP must
    not wait that long behind a training that moves a file into a subfolder."""
    root, sub = tmp_path / "exp", tmp_path / "exp" / "ckpt"
    sub.mkdir(parents=True)
    (root / "model.tmp").write_text("weights")
    seen = Seen()
    observer = _watch(root, seen)
    try:
        moved = time.monotonic()
        os.replace(root / "model.tmp", sub / "model.pt")  # only IN_MOVED_FROM reaches the root
        (root / "STOP").touch()
        assert seen.stop.wait(10), "STOP was never routed"
        held = seen.stop_at - moved
        # The default holds everything queued behind the move for at least 0.5 s after it.
        assert held < 0.45, f"STOP reached the handler {held * 1000:.0f} ms after the move"
    finally:
        observer.stop()
        observer.join(10)


def test_a_rename_onto_stop_is_a_stop(tmp_path: Path) -> None:
    """`mv STOP.tmp STOP` halts like `touch STOP`: a paired move naming STOP as its destination
    (the kernel queues a rename's two events together, so 10 ms pairs them), or, on a machine
    too loaded to pair them in time, a STOP that appeared on its own."""
    root = tmp_path / "exp"
    root.mkdir()
    events: list[tuple[str, str, str]] = []
    seen = Seen()
    observer = native_observer()

    class Recording(ExperimentHandler):
        def on_any_event(self, event):  # type: ignore[no-untyped-def]
            events.append((event.event_type, os.path.basename(event.src_path),
                           os.path.basename(getattr(event, "dest_path", "") or "")))
            super().on_any_event(event)

    observer.schedule(Recording(str(root), seen.wake, seen.request_stop, structlog.get_logger()),
                      str(root), recursive=False)
    observer.start()
    try:
        (root / "STOP.tmp").write_text("")
        os.replace(root / "STOP.tmp", root / "STOP")
        assert seen.stop.wait(10), "STOP was never routed"
        assert ("moved", "STOP.tmp", "STOP") in events or \
            any(kind != "deleted" and "STOP" in (src, dest) for kind, src, dest in events)
    finally:
        observer.stop()
        observer.join(10)
