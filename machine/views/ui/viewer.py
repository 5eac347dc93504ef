"""One browser's experiment page: what changed since its last look (doc, curves, log lines)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from mlsm.hooks import rundir
from mlsm.hooks.layout import Layout, iteration_dir_name
from mlsm.machine.views.files import read_from
from mlsm.machine.views.ui import data
from mlsm.machine.views.ui.state import Curves, Journal, Sent, points_update, stat_of

LOG_TAIL = 64 << 10  # a log opens this far from its end
LOG_CHUNK = 256 << 10  # the most one update carries
LOGS = ("runner", "stdout", "stderr", "hooks")
Message = tuple[str, dict[str, Any]]


class Shared:
    """Curves and journals every viewer reads, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.curves = Curves()
        self.journals: dict[Path, Journal] = {}

    def journal(self, exp_dir: Path) -> Journal:
        if exp_dir not in self.journals:
            self.journals[exp_dir] = Journal(Layout(exp_dir).journal)
        j = self.journals[exp_dir]
        j.update()
        return j


def log_path(exp_dir: Path, which: str, iteration: int) -> Path:
    """The runner log, the hooks log, or one iteration's stdout / stderr."""
    layout = Layout(exp_dir)
    if which == "runner":
        return layout.runner_log
    if which == "hooks":
        return layout.hooks_log
    return layout.iteration_dir(iteration) / (rundir.STDOUT if which == "stdout"
                                              else rundir.STDERR)


class Viewer:
    """Follows one experiment for one page: `tick` returns the messages to send."""

    def __init__(self, key: str, exp_dir: Path, shared: Shared, log: str = "runner",
                 iteration: int | None = None) -> None:
        self.key, self.dir, self.shared = key, exp_dir, shared
        self.log = log if log in LOGS else "runner"
        self.log_iteration = iteration
        self._sig: tuple[Any, ...] | None = None
        self._sent: dict[int, Sent] = {}
        self._iterations: list[int] = []
        self._log_file: Path | None = None
        self._log_offset = 0

    def tick(self) -> list[Message]:
        """The page's document when it changed, and the curve points it lacks."""
        out: list[Message] = []
        with self.shared.lock:
            doc = self._doc()
            if doc is not None:
                out.append(("doc", doc))
            out += self._curves()
        return out

    def tick_log(self) -> list[Message]:
        """What the followed log gained."""
        if not self._iterations and self.log in ("stdout", "stderr"):
            self._iterations = data.iterations(self.dir)
        return self._log()

    def _doc(self) -> dict[str, Any] | None:
        layout = Layout(self.dir)
        journal = self.shared.journal(self.dir)
        it = self._iterations[-1] if self._iterations else 0
        sig = (stat_of(layout.status), layout.stop.exists(), journal.offset,
               stat_of(layout.iteration_dir(it) / rundir.HEARTBEAT), stat_of(layout.report),
               stat_of(layout.plan), int(time.monotonic() // 2))
        if sig == self._sig:
            return None
        self._sig = sig
        doc = data.experiment_doc(self.key, self.dir, time.time(), journal.events)
        self._iterations = doc["iterations"]
        return doc

    def _curves(self) -> list[Message]:
        out: list[Message] = []
        for it in self._iterations:
            track = self.shared.curves.track(self.dir, it)
            update = points_update(track, self._sent.setdefault(it, Sent()))
            if update is not None:
                out.append(("points", {"iteration": it, **update}))
        return out

    def _log(self) -> list[Message]:
        it = self.log_iteration or (self._iterations[-1] if self._iterations else 0)
        path = log_path(self.dir, self.log, it)
        name = self._log_name(it)
        out: list[Message] = []
        size = (stat_of(path) or (0, 0, 0))[1]
        if path != self._log_file or size < self._log_offset:
            self._log_file = path
            self._log_offset = max(0, size - LOG_TAIL)
            out.append(("log", {"reset": True, "text": "", "name": name}))
        elif size - self._log_offset > LOG_CHUNK:  # far behind a flooding log: jump ahead
            skipped = size - LOG_TAIL - self._log_offset
            self._log_offset = size - LOG_TAIL
            out.append(("log", {"reset": False, "name": name,
                                "text": f"\n[… {skipped} bytes skipped …]\n"}))
        chunk, _size, _reset = read_from(path, self._log_offset, LOG_CHUNK)
        if b"\n" in chunk:
            chunk = chunk[:chunk.rfind(b"\n") + 1]  # whole lines: no split characters
        if chunk:
            self._log_offset += len(chunk)
            out.append(("log", {"reset": False, "name": name,
                                "text": chunk.decode("utf-8", "replace")}))
        return out

    def _log_name(self, it: int) -> str:
        return f"{self.log}.log" if self.log in ("runner", "hooks") else \
            f"logs/{iteration_dir_name(it)}/{self.log}.log"
