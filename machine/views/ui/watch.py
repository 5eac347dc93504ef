"""File events that mark overview rows dirty: one inotify descriptor for every directory, read
from the server's event loop (no thread, no wake-up while nothing happens). Events are hints;
the board still looks at everything now and then, and polls where there is no inotify."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
import struct
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from mlsm.hooks.layout import IDEA, PLAN, REPORT, RETRY, STATUS, STOP

NAMES = frozenset(n.encode() for n in (STATUS, STOP, REPORT, PLAN, RETRY, IDEA))
"""Files of an experiment's folder whose change can change its row (status.json arrives by
rename, so IN_MOVED_TO)."""

IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x008, 0x040, 0x080
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR = 0x4000, 0x8000, 0x01000000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
MASK = (IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
        | IN_MOVE_SELF | IN_ONLYDIR)
HEADER = struct.Struct("iIII")  # wd, mask, cookie, len


class Watcher:
    """One inotify descriptor over experiment folders, roots and would-be experiments.

    `fileno()` goes to the event loop; `read()` drains it; `take()` hands what changed to the
    board. Without inotify (`start()` is False) every folder counts as `failed`: polled.
    """

    def __init__(self) -> None:
        self.failed: set[Path] = set()
        self._fd = -1
        self._lock = threading.Lock()
        self._libc: ctypes.CDLL | None = None
        self._wds: dict[int, tuple[Path, bool]] = {}  # wd → (folder, is a root or candidate)
        self._paths: dict[Path, int] = {}
        self._dirty: set[Path] = set()
        self._listing = False
        self._everything = False

    def start(self) -> bool:
        name = ctypes.util.find_library("c")
        try:
            self._libc = ctypes.CDLL(name, use_errno=True)
            self._fd = int(self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        except (OSError, AttributeError):  # not Linux, or no libc to ask
            self._fd = -1
        return self._fd >= 0

    def fileno(self) -> int:
        return self._fd

    def stop(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def follow(self, experiments: Iterable[Path], others: Iterable[Path]) -> None:
        """Watch exactly these folders: experiments for their files, `others` (roots, and
        subfolders without IDEA.md yet) for entries coming and going."""
        wanted = {p: False for p in experiments}
        wanted.update({p: True for p in others})
        if self._fd < 0:
            self.failed = {p for p, other in wanted.items() if not other}
            return
        for path in [p for p in self._paths if p not in wanted]:
            self._forget(path)
        for path, other in wanted.items():
            if path not in self._paths:
                self._add(path, other)

    def _add(self, path: Path, other: bool) -> None:
        assert self._libc is not None
        wd = int(self._libc.inotify_add_watch(self._fd, os.fsencode(path), MASK))
        if wd < 0:  # the watch limit, or the folder vanished: poll this one
            if not other:
                self.failed.add(path)
            return
        self._wds[wd] = (path, other)
        self._paths[path] = wd
        self.failed.discard(path)

    def _forget(self, path: Path) -> None:
        wd = self._paths.pop(path)
        self._wds.pop(wd, None)
        if self._libc is not None:
            self._libc.inotify_rm_watch(self._fd, wd)

    def read(self) -> bool:
        """Drain the descriptor; True when something relevant happened."""
        relevant = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return relevant
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return relevant
            relevant |= self._parse(data)

    def _parse(self, data: bytes) -> bool:
        relevant = False
        offset = 0
        with self._lock:
            while offset + HEADER.size <= len(data):
                wd, mask, _cookie, size = HEADER.unpack_from(data, offset)
                name = data[offset + HEADER.size:offset + HEADER.size + size].rstrip(b"\0")
                offset += HEADER.size + size
                relevant |= self._event(wd, mask, name)
        return relevant

    def _event(self, wd: int, mask: int, name: bytes) -> bool:
        if mask & IN_Q_OVERFLOW:
            self._everything = True
            return True
        path, other = self._wds.get(wd, (None, False))
        if path is None:
            return False
        if mask & IN_IGNORED:  # the folder is gone: the next listing drops it
            self._wds.pop(wd, None)
            self._paths.pop(path, None)
            self._listing = True
            return True
        if other:
            self._listing = True
            return True
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF) or name in NAMES:
            self._dirty.add(path)
            return True
        return False

    def take(self) -> tuple[set[Path], bool, bool]:
        """(folders whose files changed, whether to list again, whether to look at all)."""
        with self._lock:
            out = self._dirty, self._listing, self._everything
            self._dirty, self._listing, self._everything = set(), False, False
        return out


def attach(watcher: Watcher, loop: asyncio.AbstractEventLoop,
           on_change: Callable[[], None]) -> bool:
    """Read the watcher's descriptor from `loop` (asyncio); False where that is impossible."""
    if watcher.fileno() < 0:
        return False

    def readable() -> None:
        if watcher.read():
            on_change()

    with contextlib.suppress(Exception):
        loop.add_reader(watcher.fileno(), readable)
        return True
    return False
