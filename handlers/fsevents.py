"""Watchdog handlers: file events in an experiment root become engine wake-ups; never raise."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver

from mlsm.hooks.layout import IDEA, STOP, WATCHED

# Our own reads produce "opened" and "closed_no_write" events: reacting to them would loop.
IGNORED_TYPES = frozenset({"opened", "closed_no_write"})
RELEVANT = WATCHED

MOVE_PAIRING_S = 0.01
"""How long watchdog holds an inotify IN_MOVED_FROM to pair it with its IN_MOVED_TO. Its default,
0.5 s, is slept out in full by the thread that hands events on, even when the pair arrives a
microsecond later, and every event queued behind it waits too: about 1 STOP in 100 reached the
daemon 400 ms late, behind the rename that writes status.json. A rename's two events arrive in
one read of the inotify descriptor, so 10 ms still pairs them."""

# Where watchdog keeps that delay: 7.x's grouper, and the buffer of 4.x to 6.x.
_MOVE_HOLDERS = (("watchdog.observers.inotify_move_event_grouper", "InotifyMoveEventGrouper"),
                 ("watchdog.observers.inotify_buffer", "InotifyBuffer"))


def native_observer() -> BaseObserver:
    """watchdog's native observer (inotify on Linux), with a short wait for pairing moves."""
    from watchdog.observers import Observer

    for module, name in _MOVE_HOLDERS:
        with contextlib.suppress(ImportError, AttributeError):
            holder = getattr(importlib.import_module(module), name)
            if isinstance(getattr(holder, "delay", None), (int, float)):
                holder.delay = MOVE_PAIRING_S
    return Observer()


class ExperimentHandler(FileSystemEventHandler):
    """Routes events on one experiment root: STOP to the killer at once, the rest as wake-ups."""

    def __init__(self, root: str, wake: Callable[[], None], request_stop: Callable[[], None],
                 log: Any) -> None:
        self.root = root
        self.wake = wake
        self.request_stop = request_stop
        self.log = log

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._route(event)
        except Exception as exc:  # an exception here would kill the observer thread
            self.log.exception("fs_handler_error", error=repr(exc))

    def _route(self, event: FileSystemEvent) -> None:
        if event.event_type in IGNORED_TYPES:
            return
        names = {_name(event.src_path), _name(getattr(event, "dest_path", "") or "")}
        if event.src_path and _same(event.src_path, self.root):
            self.wake()  # the root itself changed (deleted, moved): reconcile
            return
        if not names & RELEVANT:
            return
        # A STOP that appeared counts even if it is already gone again: the person asked.
        appeared = (_name(getattr(event, "dest_path", "") or "") == STOP
                    or (_name(event.src_path) == STOP and event.event_type != "deleted"
                        and event.event_type != "moved"))
        if appeared:
            self.request_stop()
        self.wake()


def _name(path: str | bytes) -> str:
    return os.path.basename(os.fsdecode(path))


def _same(a: str | bytes, b: str) -> bool:
    return os.path.normpath(os.fsdecode(a)) == os.path.normpath(b)


class DiscoveryHandler(FileSystemEventHandler):
    """On a discovery root or a candidate subdirectory: any change asks the daemon to rescan."""

    def __init__(self, rescan: Callable[[], None], log: Any) -> None:
        self.rescan = rescan
        self.log = log

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            if event.event_type in IGNORED_TYPES:
                return
            if event.is_directory or _name(event.src_path) == IDEA \
                    or _name(getattr(event, "dest_path", "") or "") == IDEA:
                self.rescan()
        except Exception as exc:  # an exception here would kill the observer thread
            self.log.exception("fs_handler_error", error=repr(exc))
