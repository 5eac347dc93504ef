"""TRAINING's action: launch train.py via the shim, watch heartbeats and budgets, record exit."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlsm.machine import procs
from mlsm.machine.config import Config
from mlsm.machine.events import EXITED, Event
from mlsm.machine.procs import ProcRecord
from mlsm.machine.sentinel import HeartbeatWatch, Verdict, output_size, read_heartbeat
from mlsm.machine.store import read_json_object, write_json_atomic

ATTEMPT_FILES = (
    "train.py", "stdout.log", "stderr.log", "exit.json", "kill.json", "heartbeat.json",
    "metrics.jsonl", "result.json", "space.json", "params_used.json", "tb",
)
POLL_S = 0.25
USR1_PAUSE_S = 0.5


def shim_argv(run_dir: Path, train_argv: list[str]) -> list[str]:
    """The one place the training command line is built (a sandbox wrapper goes here)."""
    return [sys.executable, "-m", "mlsm.hooks.shim", str(run_dir), "--", *train_argv]


def set_aside_attempt(run_dir: Path) -> Path | None:
    """Move an interrupted attempt's files into attempt_K/ so a rerun overwrites nothing."""
    present = [run_dir / n for n in ATTEMPT_FILES if (run_dir / n).exists()]
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


def read_exit(run_dir: Path) -> dict[str, Any] | None:
    """exit.json, or None when absent or unreadable."""
    return read_json_object(run_dir / "exit.json")


def write_kill_note(run_dir: Path, reason: str, detail: str, seconds: float | None = None) -> None:
    """Tell the shim (and a later reader) why the tree is about to be killed."""
    note = {"reason": reason, "detail": detail, "seconds": seconds, "t": time.time()}
    tmp = run_dir / f".kill.json.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):  # advisory and on the STOP path: no fsync here
        tmp.write_text(json.dumps(note))
        os.replace(tmp, run_dir / "kill.json")


def finalize_exit(run_dir: Path, started: float | None, fallback_reason: str) -> dict[str, Any]:
    """The exit record: the shim's, else one written here (the shim itself was killed)."""
    record = read_exit(run_dir)
    if record is not None:
        return record
    note = read_json_object(run_dir / "kill.json") or {}
    now = time.time()
    record = {
        "returncode": None, "signal": "SIGKILL" if note else None,
        "reason": note.get("reason") or fallback_reason, "detail": note.get("detail"),
        "seconds": note.get("seconds"),
        "started_at": started, "ended_at": now,
        "duration_s": (now - started) if started else None, "pid": None,
    }
    with contextlib.suppress(OSError):
        write_json_atomic(run_dir / "exit.json", record)
    return record


class TrainingRun:
    """One launched (or re-attached) training tree and the thread that watches it."""

    def __init__(self, exp_dir: Path, run_dir: Path, iteration: int, config: Config,
                 emit: Callable[[Event], None], log: Any,
                 clock: Callable[[], float] = time.monotonic,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.exp_dir, self.run_dir, self.iteration = exp_dir, run_dir, iteration
        self.config, self.emit, self.log, self.clock = config, emit, log, clock
        self.stopping = stopping
        self.popen: subprocess.Popen[bytes] | None = None
        self.rec: ProcRecord | None = None
        self.started_wall: float | None = None
        self._abandon = threading.Event()
        self.killing = False

    def spawn(self) -> ProcRecord:
        """Prepare the run folder and start the shim; it waits for `release` before training."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        moved = set_aside_attempt(self.run_dir)
        if moved:
            self.log.info("attempt_set_aside", iteration=self.iteration, to=str(moved))
        train = self.exp_dir / "train.py"
        if train.is_file():
            shutil.copy2(train, self.run_dir / "train.py")
        env = procs.training_env(os.environ, self.config.train_env)
        env.update(MLSM_RUN_DIR=str(self.run_dir), MLSM_DIR=str(self.exp_dir),
                   MLSM_ITERATION=str(self.iteration))
        if self.config.tensorboard:
            env["MLSM_TENSORBOARD"] = "1"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        out = os.open(self.run_dir / "stdout.log", flags, 0o644)
        err = os.open(self.run_dir / "stderr.log", flags, 0o644)
        try:
            self.popen, self.rec = procs.spawn(
                shim_argv(self.run_dir, self.config.train_argv()), self.exp_dir, env, out,
                stdin=subprocess.PIPE, stderr=err, record_cmd=self.config.train_argv())
        finally:
            os.close(out)
            os.close(err)
        self.started_wall = time.time()
        return self.rec

    def release(self) -> None:
        """The identity is persisted: let the shim start training, then watch it."""
        assert self.popen is not None and self.popen.stdin is not None
        with contextlib.suppress(OSError):
            self.popen.stdin.write(b"go\n")
            self.popen.stdin.close()
        self._start_thread()

    def cancel(self) -> None:
        """The identity could not be persisted: close the pipe so the shim exits unstarted."""
        if self.popen is not None and self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
            procs.wait_exit(self.popen, None)

    def attach(self, rec: ProcRecord, started_wall: float | None) -> None:
        """Watch a training a previous daemon started (not our child: poll its identity)."""
        self.rec, self.started_wall = rec, started_wall
        self._start_thread()

    def abandon(self) -> None:
        """Stop watching without reporting (the daemon is shutting down or STOP killed it)."""
        self._abandon.set()

    def _start_thread(self) -> None:
        threading.Thread(target=self._watch, name=f"train-{self.run_dir.name}",
                         daemon=True).start()

    def _exited(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is not None
        assert self.rec is not None
        return not procs.same_process(self.rec)

    def _watch(self) -> None:
        assert self.rec is not None
        watch = HeartbeatWatch(self.config.heartbeat_timeout, self.config.startup_grace,
                               self.config.output_timeout, self.config.run_timeout, self.clock)
        while not self._abandon.is_set():
            if self.popen is not None:
                procs.wait_exit(self.popen, POLL_S)
            elif self._abandon.wait(POLL_S):
                break
            if self._exited():
                break
            verdict = watch.observe(read_heartbeat(self.run_dir), output_size(self.run_dir))
            if verdict is not None and not verdict.kill:
                self.log.warning("no_heartbeat", iteration=self.iteration, hint=verdict.detail)
            elif verdict is not None:
                self._kill_for(verdict)
                break
        if self._abandon.is_set() or self.stopping():
            return
        record = finalize_exit(self.run_dir, self.started_wall, "lost")
        self.emit(Event(EXITED, self.rec.run_id, {"kind": "training", "exit": record}))

    def _kill_for(self, verdict: Verdict) -> None:
        assert self.rec is not None
        self.log.warning("training_killed", iteration=self.iteration, reason=verdict.reason,
                         seconds=round(verdict.seconds, 1), detail=verdict.detail)
        self.kill(verdict.reason, verdict.detail, verdict.seconds)

    def kill(self, reason: str, detail: str, seconds: float | None = None) -> None:
        """Record why, dump stacks (SIGUSR1) when stale, then kill the whole tree."""
        assert self.rec is not None
        self.killing = True
        write_kill_note(self.run_dir, reason, detail, seconds)
        if reason == "stale_heartbeat" and procs.signal_main(self.rec, signal.SIGUSR1):
            self._abandon.wait(USR1_PAUSE_S)
        procs.kill_tree(self.rec, self.config.grace)
        if self.popen is not None:
            procs.wait_exit(self.popen, None)
