"""The daemon: experiments, one file observer, signal handling that only enqueues."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil

from mlsm.handlers.fsevents import ExperimentHandler
from mlsm.machine.config import Config, resolve
from mlsm.machine.engine import Experiment
from mlsm.machine.errors import ExitCode, InputError
from mlsm.machine.states import State

NETWORK_FS = ("nfs", "nfs4", "cifs", "smbfs", "smb3", "fuse.sshfs", "sshfs", "9p", "fuse.rclone")


def is_network_fs(path: Path) -> bool:
    """True when `path` lives on a mount where inotify sees nothing (NFS, CIFS, SSHFS...)."""
    best = None
    resolved = str(path.resolve())
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint.rstrip("/") or "/"
        if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and (
                best is None or len(mount) > len(best.mountpoint)):
            best = part
    return best is not None and best.fstype in NETWORK_FS


class Daemon:
    """Runs one engine per experiment directory and a shared observer until told to stop."""

    def __init__(self, dirs: list[Path], flags: Mapping[str, Any],
                 console: IO[str] | None = sys.stderr) -> None:
        self.dirs = [d.resolve() for d in dirs]
        self.flags = flags
        self.console = console
        self.experiments: list[Experiment] = []
        self._wake = threading.Event()
        self._signal: int | None = None
        self._observer: Any = None
        self._watches: dict[Experiment, Any] = {}

    def open(self) -> None:
        """Resolve config, lock and read every experiment; any problem is one MlsmError."""
        for d in self.dirs:
            if not d.is_dir():
                raise InputError(f"{d} is not a directory: create it and put IDEA.md in it")
            config = resolve(d, self.flags)
            exp = Experiment(d, config, console=self.console,
                             on_root_replaced=self._reschedule, on_finished=self._wake.set)
            if config.agent == "command":
                config.agent_argv()
            exp.backend().preflight(config)
            exp.open()
            self.experiments.append(exp)

    def _config_poll(self) -> tuple[bool, float]:
        configs: list[Config] = [e.config for e in self.experiments]
        poll = any(c.poll for c in configs) or any(is_network_fs(e.dir) for e in self.experiments)
        return poll, min((c.poll_interval for c in configs), default=1.0)

    def _start_observer(self) -> None:
        poll, interval = self._config_poll()
        if poll:
            from watchdog.observers.polling import PollingObserver

            self._observer = PollingObserver(timeout=interval)
        else:
            from watchdog.observers import Observer

            self._observer = Observer()
        for exp in self.experiments:
            self._schedule(exp)
        self._observer.start()
        for exp in self.experiments:
            exp.log.info("watching", path=str(exp.dir), observer="polling" if poll else "inotify")

    def _schedule(self, exp: Experiment) -> None:
        handler = ExperimentHandler(str(exp.dir), exp.wake, exp.request_stop, exp.log)
        self._watches[exp] = self._observer.schedule(handler, str(exp.dir), recursive=False)

    def _reschedule(self, exp: Experiment) -> None:
        """The root was deleted and recreated: the old inotify watch is dead."""
        old = self._watches.pop(exp, None)
        if old is not None:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(old)
        if exp.dir.is_dir():
            self._schedule(exp)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signal = signum  # only record and wake: the main thread does the work
        self._wake.set()

    def run(self, until_finished: bool) -> ExitCode:
        """Run until a signal (or, when `until_finished`, until every run is DONE or FAILED)."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._start_observer()
            for exp in self.experiments:
                exp.start()
            while True:
                if until_finished and all(e.finished.is_set() for e in self.experiments):
                    break
                self._wake.wait()
                self._wake.clear()
                if self._signal is not None:
                    break
        finally:
            self.close()
            for s, h in previous.items():
                signal.signal(s, h)
        if self._signal is not None:
            return ExitCode.INTERRUPTED
        failed = any(e.state == State.FAILED for e in self.experiments)
        return ExitCode.RUN_FAILED if failed else ExitCode.OK

    def close(self) -> None:
        """Shut every experiment down (children killed, state persisted), then the observer."""
        for exp in self.experiments:
            if exp.started:
                exp.shutdown()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
