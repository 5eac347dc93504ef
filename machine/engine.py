"""The engine: one thread that owns an experiment's state machine and consumes its event queue."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from transitions import Machine

from mlsm.handlers import params
from mlsm.handlers.agent_step import AgentRun, prepare_step
from mlsm.handlers.agents import get_backend
from mlsm.handlers.agents.base import AgentBackend, AgentOutcome, Role, check_product, read_decision
from mlsm.handlers.inputs import file_signature, read_text_file
from mlsm.handlers.launchers import get_launcher, launcher_of, local, sandbox
from mlsm.handlers.lifecycle import hook_commands, run_hooks
from mlsm.handlers.prompting import instructions
from mlsm.handlers.training import TrainingRun
from mlsm.hooks import rundir
from mlsm.hooks.layout import Layout
from mlsm.machine.core import archive, provenance, results
from mlsm.machine.core import events as ev
from mlsm.machine.core.config import Config
from mlsm.machine.core.errors import ConfigError, InputError, LockedError, MlsmError
from mlsm.machine.core.events import Event
from mlsm.machine.core.journal import make_logger
from mlsm.machine.core.results import Row
from mlsm.machine.core.states import RESUMABLE, TRANSITIONS, State
from mlsm.machine.core.status import Status, read_status, write_status
from mlsm.machine.core.store import (
    StoreError,
    now_iso,
    parse_iso,
    remove_stray_temps,
    write_atomic,
    write_json_atomic,
)
from mlsm.machine.slots import TrainingSlots, pool_for
from mlsm.machine.supervisor import Recorded, Supervisor

RECONCILE_S = 30.0
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
DIRTY_RETRY_S = 2.0
ENV_RETRIES = 6  # doubling from --retry-backoff (2 s): about 2 minutes before FAILED
ENV_BACKOFF_MAX_S = 60.0
AGENT_ROLE: dict[State, Role] = {State.PLANNING: "plan", State.CODING: "code",
                                 State.ANALYZING: "analyze", State.REPORTING: "report"}

BACKGROUND_NICE = 10


class _Model:
    """The object transitions drives; its conditions read status.previous/failed_state."""

    state: str

    def __init__(self, engine: Experiment) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        if name.startswith("left_"):
            return lambda *_: self._engine.status.previous_state == name[5:]
        if name.startswith("failed_in_"):
            return lambda *_: (self._engine.status.failed_state or "planning") == name[10:]
        raise AttributeError(name)


def retry_failed(exp_dir: Path) -> str:
    """Send a FAILED run back to the state that failed. With a daemon running, leave RETRY for
    it (it consumes the file); returns the state, or "queued" when the daemon will do it."""
    layout = Layout(exp_dir)
    try:
        lock = acquire_lock(exp_dir)
    except LockedError:
        status = read_status(exp_dir)
        _require_failed(exp_dir, status)
        layout.retry.touch()
        return "queued"
    try:
        status = read_status(exp_dir)
        _require_failed(exp_dir, status)
        assert status is not None
        target = status.failed_state or State.PLANNING.value
        status.state, status.error, status.step_attempt = target, None, 0
        status.agent = status.training = None
        status.entered_at = now_iso()
        status.seq += 1
        write_status(exp_dir, status)
        return target
    finally:
        lock.close()


def restart(exp_dir: Path) -> str:
    """Start over: archive this attempt now, or leave RESTART for a running daemon (which
    consumes it); returns the archive folder, or "queued"."""
    try:
        lock = acquire_lock(exp_dir)
    except LockedError:
        Layout(exp_dir).restart.touch()
        return "queued"
    try:
        try:
            status = read_status(exp_dir)
        except InputError:
            status = None  # a corrupt status.json is archived as it is
        return str(archive.archive_attempt(exp_dir, status.given if status else None))
    finally:
        lock.close()


def _require_failed(exp_dir: Path, status: Status | None) -> None:
    if status is None or status.state != State.FAILED:
        state = "not started" if status is None else status.state
        raise InputError(f"{exp_dir} is not FAILED ({state}): only a failed run can be retried")


class DirLock:
    """The experiment's single-daemon lock: a flock on the directory itself, which no unlink
    can bypass, plus `.mlsm/lock` holding the pid for people and views to read."""

    def __init__(self, exp_dir: Path) -> None:
        self._dir_fd = os.open(exp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._fh: IO[str] | None = None
        if not _flock_with_patience(self._dir_fd):
            os.close(self._dir_fd)
            raise LockedError(_locked_sentence(exp_dir))
        layout = Layout(exp_dir)
        try:
            layout.private.mkdir(exist_ok=True)
            self._fh = layout.lock.open("a+", encoding="utf-8")
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.write(f"{os.getpid()}\n")
            self._fh.flush()
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1


def _flock_with_patience(fd: int, tries: int = 5) -> bool:
    """LOCK_EX, retried briefly: a view probing the lock holds it for microseconds."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            if attempt + 1 < tries:
                time.sleep(0.02)  # a probe's hold, not synchronisation with our own threads
    return False


def _locked_sentence(exp_dir: Path) -> str:
    try:
        holder = Layout(exp_dir).lock.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        holder = "unknown"
    return (f"another mlsm daemon (pid {holder}) is already running on {exp_dir}: "
            f"stop it first, or use `mlsm status {exp_dir}`")


def acquire_lock(exp_dir: Path) -> DirLock:
    """Hold the experiment's lock for this process's life; LockedError names the holder."""
    return DirLock(exp_dir)


