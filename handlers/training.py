"""TRAINING's action: launch the training through the shim, watch heartbeats, record the exit."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from mlsm.handlers.environment import training_env
from mlsm.handlers.launchers.base import Handle, Spec
from mlsm.handlers.sentinel import HeartbeatWatch, Verdict
from mlsm.handlers.supervised import SupervisedRun
from mlsm.hooks import rundir
from mlsm.hooks.layout import Layout
from mlsm.machine.core.config import Config
from mlsm.machine.core.events import EXITED, Event


def shim_argv(run_dir: Path, train_argv: list[str]) -> list[str]:
    """The one place the training command line is built (a sandbox wrapper goes here).

    `-P` keeps the experiment directory (the cwd) off sys.path: a planted `mlsm/` there
    cannot shadow the installed shim.
    """
    return [sys.executable, "-P", "-m", "mlsm.hooks.shim", str(run_dir), "--", *train_argv]


def set_aside_attempt(run_dir: Path) -> Path | None:
    """Move an interrupted attempt's files into attempt_K/ so a rerun overwrites nothing."""
    present = [run_dir / n for n in rundir.ATTEMPT_FILES if (run_dir / n).exists()]
    if not present:
        return None
    k = 1
    while (run_dir / f"attempt_{k}").exists():
        k += 1
    dest = run_dir / f"attempt_{k}"
    dest.mkdir()
    for path in present:
        path.rename(dest / path.name)
    return dest


def final_exit(run_dir: Path, started: float | None, returncode: int | None,
               run_id: str | None) -> dict[str, Any]:
    """The exit record: the shim's exit.json, else one built from our own wait (or the kill
    note) and written here, so a training's end is never lost."""
    record = rundir.read_exit(run_dir)
    if record is None:
        if returncode is not None and 128 < returncode < 160:
            returncode = 128 - returncode  # the shim's way of passing on a signal
        record = rundir.with_kill_note(rundir.exit_record(returncode, started), run_dir)
        if returncode is not None:
            record["detail"] = record.get("detail") or (
                "exit.json was missing; the code is from the daemon's own wait on the shim")
    record["run_id"] = run_id
    return record


class TrainingRun(SupervisedRun):
    """One launched (or re-attached) training and the thread that watches it."""

    kind = "training"

    def __init__(self, layout: Layout, iteration: int, config: Config, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.layout, self.iteration, self.config = layout, iteration, config
        self.started_wall: float | None = None
        self.withheld: list[str] = []

    def spawn(self) -> Handle:
        """Prepare the run folder and start the shim; it waits for `release` before training."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        moved = set_aside_attempt(self.run_dir)
        if moved:
            self.log.info("attempt_set_aside", iteration=self.iteration, to=str(moved))
        if self.layout.train.is_file():
            shutil.copy2(self.layout.train, self.run_dir / rundir.TRAIN)
        env, self.withheld = training_env(os.environ, self.config.train_env)
        env.update(MLSM_RUN_DIR=str(self.run_dir), MLSM_DIR=str(self.layout.root),
                   MLSM_ITERATION=str(self.iteration))
        if self.config.tensorboard:
            env["MLSM_TENSORBOARD"] = "1"
        argv = self.config.train_argv()
        self.launched = self.launcher.spawn(Spec(
            argv=shim_argv(self.run_dir, argv), cwd=self.layout.root, env=env,
            stdout=self.run_dir / rundir.STDOUT, stderr=self.run_dir / rundir.STDERR,
            handshake=True, record_cmd=argv, experiment=self.layout.root))
        self.started_wall = time.time()
        return self.launched.handle

    def release(self) -> None:
        """The identity is persisted: let the shim start training, then watch it."""
        assert self.launched is not None
        self.launched.release()
        self.start_watching(f"train-{self.run_dir.name}")

    def cancel(self) -> None:
        """The identity could not be persisted: the shim exits without starting anything."""
        if self.launched is not None:
            self.launched.cancel()

    def attach(self, handle: Handle, started_wall: float | None) -> bool:
        """Watch a training a previous daemon started; False when it is not running any more."""
        launched = self.launcher.reattach(handle)
        if launched is None:
            return False
        self.launched, self.started_wall = launched, started_wall
        self.start_watching(f"train-{self.run_dir.name}")
        return True

    def _watch(self) -> None:
        assert self.launched is not None
        cfg = self.config
        watch = HeartbeatWatch(cfg.heartbeat_timeout, cfg.startup_grace, cfg.output_timeout,
                               cfg.run_timeout, self.clock)
        while not self.abandoned:
            if self.launched.wait(self.POLL_S):
                break
            verdict = watch.observe(rundir.read_heartbeat(self.run_dir),
                                    rundir.output_size(self.run_dir))
            if verdict is not None and not verdict.kill:
                self.log.warning("no_heartbeat", iteration=self.iteration, hint=verdict.detail)
            elif verdict is not None:
                self._kill_for(verdict)
                break
        if self.abandoned or self.stopping():
            return
        self.emit(Event(EXITED, self.run_id, {"kind": "training", "exit": self._exit()}))

    def _exit(self) -> dict[str, Any]:
        assert self.launched is not None
        record = final_exit(self.run_dir, self.started_wall, self.launched.returncode,
                            self.run_id)
        record["leftovers"] = self.cleanup()
        if record.get("pid") == self.launched.handle.get("pid") and not record["leftovers"]:
            return record  # the shim's own exit.json already says all there is
        if not rundir.write_exit(self.run_dir, record):
            self.log.error("exit_record_unwritten", iteration=self.iteration,
                           detail="the disk refused exit.json; the record is kept in "
                                  "status.json's history")
        return record

    def _kill_for(self, verdict: Verdict) -> None:
        self.log.warning("training_killed", iteration=self.iteration, reason=verdict.reason,
                         seconds=round(verdict.seconds, 1), detail=verdict.detail)
        self.kill_for(verdict.reason, verdict.detail, verdict.seconds)
