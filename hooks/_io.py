"""File writes for the hooks that never raise: atomic replace, append, one warning per file."""

from __future__ import annotations

import contextlib
import os
import sys

_warned: set[str] = set()


def warn_once(what: str, exc: BaseException) -> None:
    """One stderr line per failing file, so a full disk cannot flood the log or stop training."""
    say_once(what, f"could not write {what} ({exc}); training goes on, "
             "later failures of this file are not reported")


def say_once(topic: str, message: str) -> None:
    """Print `mlsm.hooks: message` to stderr the first time `topic` comes up."""
    if topic in _warned:
        return
    _warned.add(topic)
    # stderr itself may be closed or gone; then nothing else can be told
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(f"mlsm.hooks: {message}", file=sys.stderr, flush=True)


def temp_name(path: str) -> str:
    """The temp file beside `path` (the daemon removes stray `.NAME.PID.tmp` files)."""
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}.{os.getpid()}.tmp")


def write_all(fd: int, data: bytes) -> None:
    """os.write until done: a regular file may take a large buffer in pieces."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def replace(path: str, text: str, *, durable: bool) -> bool:
    """Atomically replace `path` with `text`; fsync file and folder when `durable`."""
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, text.encode())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            _fsync_dir(os.path.dirname(path))
    except OSError as exc:
        _remove(tmp)
        warn_once(os.path.basename(path), exc)
        return False
    return True


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):  # never created, or the disk is gone: nothing to clean
        os.unlink(path)


class Appender:
    """Appends text to one file through a raw fd, so what was written survives a crash."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._torn = False  # a failed write left half a line: start the next one on a new line

    def append(self, text: str) -> None:
        data = text.encode()
        if self._torn:
            data = b"\n" + data
        view = memoryview(data)
        try:
            if self._fd < 0:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            while view:
                view = view[os.write(self._fd, view):]
            self._torn = False
        except OSError as exc:
            if len(view) < len(data):
                self._torn = True
            warn_once(os.path.basename(self.path), exc)