class Experiment:
    """One experiment directory: its machine, its queue, its engine thread and supervisor."""

    def __init__(self, exp_dir: Path, config: Config, *, console: IO[str] | None = sys.stderr,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 boottime: Callable[[], float] = lambda: time.clock_gettime(
                     time.CLOCK_BOOTTIME),
                 backend: AgentBackend | None = None,
                 on_root_replaced: Callable[[Experiment], None] | None = None,
                 on_finished: Callable[[], None] | None = None,
                 slots: TrainingSlots | None = None) -> None:
        self.dir = exp_dir.resolve()
        self.layout = Layout(self.dir)
        self.config = config
        self.clock, self.wall, self.boottime = clock, wall, boottime
        self.queue: queue.Queue[Event] = queue.Queue()
        self.finished = threading.Event()
        self.status = Status(max_iterations=config.max_iterations)
        self.on_root_replaced = on_root_replaced
        self.on_finished = on_finished
        self.slots = slots
        self._console = console
        self._backend = backend
        self._stopping = False
        self._shutting_down = False
        self._dirty = False
        self._retry_timer: threading.Timer | None = None
        self._retry_token = 0
        self._seen_problems: dict[str, Any] = {}
        self._lock_fh: DirLock | None = None
        self._root_ino: int | None = None
        self._thread: threading.Thread | None = None
        self._hook_threads: list[threading.Thread] = []
        self.idle_problem: str | None = None  # why IDLE cannot start (an unusable IDEA.md)
        self._env_failures = 0  # environment errors in a row (a full disk, permissions)
        self._sandbox = False
        self._hooks: dict[str, list[list[str]]] = {}
        self._report_before = False  # REPORT.md existed when the current training started
        self._committer: ThreadPoolExecutor | None = None
        self._commits: dict[int, Future[str | None]] = {}
        self.log: Any = None
        self.supervisor: Supervisor | None = None
        self.machine: Machine | None = None
        self.model = _Model(self)

    # ----- lifecycle -------------------------------------------------------------------
    def open(self) -> None:
        """Lock the directory, read status.json (errors are InputError), build the machine."""
        self._lock_fh = acquire_lock(self.dir)
        status = read_status(self.dir)
        self.log, self._sink = make_logger(self.layout.logs, self.dir.name, self._console)
        self.supervisor = Supervisor(self.config.grace, self.log, self._recorded)
        for tmp in remove_stray_temps(self.dir, self.layout.private):
            self.log.info("stray_temp_removed", path=str(tmp))
        if status is not None:
            self.status = status
        self.status.max_iterations = self.config.max_iterations
        self.status.daemon_pid = os.getpid()
        self._write_config()
        self._sandbox = self._resolve_sandbox()
        self.slots = pool_for(self.config, self.slots)  # with GPUs: a pool of device groups
        devices = (self.status.training or {}).get("devices")
        if self.slots is not None and self.status.state == State.TRAINING and devices:
            self.slots.force(self, str(devices))  # still running there: nobody else gets them
        if self.config.params:
            params.parse(self.config.params, str(self.layout.toml))  # a bad space: now
        self._hooks = hook_commands(self.dir)  # read once: training cannot plant new ones
        self.machine = Machine(
            model=self.model, states=self._state_defs(), transitions=TRANSITIONS,
            initial=self.status.state, auto_transitions=False, queued=True,
            send_event=True, before_state_change=self._before_change,
            after_state_change=self._after_change, finalize_event=self._finalize,
        )
        self._root_ino = self._ino()

    def _resolve_sandbox(self) -> bool:
        """Whether trainings run in bubblewrap: `auto` falls back with one warning line."""
        mode = self.config.sandbox
        if mode == "none":
            return False
        problem = sandbox.preflight()
        if problem is None:
            binds = self._binds()
            self._check_cuda(binds)
            return True
        if mode == "bwrap":
            raise ConfigError(f"--sandbox bwrap: {problem}")
        self.log.warning("sandbox_unavailable", detail=f"training runs without a sandbox: "
                                                       f"{problem}")
        return False

    def _binds(self) -> tuple[sandbox.Bind, ...]:
        try:
            return tuple(map(sandbox.Bind.parse, self.config.sandbox_bind))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _check_cuda(self, binds: tuple[sandbox.Bind, ...]) -> None:
        """On a GPU machine: the sandbox must not hide CUDA from torch (checked once)."""
        probe = self.layout.private / "sandbox-check"
        probe.mkdir(parents=True, exist_ok=True)
        python = self.config.train_argv()[0] if "python" in Path(
            self.config.train_argv()[0]).name else sys.executable
        problem = sandbox.cuda_mismatch(python, sandbox.Policy(
            self.dir, probe, binds, self.config.allow_network, Path.home(),
            os.environ.get("CUDA_VISIBLE_DEVICES")))
        if problem:
            raise ConfigError(problem)

    def backend(self) -> AgentBackend:
        if self._backend is None:
            self._backend = get_backend(self.config.agent)
        return self._backend

    @property
    def sup(self) -> Supervisor:
        assert self.supervisor is not None, "open() first"
        return self.supervisor

    def _write_config(self) -> None:
        """The resolved config and the agent instructions, for agents and `mlsm watchdog`."""
        doc = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "sources"}
        with contextlib.suppress(OSError):
            write_json_atomic(self.layout.config_json, doc)
            write_atomic(self.layout.instructions, instructions().encode())

    def _state_defs(self) -> list[dict[str, Any]]:
        enter = {
            State.PLANNING: self._enter_agent_state, State.CODING: self._enter_coding,
            State.TRAINING: self._enter_training, State.ANALYZING: self._enter_agent_state,
            State.REPORTING: self._enter_agent_state, State.DONE: self._enter_terminal,
            State.FAILED: self._enter_terminal,
        }
        return [{"name": s.value, **({"on_enter": [enter[s]]} if s in enter else {})}
                for s in State]

    def start(self) -> None:
        """Start the engine thread and the supervisor's killer (after `open`)."""
        self.sup.start(after_stop=lambda: self.post(Event(ev.STOP)))
        self._thread = threading.Thread(target=self._engine_loop, name=f"engine-{self.dir.name}",
                                        daemon=True)
        self._thread.start()

    def post(self, event: Event) -> None:
        self.queue.put(event)

    def wake(self) -> None:
        self.post(Event(ev.WAKE))

    def request_stop(self) -> None:
        """STOP appeared: the supervisor's killer acts now; the engine records STOPPED after."""
        self._stopping = True
        self.sup.request_stop()

    def shutdown(self, timeout: float | None = None, wait: bool = True) -> None:
        """Kill children cleanly, persist, leave the run resumable; waits for the engine."""
        self.post(Event(ev.SHUTDOWN))
        if wait:
            self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait for a shutdown begun with `shutdown(wait=False)`."""
        if self._thread is not None:
            self._thread.join(timeout)
        self.sup.close(timeout)

    def alive(self) -> bool:
        """Whether the engine thread still runs (after a shutdown: it is wedged)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def state(self) -> State:
        return State(self.model.state)

    # ----- the engine thread -----------------------------------------------------------
    def _engine_loop(self) -> None:
        self._guard(self._restore)
        self._guard(self._reconcile)
        while True:
            # Jitter keeps the periodic reconciles of many experiments from waking in lockstep.
            periodic = RECONCILE_S * random.uniform(0.75, 1.25)
            timeout = DIRTY_RETRY_S if self._dirty or self._root_ino is None \
                else min(periodic, self._budget_left_s())
            try:
                event = self.queue.get(timeout=timeout)
            except queue.Empty:
                event = Event(ev.WAKE, data={"periodic": True})
            if event.kind == ev.SHUTDOWN:
                self._guard(self._shutdown)
                return
            self._guard(functools.partial(self._handle, event))
            self._guard(self._reconcile)

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # the engine must outlive any one bad event
            self.log.exception("engine_error", error=repr(exc))
            self.status.error = f"internal error ({exc!r})"[:500] + "; see logs/runner.log"
            with contextlib.suppress(Exception):
                self._persist()

    def _handle(self, event: Event) -> None:
        if event.kind == ev.EXITED:
            self._on_exited(event)
        elif (event.kind == ev.RETRY and event.data.get("token") == self._retry_token
              and self.state.value == event.data.get("state") and not self._stopping):
            self._run_action()

    def _on_exited(self, event: Event) -> None:
        run = self.sup.current
        if run is None or event.run_id != run.run_id:
            return  # an exit from a run we no longer care about
        if self._stopping or self.layout.stop.exists():
            return  # STOP handles it
        self.sup.release(event.run_id)
        if event.data["kind"] == "training":
            self._training_finished(event.data["exit"])
        else:
            self._agent_finished(event.data["outcome"])

    # ----- reconcile: the filesystem is the truth --------------------------------------
    def _reconcile(self) -> None:
        if not self._check_root():
            return
        if self._dirty:
            self._persist()
        state = self.state
        if self.layout.restart.exists() or self.layout.restart.is_symlink():
            self._consume_restart()
            return
        if self.layout.retry.exists() or self.layout.retry.is_symlink():
            self._consume_retry(state)
            return
        if state == State.DONE:
            self._notice_new_idea()
            return
        if self._report_appeared(state):
            self._kill_all("stopped", "REPORT.md appeared")
            self.status.stop_reason = self.status.stop_reason or \
                "REPORT.md appeared, which ends the run"
            self.model.reported()
            return
        if self._reconcile_stop(state):
            return
        if state == State.IDLE:
            self._maybe_start()
        elif state == State.CODING and self.status.waiting_for and self.sup.current is None:
            self._to_training()
        elif state == State.TRAINING and self.status.waiting_for and self.sup.current is None:
            self._enter_training(None)  # resumed into TRAINING, waiting for a slot
        elif state in (State.PLANNING, State.CODING, State.TRAINING):
            self._check_wall_budget(state)

    def _reconcile_stop(self, state: State) -> bool:
        """Record STOP / its removal; True when the machine moved."""
        stop_present = self.layout.stop.exists()
        if stop_present and state in RESUMABLE:
            self._stopping = True
            self._kill_all("stopped", "STOP was requested")
            self.model.stop()
            return True
        if not stop_present and state == State.STOPPED:
            self._stopping = False
            self.model.resume()
            return True
        if not stop_present and self._stopping and state in RESUMABLE:
            # STOP came and went before the engine saw it: the killer already acted, so
            # record the stop and the resume, which re-runs the interrupted step.
            self._kill_all("stopped", "STOP was requested")
            self.model.stop()
            self._stopping = False
            self.model.resume()
            return True
        return stop_present

    def _consume_restart(self) -> None:
        """RESTART (or `mlsm restart` with a daemon running): archive this attempt, start over."""
        with contextlib.suppress(OSError):
            self.layout.restart.unlink()
        self._kill_all("restart", "the run is starting over")
        self._sink.close()  # logs/ moves into the archive; the journal reopens in a new one
        dest = archive.archive_attempt(self.dir, self.status.given)
        self.status = Status(max_iterations=self.config.max_iterations, daemon_pid=os.getpid())
        assert self.machine is not None
        self.machine.set_state(State.IDLE.value)
        self._stopping = False
        self.finished.clear()
        self._persist()
        self.log.warning("restarted", archive=str(dest))

    def _consume_retry(self, state: State) -> None:
        with contextlib.suppress(OSError):
            self.layout.retry.unlink()
        if state != State.FAILED:
            self.log.warning("retry_ignored", state=state.value,
                             detail="RETRY only applies to a FAILED run; the file was removed")
            return
        self.log.info("retry_requested", to=self.status.failed_state or State.PLANNING.value)
        self.finished.clear()
        self.model.retry()

    def _notice_new_idea(self) -> None:
        """A changed IDEA.md under a finished run: say how to start over (status and log)."""
        text, _ = read_text_file(self.layout.idea)
        sha = hashlib.sha256(text.encode()).hexdigest() if text else None
        if sha is None or self.status.idea_sha in (None, sha):
            return
        hint = (f"IDEA.md changed after this run ended; to start over with it: "
                f"`mlsm restart {self.dir}`")
        if self.status.waiting_for != hint:
            self.status.waiting_for = hint
            self.log.warning("idea_changed", hint=hint)
            self._persist()

    def _report_appeared(self, state: State) -> bool:
        if state == State.REPORTING and self.sup.current is not None:
            return False  # the report agent is writing it; its exit advances the machine
        if state == State.TRAINING and not self._report_before:
            return False  # the training may have written it: judged when it exits
        if state == State.FAILED and not self.layout.report.exists():
            return False
        return check_product("report", self.layout.report) is None

    def _maybe_start(self) -> None:
        text, problem = read_text_file(self.layout.idea)
        if text is None:
            self._idle_because(problem or f"there is no IDEA.md in {self.dir} yet: write the "
                                          f"experiment's idea into it to start", problem)
            return
        self.idle_problem = None
        self.status.error = None
        if not self.status.history:
            self._begin_attempt(text)
        self.model.start()

    def _begin_attempt(self, idea: str) -> None:
        """A new run: when it began (wall and boot clock), which products are the person's,
        the idea it starts from; logs of an attempt whose status.json is gone are archived."""
        s = self.status
        s.started_at = s.started_at or now_iso()
        s.started_boot = s.started_boot or {"boot_id": local.boot_id(), "t": self.boottime()}
        s.given = [name for name in archive.PRODUCTS if (self.dir / name).is_file()]
        s.idea_sha = hashlib.sha256(idea.encode()).hexdigest()
        self._sink.close()  # its files may move with the stale logs; it reopens lazily
        stale = archive.archive_stale_logs(self.dir)
        if stale is not None:
            self.log.warning("stale_logs_archived", to=str(stale),
                             detail="logs/ of an earlier attempt whose status.json is gone; "
                                    "none of it is read as this run's")

    def _idle_because(self, sentence: str, problem: str | None) -> None:
        """IDLE cannot start: log it once, show it in status.json, wake `mlsm run` to exit."""
        if problem:
            self._log_once("idea", file_signature(self.layout.idea), "idea_unusable",
                           problem=problem)
        else:
            self._log_once("idea", None, "waiting_for_idea", "info", path=str(self.layout.idea))
        if self.idle_problem != sentence:
            self.idle_problem = sentence
            if problem and self.status.error != problem:
                self.status.error = problem
                self._persist()
            if self.on_finished:
                self.on_finished()

    def _log_once(self, key: str, signature: Any, event: str, level: str = "error",
                  **kw: Any) -> None:
        """Log `event` once per `signature` of `key` (a problem is not repeated every tick)."""
        if self._seen_problems.get(key, object()) != signature:
            self._seen_problems[key] = signature
            getattr(self.log, level)(event, **kw)

    def _check_root(self) -> bool:
        """False while the directory is gone; a recreated directory is adopted afresh."""
        ino = self._ino()
        if ino is None:
            self._log_once("root", None, "root_missing", path=str(self.dir))
            self._root_ino = None  # poll for its return on a short timeout
            return False
        if ino != self._root_ino:
            self._root_ino = ino
            self._seen_problems.pop("root", None)
            self._adopt_new_root()
            if self.on_root_replaced:
                self.on_root_replaced(self)
        return True

    def _adopt_new_root(self) -> None:
        """The directory was deleted and recreated: its old run is gone; start from its files."""
        self._kill_all("stopped", "the experiment directory was replaced")
        self._sink.close()  # reopens lazily, in the new logs/
        if self._lock_fh is not None:
            self._lock_fh.close()
        self._lock_fh = acquire_lock(self.dir)
        self.status = read_status(self.dir) or Status(max_iterations=self.config.max_iterations)
        self.status.daemon_pid = os.getpid()
        assert self.machine is not None
        self.machine.set_state(self.status.state)
        self._stopping = False
        self._write_config()
        self.log.warning("root_replaced", path=str(self.dir), state=self.status.state)
        self._restore()

    def _ino(self) -> int | None:
        try:
            return self.dir.stat().st_ino
        except OSError:
            return None

    # ----- budgets ---------------------------------------------------------------------
    def hours_spent(self) -> float:
        """Hours since the run started: on the boot clock (wall-clock steps do not move it),
        or, after a reboot, by the wall clock."""
        boot = self.status.started_boot or {}
        if boot.get("boot_id") == local.boot_id() and rundir.finite(boot.get("t")) is not None:
            return max(0.0, (self.boottime() - float(boot["t"])) / 3600)
        started = parse_iso(self.status.started_at)
        return 0.0 if started is None else max(0.0, (self.wall() - started) / 3600)

    def _budgets(self) -> results.Budgets:
        c = self.config
        return results.Budgets(
            max_iterations=c.max_iterations, max_failures=c.max_failures, patience=c.patience,
            max_hours=c.max_hours, max_cost_usd=c.max_cost_usd, hours=self.hours_spent(),
            cost_usd=self.status.cost_usd)

    def _budget_left_s(self) -> float:
        """Seconds until --max-hours runs out (wake then), at least a short moment."""
        if not self.config.max_hours or self.status.started_at is None \
                or self.state not in (State.PLANNING, State.CODING, State.TRAINING):
            return RECONCILE_S
        left = (self.config.max_hours - self.hours_spent()) * 3600
        return left + 0.05 if left > 0 else 1.0

    def _check_wall_budget(self, state: State) -> None:
        reason = results.hours_reason(self._budgets())
        if reason is None:
            return
        if state == State.TRAINING:
            run = self.sup.current
            if isinstance(run, TrainingRun) and run.handle is not None and not run.killing \
                    and not run.stopping():
                self.log.warning("budget_spent", detail=reason)
                run.killing = True
                threading.Thread(target=self.sup.kill_run, args=(run, "max_hours", reason),
                                 daemon=True).start()
            return
        self._kill_all("max_hours", reason)
        self.status.stop_reason = reason
        self.model.conclude()

    def _budget_reason(self) -> str | None:
        s = self.status
        return results.budget_reason(s.history, s.objective, s.iteration, self._budgets())

    # ----- transitions callbacks -------------------------------------------------------
    def _before_change(self, event: Any) -> None:
        src, dest = event.transition.source, event.transition.dest
        s = self.status
        s.state, s.entered_at = dest, now_iso()
        if dest == State.STOPPED:
            s.previous_state = src
        elif src == State.STOPPED:
            s.previous_state = None
        if dest == State.FAILED:
            s.failed_state = src  # where a retry sends the run back
        elif src == State.FAILED:
            s.error, s.failed_state = None, None
        if dest != src:
            s.step_attempt = 0
        if src == State.TRAINING and dest != src and self.slots is not None:
            self.slots.release(self)
        # The iteration moves with the transition itself, so one persist records both.
        if event.event.name == "planned":
            s.iteration = 1  # iteration 1 is the first CODING → TRAINING → ANALYZING
        elif event.event.name == "iterate":
            s.iteration += 1
        if dest in (State.STOPPED, State.DONE, State.FAILED):
            self._kill_all("stopped", f"the run is {dest}")
            s.agent = s.training = None
        self.log.info("transition", trigger=event.event.name, src=src, dest=dest,
                      iteration=s.iteration)

    def _after_change(self, event: Any) -> None:
        dest = event.transition.dest
        self._hook_threads = [t for t in self._hook_threads if t.is_alive()]
        self._hook_threads += run_hooks(self.dir, self._hooks.get(dest, []), dest,
                                        event.transition.source, self.status.iteration,
                                        self.config.hook_timeout, self.config.grace, self.log)

    def _finalize(self, event: Any) -> None:
        self._persist()

    def _persist(self) -> None:
        self.status.seq += 1
        try:
            write_status(self.dir, self.status)
        except StoreError as exc:
            if not self._dirty:
                self.log.error("status_write_failed", error=str(exc))
            self._dirty = True
            return
        if self._dirty:
            self.log.info("status_write_recovered")
        self._dirty = False

    def _run_action(self) -> None:
        """(Re-)run the current state's action, as on entering it."""
        state = self.state
        if state == State.CODING:
            self._enter_coding(None)
        elif state == State.TRAINING:
            self._enter_training(None)
        elif state in AGENT_ROLE:
            self._enter_agent_state(None)

    def _enter_terminal(self, event: Any) -> None:
        self._kill_all("stopped", "the run ended")
        if self.state == State.DONE:
            self.status.complete = True
            self.log.info("run_done", reason=self.status.stop_reason)
        else:
            self.log.error("run_failed", error=self.status.error)
        self._mark_finished()

    def _mark_finished(self) -> None:
        self.finished.set()
        if self.on_finished:
            self.on_finished()

    def _enter_coding(self, event: Any) -> None:
        if self.status.objective is None:
            self._settle_objective(None)
        if self.status.iteration == 1 and check_product("code", self.layout.train) is None:
            self.log.info("train_given", detail="train.py runs unchanged as the baseline")
            self._to_training()
            return
        self._start_agent("code")

    def _enter_agent_state(self, event: Any) -> None:
        role = AGENT_ROLE[self.state]
        if role == "plan" and check_product("plan", self.layout.plan) is None:
            self.log.info("plan_given", detail="PLAN.md is present: planning skipped")
            self.model.planned()
            return
        if role == "analyze" and check_product("analyze", self._decision_path()) is None:
            self._decide()
            return
        self._start_agent(role)

    # ----- the objective, once ---------------------------------------------------------
    def _settle_objective(self, result: dict[str, Any] | None) -> None:
        plan, _ = read_text_file(self.layout.plan)
        c = self.config
        objective = results.settle(c.objective, c.goal, c.sources.get("objective"), plan, result)
        if objective is not None:
            self.status.objective = objective
            self.log.info("objective_settled", name=objective.name, goal=objective.goal,
                          source=objective.source)

    # ----- agent steps -----------------------------------------------------------------
    def _decision_path(self) -> Path:
        return self.layout.product("analyze", self.status.iteration)

    def _prompt_context(self) -> dict[str, Any]:
        idea, _ = read_text_file(self.layout.idea)
        s = self.status
        objective = s.objective
        return {
            "idea": idea or "",
            "history": results.history_markdown(s.history, objective),
            "best": results.best_sentence(s.history, objective),
            "objective": f"{objective.goal} {objective.name}" if objective else "not settled yet",
            "objective_note": (f"mlsm was told to {objective.goal} `{objective.name}`: declare "
                               f"exactly that." if objective else ""),
        }

    def _start_agent(self, role: Role) -> None:
        if self._stopping:
            return
        try:
            step = prepare_step(role, self.dir, self.layout.step_dir(role, self.status.iteration),
                                self.status.iteration, self.status.step_attempt + 1,
                                self.config, self._prompt_context(), self.status.cost_usd)
        except OSError as exc:
            self._environment_error(f"cannot prepare the {role} step", exc)
            return
        run = AgentRun(self.backend(), step, get_launcher("local"), step.run_dir, self.post,
                       self.log, self.clock, stopping=self._halting)
        try:
            handle = run.spawn()
        except OSError as exc:
            if exc.errno in DISK_ERRNOS:
                self._environment_error(f"cannot start the {role} agent", exc)
                return
            self._step_failed(role, AgentOutcome(
                ok=False, reason=f"the {role} agent could not start: {exc.strerror or exc}"))
            return
        self.sup.adopt(run)
        self._env_failures = 0
        self.status.agent = {**handle, "role": role, "transcript": str(step.transcript)}
        self._persist()
        self.log.info("agent_started", role=role, pid=handle.get("pid"), attempt=step.attempt,
                      transcript=str(step.transcript))
        self._log_once(f"access-{role}", None, "agent_access", "info", role=role,
                       access=self.backend().access(step))
        run.watch()

    def _halting(self) -> bool:
        return self._stopping or self._shutting_down

    def _agent_finished(self, outcome: AgentOutcome) -> None:
        role = AGENT_ROLE[self.state]
        self.status.agent = None
        self.status.cost_usd = round(self.status.cost_usd + outcome.cost_usd, 6)
        self.log.info("agent_exited", role=role, ok=outcome.ok, reason=outcome.reason,
                      turns=outcome.turns, cost_usd=outcome.cost_usd)
        if not outcome.ok:
            self._step_failed(role, outcome)
            return
        self.status.error = None
        cost = results.cost_reason(self._budgets())
        if cost and role in ("plan", "code"):
            self.status.stop_reason = cost
            self.model.conclude()
        elif role == "plan":
            self.model.planned()
        elif role == "code":
            self._to_training()
        elif role == "analyze":
            self._decide()
        else:
            self.model.reported()

    def _step_failed(self, role: Role, outcome: AgentOutcome) -> None:
        s = self.status
        s.step_attempt += 1
        s.agent = None
        s.error = outcome.reason
        if outcome.retryable and s.step_attempt <= self.config.agent_retries:
            delay = self.config.retry_backoff * 2 ** (s.step_attempt - 1)
            self.log.warning("agent_step_failed", role=role, attempt=s.step_attempt,
                             retry_in_s=delay, reason=outcome.reason)
            self._persist()
            self._schedule_retry(delay)
            return
        tries = f"after {s.step_attempt} attempt{'s' if s.step_attempt > 1 else ''}"
        s.error = f"the {role} step failed {tries}: {outcome.reason}"
        self.model.fail()

    def _environment_error(self, what: str, exc: OSError) -> None:
        """A full disk or the like: not the agent's fault. Retry the action with a doubling
        back-off from --retry-backoff (up to a minute), ENV_RETRIES times, then FAILED."""
        self._env_failures += 1
        cause = f"{what}: {exc.strerror or exc}"
        if self._env_failures > ENV_RETRIES:
            self.status.error = (f"{cause}; gave up after {ENV_RETRIES} retries (free disk "
                                 f"space or fix permissions in {self.dir}, then `mlsm retry`)")
            self.model.fail()
            return
        base = self.config.retry_backoff or DIRTY_RETRY_S
        delay = min(base * 2 ** (self._env_failures - 1), ENV_BACKOFF_MAX_S)
        self.status.error = (f"{cause}; retry {self._env_failures} of {ENV_RETRIES} in "
                             f"{delay:g} s (free disk space or fix permissions in {self.dir})")
        self.log.error("environment_error", detail=self.status.error)
        self._persist()  # `mlsm status` shows "retry N of 10" at once
        self._schedule_retry(delay)

    def _schedule_retry(self, delay: float) -> None:
        self._retry_token += 1
        event = Event(ev.RETRY, data={"token": self._retry_token, "state": self.state.value})
        self._retry_timer = threading.Timer(delay, self.post, args=(event,))
        self._retry_timer.daemon = True
        self._retry_timer.start()

    # ----- analysis and iterations -----------------------------------------------------
    def _decide(self) -> None:
        decision = read_decision(self._decision_path())
        self.log.info("decision", iteration=self.status.iteration,
                      decision=decision["decision"], reason=decision["reason"])
        row = self._row(self.status.iteration)
        if row is not None:
            row.decision, row.decision_reason = decision["decision"], decision["reason"][:500]
            self._write_ledger()
        if decision["decision"] == "finish":
            self.status.stop_reason = f"the agent decided to finish: {decision['reason'][:500]}"
            self.model.conclude()
            return
        budget = self._budget_reason()
        if budget:
            self.status.stop_reason = budget
            self.model.conclude()
            return
        self.model.iterate()

    def _row(self, iteration: int) -> Row | None:
        return next((r for r in self.status.history if r.iteration == iteration), None)

    def _write_ledger(self) -> None:
        text = results.ledger_text(self.status.history, self.status.objective)
        try:  # derived from status.json, so rewritten whole and not fsynced
            write_atomic(self.layout.ledger, text.encode(), durable=False)
        except OSError as exc:
            self.log.error("ledger_write_failed", error=exc.strerror or str(exc))

    # ----- training --------------------------------------------------------------------
    def _to_training(self) -> None:
        """CODING is done: train now, or wait in CODING for a slot (--max-parallel, GPUs)."""
        if self._take_slot():
            self.model.coded()

    def _take_slot(self) -> bool:
        """Hold a training slot (and GPU group), or wait for one to free up (False)."""
        if self.slots is None or self.slots.try_acquire(self, self.wake):
            self.status.waiting_for = None
            return True
        if not self.status.waiting_for:
            self.status.waiting_for = self.slots.waiting_sentence()
            self.log.info("waiting_for_slot", detail=self.status.waiting_for)
            self._persist()
        return False

    def _enter_training(self, event: Any) -> None:
        if self._stopping or not self._take_slot():  # a resume from STOPPED waits here
            return
        run = self._training_run()
        try:
            handle = run.spawn()
        except OSError as exc:
            self._environment_error("cannot start training", exc)
            return
        except MlsmError as exc:  # e.g. the agent chose parameters outside [params]
            self.log.error("training_not_started", iteration=self.status.iteration,
                           error=str(exc))
            self._training_finished({"returncode": None, "reason": "not_started",
                                     "detail": str(exc)})
            return
        self.status.training = {**handle, "run_dir": str(run.run_dir), "resumed": run.resumed}
        self._persist()
        if self._dirty:  # identity not on disk: never start what a restart could start twice
            run.cancel()
            self.status.training = None
            self._schedule_retry(DIRTY_RETRY_S)
            return
        self.sup.adopt(run)
        self._env_failures = 0
        if (self.status.error or "").startswith("cannot start training"):
            self.status.error = None
        run.release()
        if run.withheld:
            self._log_once("withheld", tuple(run.withheld), "environment_withheld", "info",
                           names=run.withheld,
                           hint="secrets stay out of training; pass one with --train-env NAME")
        self.log.info("training_started", iteration=self.status.iteration,
                      run=run.launcher.describe(handle), run_dir=str(run.run_dir),
                      cmd=handle.get("cmd"))
        if run.sandbox is not None:
            self._log_once("sandbox", "on", "sandbox", "info", detail=sandbox.describe(run.sandbox))
        self._report_before = self.layout.report.exists()
        self._start_commit(self.status.iteration, run.run_dir)

    def _training_run(self) -> TrainingRun:
        it = self.status.iteration
        run = TrainingRun(self.layout, it, self.config, get_launcher(self.config.launcher),
                          self.layout.iteration_dir(it), self.post, self.log, self.clock,
                          stopping=self._halting)
        run.devices = self.slots.devices(self) if self.slots is not None else None
        if self._sandbox:
            run.sandbox = sandbox.Policy(
                self.dir, run.run_dir, tuple(map(sandbox.Bind.parse, self.config.sandbox_bind)),
                self.config.allow_network, Path.home(),
                run.devices or os.environ.get("CUDA_VISIBLE_DEVICES"))
        return run

    def _training_finished(self, exit_record: dict[str, Any]) -> None:
        s = self.status
        resumed = (s.training or {}).get("resumed") is True
        s.training = None
        run_dir = self.layout.iteration_dir(s.iteration)
        self._set_aside_forgeries(run_dir)
        if s.objective is None:
            self._settle_objective(rundir.read_result(run_dir))
        value, source = results.measure(run_dir, s.objective)
        row = results.make_row(s.iteration, exit_record, s.objective, value, source)
        row.commit, row.resumed = self._commit_of(row.iteration, run_dir), resumed
        s.history = [r for r in s.history if r.iteration != row.iteration] + [row]
        self._write_ledger()
        self.log.info("training_exited", iteration=row.iteration, outcome=row.outcome,
                      reason=row.reason, returncode=row.returncode, metric=row.metric,
                      value=row.value, source=row.source, leftovers=row.leftovers,
                      commit=row.commit)
        self.model.trained()

    def _start_commit(self, iteration: int, run_dir: Path) -> None:
        """Commit what this iteration runs, on a worker while it trains (git takes ~25 ms)."""
        if self._committer is None:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="provenance",
                                                 initializer=_background)
        self._commits[iteration] = self._committer.submit(self._commit, iteration, run_dir)

    def _set_aside_forgeries(self, run_dir: Path) -> None:
        """Products only their own step may write: a decision or analysis in the run folder, or
        a REPORT.md that appeared while the training ran, are moved aside and named."""
        forged = [run_dir / rundir.DECISION, run_dir / rundir.ANALYSIS]
        if self.layout.report.exists() and not self._report_before:
            forged.append(self.layout.report)
        for path in forged:
            if path.exists() or path.is_symlink():
                dest = run_dir / f"forged.{path.name}"
                with contextlib.suppress(OSError):
                    os.replace(path, dest)
                    self.log.warning("product_set_aside", path=str(path), to=str(dest),
                                     detail="written while the training ran; only the step "
                                            "that owns it may write it")

    def _commit_of(self, iteration: int, run_dir: Path) -> str | None:
        """The iteration's commit id (committed now if the training started under a previous
        daemon); None where git is missing or failed (logged once)."""
        future = self._commits.pop(iteration, None)
        try:
            return future.result(timeout=60) if future else self._commit(iteration, run_dir)
        except (provenance.ProvenanceError, TimeoutError) as exc:
            self._log_once("provenance", str(exc), "provenance_failed", error=str(exc))
            return None

    def _commit(self, iteration: int, run_dir: Path) -> str | None:
        """Provenance: the directory as this iteration ran it, in mlsm's own git repository."""
        commit = provenance.commit_iteration(self.dir, iteration,
                                             f"iteration {iteration}: the files it ran with")
        provenance.record_outer(run_dir, self.dir)
        if commit:
            with contextlib.suppress(OSError):
                write_atomic(run_dir / rundir.COMMIT, f"{commit}\n".encode(), durable=False)
        return commit

    # ----- killing ---------------------------------------------------------------------
    def _recorded(self) -> list[Recorded]:
        out: list[Recorded] = []
        for kind in ("agent", "training"):
            doc = getattr(self.status, kind)
            if isinstance(doc, dict) and doc.get("run_id"):
                run_dir = Path(doc["run_dir"]) if isinstance(doc.get("run_dir"), str) else None
                out.append((kind, doc, run_dir))
        return out

    def _kill_all(self, reason: str, detail: str) -> None:
        """Ask the supervisor to kill the agent's and the training's trees; safe to repeat."""
        self.sup.kill_all(reason, detail)

    # ----- restore and shutdown --------------------------------------------------------
    def _restore(self) -> None:
        """`on_enter` does not run for the initial state: reconcile it explicitly."""
        state = self.state
        self.log.info("daemon_started", state=state.value, iteration=self.status.iteration,
                      pid=os.getpid())
        if state in (State.DONE, State.FAILED):
            self._mark_finished()
            return
        if self.layout.stop.exists() or state == State.STOPPED:
            if self.layout.stop.exists():
                self._stopping = True
            self._kill_all("stopped", "STOP is present")
            return
        if state == State.TRAINING:
            self._restore_training()
        elif state in AGENT_ROLE:
            self._restore_agent_state()

    def _restore_agent_state(self) -> None:
        agent = self.status.agent
        if isinstance(agent, dict) and launcher_of(agent).alive(agent):
            self.log.warning("orphan_agent_killed", pid=agent.get("pid"), role=agent.get("role"))
        self._kill_all("restart", "a previous daemon's agent step is not resumed")
        self.status.agent = None
        self._persist()
        self._run_action()

    def _restore_training(self) -> None:
        doc = self.status.training
        run = self._training_run()
        if not isinstance(doc, dict) or not doc.get("run_id"):
            self.status.training = None
            self._run_action()  # the previous daemon died before launching: launch now
            return
        if not doc.get("interrupted") and run.attach(doc, parse_iso(doc.get("started_at"))):
            self.log.info("training_reattached", pid=doc.get("pid"),
                          iteration=self.status.iteration)
            if self.slots is not None:
                self.slots.force(self)
            self.sup.adopt(run)
            return
        exit_record = rundir.read_exit(run.run_dir)
        if exit_record is not None and not doc.get("interrupted") \
                and exit_record.get("pid") in (doc.get("pid"), None):
            self.log.info("training_ended_while_down", iteration=self.status.iteration)
            exit_record["run_id"] = doc.get("run_id")
            exit_record["leftovers"] = launcher_of(doc).leftovers(doc, self.config.grace)
            self._training_finished(exit_record)
            return
        why = "interrupted by the previous daemon's shutdown" if doc.get("interrupted") \
            else "lost: it ended while no daemon watched and left no exit.json"
        self.log.warning("training_rerun", iteration=self.status.iteration, why=why)
        self._kill_all("restart", why)
        self.status.training = None
        self._run_action()

    def _shutdown(self) -> None:
        self._shutting_down = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        for doc in (self.status.agent, self.status.training):
            if isinstance(doc, dict):
                doc["interrupted"] = True
        self._kill_all("shutdown", "the daemon is shutting down")
        self.status.daemon_pid = None
        self._persist()
        for thread in self._hook_threads:  # let an on-done notification finish (time-limited)
            thread.join(self.config.hook_timeout + self.config.grace + 1)
        if self._committer is not None:
            self._committer.shutdown(wait=True, cancel_futures=True)
        self.log.info("daemon_stopped", state=self.state.value)
        self._sink.close()
        if self._lock_fh is not None:
            self._lock_fh.close()


def _background() -> None:
    """Lower this thread's priority, and so its git processes' (they inherit it): provenance
    must not take a CPU from the training it records."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
