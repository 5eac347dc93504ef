"""The supervisor: the one owner of an experiment's current process and of every kill.

STOP, a stale heartbeat, timeouts, budgets, a replaced root and shutdown all ask it. A kill takes
its lock, so two reasons arriving together kill once: the second finds the run already dead and
returns at once, without another pass over /proc.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlsm.handlers.launchers import launcher_of
from mlsm.handlers.launchers.base import Handle
from mlsm.handlers.supervised import SupervisedRun
from mlsm.hooks import rundir
from mlsm.machine.core.errors import MlsmError

USR1_PAUSE_S = 0.5
Recorded = tuple[str, Handle, Path | None]
"""(kind, handle, run folder) of a process status.json names."""


class Supervisor:
    """Owns the current run, the fast STOP killer thread, and every kill of one experiment."""

    def __init__(self, grace: float, log: Any, recorded: Callable[[], list[Recorded]]) -> None:
        self.grace, self.log, self.recorded = grace, log, recorded
        self.current: SupervisedRun | None = None
        self._lock = threading.Lock()
        self._killed: set[str] = set()
        self._request = threading.Event()
        self._closing = False
        self._stop_reason: tuple[str, str] | None = None
        self._after_stop: Callable[[], None] = lambda: None
        self._thread: threading.Thread | None = None

    # ----- the current run -----------------------------------------------------------------
    def adopt(self, run: SupervisedRun) -> None:
        """`run` is now the experiment's process; its kills come here."""
        run.owner = self
        self.current = run

    def release(self, run_id: str | None) -> None:
        """The engine has taken `run_id`'s exit: it is no longer current."""
        if self.current is not None and self.current.run_id == run_id:
            self.current = None

    # ----- the STOP fast path ----------------------------------------------------------------
    def start(self, after_stop: Callable[[], None]) -> None:
        """Start the killer thread; `after_stop` runs once a requested stop has killed."""
        self._after_stop = after_stop
        self._thread = threading.Thread(target=self._killer, name="killer", daemon=True)
        self._thread.start()

    def request_stop(self, reason: str = "stopped", detail: str = "STOP was requested") -> None:
        """Kill everything now, from the killer thread, without waiting for the engine."""
        self._stop_reason = (reason, detail)
        self._request.set()

    def close(self, timeout: float | None = None) -> None:
        self._closing = True
        self._request.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _killer(self) -> None:
        while True:
            self._request.wait()
            self._request.clear()
            if self._closing:
                return
            if self._stop_reason is not None:
                try:
                    self.kill_all(*self._stop_reason)
                except Exception as exc:  # STOP's fast path must survive any one bad handle
                    self.log.exception("killer_error", error=repr(exc))
                self._after_stop()

    # ----- kills -----------------------------------------------------------------------------
    def kill_all(self, reason: str, detail: str) -> None:
        """Kill the current run and every process status.json records; safe to repeat."""
        with self._lock:
            run = self.current
            if run is not None:
                run.abandon()
            targets = self.recorded()
            if run is not None and run.handle is not None:
                targets.append((run.kind, run.handle, run.run_dir))
            for kind, handle, run_dir in targets:
                self._kill(kind, handle, run_dir, reason, detail, None)
            if run is not None and run.launched is not None:
                run.launched.wait(1.0)  # reap our child, so no zombie outlives the kill
            self.current = None

    def kill_run(self, run: SupervisedRun, reason: str, detail: str,
                 seconds: float | None = None) -> None:
        """Kill one run for `reason` (stale, timeout, budget); its watcher reports the exit."""
        handle = run.handle
        if handle is None:
            return
        with self._lock:
            launcher = launcher_of(handle)
            self._note(run.kind, handle, run.run_dir, reason, detail, seconds)
            if reason == "stale_heartbeat" and launcher.signal(handle, signal.SIGUSR1):
                run.pause(USR1_PAUSE_S)  # a stack dump into stderr.log, for the agent to read
            self._kill(run.kind, handle, run.run_dir, reason, detail, seconds)
        if run.launched is not None:
            run.launched.wait(None)

    def _kill(self, kind: str, handle: Handle, run_dir: Path | None, reason: str, detail: str,
              seconds: float | None) -> None:
        run_id = str(handle.get("run_id"))
        if run_id in self._killed:
            return  # one kill per run, however many reasons arrive
        try:
            launcher = launcher_of(handle)
        except MlsmError as exc:
            self.log.error("unknown_launcher", error=str(exc), run_id=run_id)
            return
        if not rundir.read_kill_note(run_dir or Path("/nonexistent")):
            self._note(kind, handle, run_dir, reason, detail, seconds)
        report = launcher.kill(handle, self.grace)
        if report.survivors == 0:
            self._killed.add(run_id)
        if report.found:
            self.log.info("tree_killed", kind=kind, run=launcher.describe(handle),
                          processes=report.found, survivors=report.survivors, reason=reason)
        self._gpu_holders(kind, handle)

    def _gpu_holders(self, kind: str, handle: Handle) -> int:
        """What still holds the run's GPUs once its tree is gone: reported, and killed."""
        if not handle.get("devices"):
            return 0
        launcher = launcher_of(handle)
        pids = launcher.kill_gpu_holders(handle, self.grace)
        if pids:
            self.log.warning("gpu_holders_killed", kind=kind, run=launcher.describe(handle),
                             devices=handle["devices"], pids=pids,
                             detail="still held the run's GPUs after its tree was killed")
        return len(pids)

    @staticmethod
    def _note(kind: str, handle: Handle, run_dir: Path | None, reason: str, detail: str,
              seconds: float | None) -> None:
        """Tell the shim (and exit.json's reader) why, before the first signal lands."""
        if kind == "training" and run_dir is not None and launcher_of(handle).alive(handle):
            rundir.write_kill_note(run_dir, reason, detail, seconds)

    def cleanup(self, run: SupervisedRun) -> int:
        """A run's main process ended on its own: kill what it left (systemd's control group)."""
        handle = run.handle
        if handle is None:
            return 0
        left = launcher_of(handle).leftovers(handle, self.grace)
        left += self._gpu_holders(run.kind, handle)
        if left:
            self.log.warning("leftovers_killed", kind=run.kind, processes=left,
                             run=launcher_of(handle).describe(handle))
        return left
