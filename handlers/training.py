"""TRAINING's action: launch the training through the shim, watch heartbeats, record the exit."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from mlsm.handlers import params
from mlsm.handlers.environment import training_env
from mlsm.handlers.launchers import sandbox
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
    """Move an interrupted attempt's files into attempt_K/ so a rerun overwrites nothing; an
    attempt that never ran (a snapshot and empty logs) is simply overwritten."""
    present = [run_dir / n for n in rundir.ATTEMPT_FILES if (run_dir / n).exists()]
    present += rundir.rank_files(run_dir)  # under torchrun: every rank's beat and logs
    if not any(_ran(p) for p in present):
        return None
    k = 1
    while (run_dir / f"attempt_{k}").exists():
        k += 1
    dest = run_dir / f"attempt_{k}"
    dest.mkdir()
    for path in present:
        path.rename(dest / path.name)
    return dest


def _ran(path: Path) -> bool:
    """Whether `path` shows that an attempt ran (output, a beat, an exit), not just began."""
    if path.name in (rundir.TRAIN, rundir.SPACE, rundir.PARAMS_USED):
        return False  # written before the launch
    try:
        return path.is_dir() or path.stat().st_size > 0
    except OSError:
        return False


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
        self.sandbox: sandbox.Policy | None = None  # set by the engine when the sandbox is on
        self.devices: str | None = None  # the GPU group the pool handed this run
        self.resumed = False  # an interrupted attempt of this iteration ran before this one
        self._next_usage = self.clock() + 1.0  # limits are checked from the first second on

    def spawn(self) -> Handle:
        """Prepare the run folder and start the shim; it waits for `release` before training."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        moved = set_aside_attempt(self.run_dir)
        self.resumed = moved is not None
        if moved:
            self.log.info("attempt_set_aside", iteration=self.iteration, to=str(moved))
        if self.layout.train.is_file():
            shutil.copy2(self.layout.train, self.run_dir / rundir.TRAIN)
        env, self.withheld = training_env(os.environ, self.config.train_env)
        env.update(MLSM_RUN_DIR=str(self.run_dir), MLSM_DIR=str(self.layout.root),
                   MLSM_ITERATION=str(self.iteration))
        if self.resumed:
            env["MLSM_RESUMED"] = "1"  # hooks.resumed(): load from hooks.checkpoint_dir()
        if self.devices is not None:  # NVML's numbering, which CUDA follows in PCI order
            env.update(CUDA_VISIBLE_DEVICES=self.devices, CUDA_DEVICE_ORDER="PCI_BUS_ID")
        env.update(self._limits())
        argv = self.config.train_argv()
        if self.config.params:  # a space from mlsm.toml: the values go on the command line
            values = params.prepare(self.run_dir, self.config.params)
            if self.config.params_style == "env":
                env.update(params.as_env(values))
            else:
                argv += params.as_flags(values)
        inner = sandbox.wrap(argv, self.sandbox) if self.sandbox else argv
        self.launched = self.launcher.spawn(Spec(
            argv=shim_argv(self.run_dir, inner), cwd=self.layout.root, env=env,
            stdout=self.run_dir / rundir.STDOUT, stderr=self.run_dir / rundir.STDERR,
            handshake=True, record_cmd=argv, experiment=self.layout.root, config=self.config,
            devices=self.devices))
        self.started_wall = time.time()
        return self.launched.handle

    def _limits(self) -> dict[str, str]:
        """Per-process limits the shim sets before it starts the training (see hooks/shim)."""
        limits = {"MLSM_LIMIT_NOFILE": str(self.config.max_open_files)}
        memory = self.config.memory_bytes()
        if memory and not sandbox.gpu_devices(None):  # address-space limits break CUDA
            limits["MLSM_LIMIT_AS"] = str(memory)
        return limits

    def _check_usage(self) -> bool:
        """Once a second: kill a tree past --max-procs or --max-memory; True when it did."""
        now = self.clock()
        if now < self._next_usage or self.handle is None:
            return False
        self._next_usage = now + 1.0
        self._cap_logs()
        procs, rss = self.launcher.usage(self.handle)
        memory = self.config.memory_bytes()
        if procs > self.config.max_procs:
            self._limit("process_limit", f"{procs} processes, over --max-procs "
                                         f"{self.config.max_procs}")
            return True
        if memory and rss > memory:
            self._limit("memory_limit", f"{rss / 2**20:.0f} MB resident, over --max-memory "
                                        f"{self.config.max_memory}")
            return True
        return False

    def _cap_logs(self) -> None:
        """Keep stdout.log and stderr.log under --max-log-mb: past it, only the tail stays."""
        cap = int(self.config.max_log_mb * 2**20)
        for name in (rundir.STDOUT, rundir.STDERR):
            dropped = rundir.keep_tail(self.run_dir / name, cap, cap // 2)
            if dropped:
                self.log.warning("log_capped", iteration=self.iteration, file=name,
                                 dropped_mb=round(dropped / 2**20, 1))

    def _limit(self, reason: str, detail: str) -> None:
        self.log.warning("training_killed", iteration=self.iteration, reason=reason,
                         detail=detail)
        self.kill_for(reason, detail)

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
        watch: HeartbeatWatch | None = None
        while not self.abandoned:
            # Staleness and --run-timeout count from the start; a queued job starts afresh.
            watch = (watch or self._heartbeat_watch()) if self.launched.begun() else None
            if self.launched.wait(self.POLL_S):
                break
            if watch is None:
                continue
            verdict = watch.observe_ranks(rundir.read_heartbeats(self.run_dir),
                                          rundir.output_size(self.run_dir))
            if self._check_usage():
                break
            if verdict is not None and not verdict.kill:
                self.log.warning("no_heartbeat", iteration=self.iteration, hint=verdict.detail)
            elif verdict is not None:
                self._kill_for(verdict)
                break
        if self.abandoned or self.stopping():
            return
        self.emit(Event(EXITED, self.run_id, {"kind": "training", "exit": self._exit()}))

    def _heartbeat_watch(self) -> HeartbeatWatch:
        cfg = self.config
        return HeartbeatWatch(cfg.heartbeat_timeout, cfg.startup_grace, cfg.output_timeout,
                              cfg.run_timeout, self.clock)

    def _exit(self) -> dict[str, Any]:
        assert self.launched is not None
        record = final_exit(self.run_dir, self.started_wall, self.launched.returncode,
                            self.run_id)
        record["leftovers"] = self.cleanup()
        self._cap_logs()  # a burst in the last second before the exit is trimmed too
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
