"""The daemon: experiments, one file observer, discovery, and signal handlers that only enqueue."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

import psutil

from mlsm.handlers.environment import withheld
from mlsm.handlers.fsevents import DiscoveryHandler, ExperimentHandler, native_observer
from mlsm.handlers.launchers import local
from mlsm.hooks.layout import Layout
from mlsm.machine.core.config import Config, resolve
from mlsm.machine.core.errors import ExitCode, InputError, MlsmError
from mlsm.machine.core.journal import make_logger
from mlsm.machine.core.states import State
from mlsm.machine.engine import Experiment
from mlsm.machine.slots import TrainingSlots

NETWORK_FS = ("nfs", "nfs4", "cifs", "smbfs", "smb3", "fuse.sshfs", "sshfs", "9p", "fuse.rclone")
RESCAN_S = 30.0


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


class OverflowHandler(logging.Handler):
    """watchdog logs an inotify queue overflow: events were lost, so every engine reconciles."""

    def __init__(self, experiments: Callable[[], list[Experiment]]) -> None:
        super().__init__(logging.WARNING)
        self.experiments = experiments

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" not in record.getMessage().lower():
            return
        for exp in self.experiments():
            exp.log.warning("inotify_overflow", detail="events were lost; reconciling")
            exp.wake()


class Companion(Protocol):
    """A helper that only reads the files, on its own threads (web UI, exporters, notifier);
    the command line builds them from the settings (views are not the daemon's to import)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Daemon:
    """Runs one engine per experiment and a shared observer until a signal (or the runs end)."""

    def __init__(self, dirs: list[Path], flags: Mapping[str, Any],
                 console: IO[str] | None = sys.stderr, discover: bool = False) -> None:
        self.dirs = [d.resolve() for d in dirs]
        self.flags = dict(flags)
        self.console = console
        self.discover = discover
        self.experiments: list[Experiment] = []
        self._known: set[Path] = set()
        self._tasks: collections.deque[Callable[[], None]] = collections.deque()
        self._wake = threading.Event()
        self._signal: int | None = None
        self._observer: Any = None
        self._watches: dict[Any, Any] = {}
        limit = int(self.flags.get("max_parallel") or 0)
        self.slots = TrainingSlots(limit) if limit else None
        self.log: Any = None
        self.companions: list[Companion] = []

    # ----- experiments -----------------------------------------------------------------
    def open(self) -> None:
        """Resolve config, lock and read every experiment; any problem is one MlsmError."""
        for d in self.dirs:
            if not d.is_dir():
                raise InputError(f"{d} is not a directory: create it and put IDEA.md in it")
        if self.discover:
            self.log, _ = make_logger(Layout(self.dirs[0]).private, "discover", self.console)
            return
        for d in self.dirs:
            self.experiments.append(self._open_experiment(d))

    def _open_experiment(self, d: Path) -> Experiment:
        config = resolve(d, self.flags)
        if self.discover:
            config = self._no_secrets_from_file(d, config)
        exp = Experiment(d, config, console=self.console, on_root_replaced=self._reschedule,
                         on_finished=self._wake.set, slots=self.slots)
        if config.agent == "command":
            config.agent_argv()
        exp.backend().preflight(config)
        exp.open()
        self._known.add(d)
        return exp

    def _no_secrets_from_file(self, d: Path, config: Config) -> Config:
        """Under --discover anyone who can make a folder can write its mlsm.toml (a training
        too): its `train-env` may not hand secrets on; flags and MLSM_TRAIN_ENV still can."""
        if config.sources.get("train_env") != "file":
            return config
        refused = [n for n in config.train_env if withheld(n)]
        if refused:
            self.log.warning("train_env_refused", path=str(d), names=refused,
                             detail="secrets named in a discovered experiment's mlsm.toml are "
                                    "not passed; give them with --train-env instead")
        return dataclasses.replace(
            config, train_env=tuple(n for n in config.train_env if n not in refused))

    def _adopt(self, d: Path) -> None:
        """Discovery found an IDEA.md in `d`: make it an experiment (errors are logged)."""
        if d in self._known or self._signal is not None:
            return
        try:
            exp = self._open_experiment(d)
        except MlsmError as exc:
            self._known.add(d)
            self.log.error("experiment_refused", path=str(d), error=str(exc))
            return
        self._unwatch(d)
        self.experiments.append(exp)
        self._schedule(exp)
        exp.start()
        self.log.info("experiment_discovered", path=str(d))

    def _scan(self) -> None:
        """Adopt every subdirectory of a discovery root with an IDEA.md; watch the others."""
        for root in self.dirs:
            try:
                subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
            except OSError:
                continue
            for d in subdirs:
                if d in self._known:
                    continue
                if Layout(d).idea.exists():
                    self._adopt(d)
                elif d not in self._watches:
                    self._watch_candidate(d)

    # ----- observer --------------------------------------------------------------------
    def _use_polling(self) -> tuple[bool, float]:
        if self.discover:
            cfg = resolve(None, self.flags)
            return cfg.poll or any(is_network_fs(d) for d in self.dirs), cfg.poll_interval
        configs = [e.config for e in self.experiments]
        poll = any(c.poll for c in configs) or any(is_network_fs(e.dir) for e in self.experiments)
        return poll, min((c.poll_interval for c in configs), default=1.0)

    def _start_observer(self) -> None:
        poll, interval = self._use_polling()
        if poll:
            from watchdog.observers.polling import PollingObserver

            self._observer = PollingObserver(timeout=interval)
        else:
            self._observer = native_observer()
        for exp in self.experiments:
            self._schedule(exp)
        if self.discover:
            for root in self.dirs:
                self._observer.schedule(DiscoveryHandler(self._enqueue_scan, self.log),
                                        str(root), recursive=False)
        self._overflow = OverflowHandler(lambda: list(self.experiments))
        logging.getLogger("watchdog.observers").addHandler(self._overflow)
        self._observer.start()
        for exp in self.experiments:
            exp.log.info("watching", path=str(exp.dir), observer="polling" if poll else "inotify")

    def _schedule(self, exp: Experiment) -> None:
        handler = ExperimentHandler(str(exp.dir), exp.wake, exp.request_stop, exp.log)
        self._watches[exp] = self._observer.schedule(handler, str(exp.dir), recursive=False)

    def _watch_candidate(self, d: Path) -> None:
        with contextlib.suppress(OSError):  # it vanished already; the next scan sees
            self._watches[d] = self._observer.schedule(
                DiscoveryHandler(self._enqueue_scan, self.log), str(d), recursive=False)

    def _unwatch(self, key: Any) -> None:
        old = self._watches.pop(key, None)
        if old is not None:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(old)

    def _reschedule(self, exp: Experiment) -> None:
        """The root was deleted and recreated: the old inotify watch is dead."""
        self._unwatch(exp)
        if exp.dir.is_dir():
            self._schedule(exp)

    # ----- the main loop ---------------------------------------------------------------
    def _enqueue_scan(self) -> None:
        self._tasks.append(self._scan)
        self._wake.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signal = signum  # only record and wake: the main thread does the work
        self._wake.set()

    def run(self, until_finished: bool) -> ExitCode:
        """Run until a signal (or, when `until_finished`, until every run is DONE or FAILED)."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        local.become_subreaper()
        try:
            self._start_observer()
            for companion in self.companions:  # before the engines: no event goes unseen
                companion.start()
            for exp in self.experiments:
                exp.start()
            if self.discover:
                self._scan()
            self._loop(until_finished)
        finally:
            self.close()
            for s, h in previous.items():
                signal.signal(s, h)
        if self._signal is not None:
            return ExitCode.INTERRUPTED
        return self._verdict()

    def _verdict(self) -> ExitCode:
        """0 only when every run ended DONE with a best value; else why not."""
        blocked = [e for e in self.experiments if e.idle_problem and not e.finished.is_set()]
        for exp in blocked:
            print(f"mlsm: error: {exp.dir}: {exp.idle_problem}", file=sys.stderr)
        if blocked:
            return ExitCode.ERROR
        if any(e.state == State.FAILED for e in self.experiments):
            return ExitCode.RUN_FAILED
        if any(e.status.best is None for e in self.experiments):
            return ExitCode.NO_RESULT
        return ExitCode.OK

    def _loop(self, until_finished: bool) -> None:
        while self._signal is None:
            if until_finished and all(e.finished.is_set() or e.idle_problem
                                      for e in self.experiments):
                return
            if not self._wake.wait(RESCAN_S):
                local.reap_orphans()  # orphans of killed trees we adopted as subreaper
                if self.discover:
                    self._tasks.append(self._scan)  # periodic rescan: events are only hints
            self._wake.clear()
            while self._tasks and self._signal is None:
                self._tasks.popleft()()

    def close(self) -> None:
        """Shut every experiment down (children killed, state persisted), then the observer."""
        started = [exp for exp in self.experiments if exp.started]
        for exp in started:  # every engine kills its children at once, in parallel
            exp.shutdown(wait=False)
        deadline = time.monotonic() + max((e.config.grace for e in started), default=0) + 15
        for exp in started:  # a wedged engine must not keep SIGTERM from ending the daemon
            exp.join(max(0.1, deadline - time.monotonic()))
            if exp.alive():
                print(f"mlsm: {exp.dir}: the engine did not stop in time; exiting anyway "
                      f"(its training, if any, is left running for the next daemon)",
                      file=sys.stderr)
        for companion in self.companions:  # after the engines: they see the final state
            companion.stop()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            logging.getLogger("watchdog.observers").removeHandler(self._overflow)
