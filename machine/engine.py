"""The engine: one thread that owns an experiment's state machine and consumes its event queue."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import math
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from transitions import Machine

from mlsm.handlers.agent_step import AgentRun, prepare_step
from mlsm.handlers.agents import get_backend
from mlsm.handlers.agents.base import AgentBackend, AgentOutcome, Role, check_product, read_decision
from mlsm.handlers.inputs import file_signature, read_text_file
from mlsm.handlers.lifecycle import run_hooks
from mlsm.handlers.prompting import history_markdown, instructions
from mlsm.handlers.training import TrainingRun, read_exit, write_kill_note
from mlsm.machine import events as ev
from mlsm.machine import procs
from mlsm.machine.config import Config
from mlsm.machine.errors import InputError, LockedError
from mlsm.machine.events import Event
from mlsm.machine.journal import make_logger
from mlsm.machine.procs import ProcRecord
from mlsm.machine.slots import TrainingSlots
from mlsm.machine.states import RESUMABLE, TRANSITIONS, State
from mlsm.machine.store import (
    StoreError,
    new_status,
    now_iso,
    parse_iso,
    read_json_object,
    read_status,
    remove_stray_temps,
    write_atomic,
    write_json_atomic,
    write_status,
)

RECONCILE_S = 30.0
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
DIRTY_RETRY_S = 2.0
AGENT_ROLE = {State.PLANNING: "plan", State.CODING: "code", State.ANALYZING: "analyze",
              State.REPORTING: "report"}


class _Model:
    """The object transitions drives; `left_<state>` conditions read status.previous_state."""

    state: str

    def __init__(self, engine: Experiment) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        if name.startswith("left_"):
            return lambda *_: self._engine.status.get("previous_state") == name[5:]
        raise AttributeError(name)


def retry_failed(exp_dir: Path) -> str:
    """Send a FAILED run back to the state that failed, attempts reset; no daemon may run."""
    lock = acquire_lock(exp_dir)
    try:
        status = read_status(exp_dir)
        if status is None or status["state"] != State.FAILED:
            state = "not started" if status is None else status["state"]
            raise InputError(f"{exp_dir} is not FAILED ({state}): only a failed run can be retried")
        target = status.get("failed_state") or State.PLANNING.value
        status.update(state=target, error=None, step_attempt=0, agent=None, training=None,
                      failures=0, entered_at=now_iso())
        status["seq"] = int(status.get("seq", 0)) + 1
        write_status(exp_dir, status)
        return str(target)
    finally:
        lock.close()


def acquire_lock(exp_dir: Path) -> IO[str]:
    """Hold `.mlsm/lock` for this process's life; LockedError names the pid that holds it."""
    private = exp_dir / ".mlsm"
    private.mkdir(exist_ok=True)
    fh = (private / "lock").open("a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise LockedError(
            f"another mlsm daemon (pid {holder}) is already running on {exp_dir}: "
            f"stop it first, or use `mlsm status {exp_dir}`"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


class Experiment:
    """One experiment directory: its machine, its queue, its engine and killer threads."""

    def __init__(self, exp_dir: Path, config: Config, *, console: IO[str] | None = sys.stderr,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 backend: AgentBackend | None = None,
                 on_root_replaced: Callable[[Experiment], None] | None = None,
                 on_finished: Callable[[], None] | None = None,
                 slots: TrainingSlots | None = None) -> None:
        self.dir = exp_dir.resolve()
        self.config = config
        self.clock, self.wall = clock, wall
        self.queue: queue.Queue[Event] = queue.Queue()
        self.finished = threading.Event()
        self.status: dict[str, Any] = new_status(config.max_iterations)
        self.current: AgentRun | TrainingRun | None = None
        self.on_root_replaced = on_root_replaced
        self.on_finished = on_finished
        self.slots = slots
        self._console = console
        self._backend = backend
        self._kill_request = threading.Event()
        self._stopping = False
        self._shutting_down = False
        self._dirty = False
        self._retry_timer: threading.Timer | None = None
        self._retry_token = 0
        self._seen_problems: dict[str, Any] = {}
        self._lock_fh: IO[str] | None = None
        self._root_ino: int | None = None
        self._threads: list[threading.Thread] = []
        self._hook_threads: list[threading.Thread] = []
        self._kill_lock = threading.Lock()
        self.log: Any = None
        self.machine: Machine | None = None
        self.model = _Model(self)

    # ----- lifecycle -------------------------------------------------------------------
    def open(self) -> None:
        """Lock the directory, read status.json (errors are InputError), build the machine."""
        self._lock_fh = acquire_lock(self.dir)
        status = read_status(self.dir)
        self.log, self._sink = make_logger(self.dir / "logs", self.dir.name, self._console)
        for tmp in remove_stray_temps(self.dir):
            self.log.info("stray_temp_removed", path=str(tmp))
        if status is not None:
            self.status = status
        self.status["max_iterations"] = self.config.max_iterations
        self.status["daemon_pid"] = os.getpid()
        self._write_config()
        self.machine = Machine(
            model=self.model, states=self._state_defs(), transitions=TRANSITIONS,
            initial=self.status["state"], auto_transitions=False, queued=True,
            send_event=True, before_state_change=self._before_change,
            after_state_change=self._after_change, finalize_event=self._finalize,
        )
        self._root_ino = self._ino()

    def backend(self) -> AgentBackend:
        if self._backend is None:
            self._backend = get_backend(self.config.agent)
        return self._backend

    def _write_config(self) -> None:
        """The resolved config and the agent instructions, for agents and `mlsm watchdog`."""
        doc = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "sources"}
        with contextlib.suppress(OSError):
            write_json_atomic(self.dir / ".mlsm" / "config.json", doc)
            write_atomic(self.dir / ".mlsm" / "instructions.md", instructions().encode())

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
        """Start the engine and killer threads (after `open`)."""
        for target, name in ((self._engine_loop, "engine"), (self._killer_loop, "killer")):
            thread = threading.Thread(target=target, name=f"{name}-{self.dir.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def post(self, event: Event) -> None:
        self.queue.put(event)

    def wake(self) -> None:
        self.post(Event(ev.WAKE))

    def request_stop(self) -> None:
        """STOP appeared: the killer acts now; the engine records STOPPED after."""
        self._stopping = True
        self._kill_request.set()

    def shutdown(self, timeout: float | None = None, wait: bool = True) -> None:
        """Kill children cleanly, persist, leave the run resumable; waits for the engine."""
        self.post(Event(ev.SHUTDOWN))
        if wait:
            self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait for a shutdown begun with `shutdown(wait=False)`."""
        self._threads[0].join(timeout)
        self._kill_request.set()
        for thread in self._threads[1:]:
            thread.join(timeout)

    @property
    def started(self) -> bool:
        return bool(self._threads)

    @property
    def state(self) -> State:
        return State(self.model.state)

    # ----- threads ---------------------------------------------------------------------
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

    def _killer_loop(self) -> None:
        while True:
            self._kill_request.wait()
            self._kill_request.clear()
            if self._shutting_down:
                return
            if self._stopping:
                self._kill_all("stopped", "STOP was requested")
                self.post(Event(ev.STOP))

    # ----- events ----------------------------------------------------------------------
    def _handle(self, event: Event) -> None:
        if event.kind == ev.EXITED:
            self._on_exited(event)
        elif (event.kind == ev.RETRY and event.data.get("token") == self._retry_token
              and self.state.value == event.data.get("state") and not self._stopping):
            self._run_action()

    def _on_exited(self, event: Event) -> None:
        if self.current is None or self.current.rec is None \
                or event.run_id != self.current.rec.run_id:
            return  # an exit from a run we no longer care about
        if self._stopping or (self.dir / "STOP").exists():
            return  # STOP handles it
        self.current = None
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
        if state == State.DONE:
            return
        if self._report_appeared(state):
            self._kill_all("stopped", "REPORT.md appeared")
            self.status["stop_reason"] = self.status.get("stop_reason") or \
                "REPORT.md appeared, which ends the run"
            self.model.reported()
            return
        stop_present = (self.dir / "STOP").exists()
        if stop_present and state in RESUMABLE:
            self._stopping = True
            self._kill_all("stopped", "STOP was requested")
            self.model.stop()
            return
        if not stop_present and state == State.STOPPED:
            self._stopping = False
            self.model.resume()
            return
        if not stop_present and self._stopping and state in RESUMABLE:
            # STOP came and went before the engine saw it: the killer already acted, so
            # record the stop and the resume, which re-runs the interrupted step.
            self._kill_all("stopped", "STOP was requested")
            self.model.stop()
            self._stopping = False
            self.model.resume()
            return
        if state == State.IDLE and not stop_present:
            self._maybe_start()
        elif state == State.CODING and self.status.get("waiting_for") and self.current is None:
            self._to_training()
        elif state in (State.PLANNING, State.CODING, State.TRAINING):
            self._check_wall_budget(state)

    def _report_appeared(self, state: State) -> bool:
        if state == State.REPORTING and self.current is not None:
            return False  # the report agent is writing it; its exit advances the machine
        if state == State.FAILED and not (self.dir / "REPORT.md").exists():
            return False
        return check_product("report", self.dir / "REPORT.md") is None

    def _maybe_start(self) -> None:
        text, problem = read_text_file(self.dir / "IDEA.md", "IDEA.md")
        if problem:
            self._log_once("idea", file_signature(self.dir / "IDEA.md"), "idea_unusable",
                           problem=problem)
            return
        if text is None:
            self._log_once("idea", None, "waiting_for_idea", path=str(self.dir / "IDEA.md"))
            return
        self.status["started_at"] = self.status.get("started_at") or now_iso()
        self.status["train_given"] = (self.dir / "train.py").is_file()
        self.model.start()

    def _log_once(self, key: str, signature: Any, event: str, **kw: Any) -> None:
        if self._seen_problems.get(key, object()) != signature:
            self._seen_problems[key] = signature
            level = "info" if event.startswith("waiting") else "error"
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
        self.status = read_status(self.dir) or new_status(self.config.max_iterations)
        self.status["daemon_pid"] = os.getpid()
        assert self.machine is not None
        self.machine.set_state(self.status["state"])
        self._stopping = False
        self._write_config()
        self.log.warning("root_replaced", path=str(self.dir), state=self.status["state"])
        self._restore()

    def _ino(self) -> int | None:
        try:
            return self.dir.stat().st_ino
        except OSError:
            return None

    # ----- budgets ---------------------------------------------------------------------
    def hours_spent(self) -> float:
        started = parse_iso(self.status.get("started_at"))
        return 0.0 if started is None else max(0.0, (self.wall() - started) / 3600)

    def _budget_left_s(self) -> float:
        """Seconds until --max-hours runs out (wake then), at least a short moment."""
        if not self.config.max_hours or self.status.get("started_at") is None \
                or self.state not in (State.PLANNING, State.CODING, State.TRAINING):
            return RECONCILE_S
        left = (self.config.max_hours - self.hours_spent()) * 3600
        return left + 0.05 if left > 0 else 1.0

    def _check_wall_budget(self, state: State) -> None:
        if not self.config.max_hours or self.hours_spent() < self.config.max_hours:
            return
        reason = f"the wall-time budget of {self.config.max_hours:g} h (--max-hours) is spent"
        if state == State.TRAINING:
            run = self.current
            if isinstance(run, TrainingRun) and run.rec is not None and not run.killing \
                    and not run.stopping():
                self.log.warning("budget_spent", detail=reason)
                threading.Thread(target=run.kill, args=("max_hours", reason), daemon=True).start()
            return
        self._kill_all("max_hours", reason)
        self.status["stop_reason"] = reason
        self.model.conclude()

    def _budget_reason(self) -> str | None:
        """A sentence naming the first experiment-wide budget that is spent, if any."""
        s, c = self.status, self.config
        if s["iteration"] >= c.max_iterations:
            return f"reached --max-iterations {c.max_iterations}"
        if s.get("failures", 0) >= c.max_failures:
            return (f"{s['failures']} consecutive iterations failed "
                    f"(--max-failures {c.max_failures})")
        if c.patience and s.get("best") and s.get("since_best", 0) >= c.patience:
            return (f"no improvement of the best metric for {s['since_best']} iterations "
                    f"(--patience {c.patience})")
        if c.max_hours and self.hours_spent() >= c.max_hours:
            return f"the wall-time budget of {c.max_hours:g} h (--max-hours) is spent"
        return self._cost_reason()

    def _cost_reason(self) -> str | None:
        c = self.config
        if c.max_cost_usd and self.status.get("cost_usd", 0.0) >= c.max_cost_usd:
            return (f"the agent cost budget of ${c.max_cost_usd:g} (--max-cost-usd) is spent "
                    f"(${self.status['cost_usd']:.4f} so far)")
        return None

    # ----- transitions callbacks -------------------------------------------------------
    def _before_change(self, event: Any) -> None:
        src, dest = event.transition.source, event.transition.dest
        self.status["state"] = dest
        self.status["entered_at"] = now_iso()
        if dest == State.STOPPED:
            self.status["previous_state"] = src
        elif src == State.STOPPED:
            self.status["previous_state"] = None
        if dest == State.FAILED:
            self.status["failed_state"] = src  # where `mlsm retry` sends the run back
        if dest != src:
            self.status["step_attempt"] = 0
        if src == State.TRAINING and dest != src and self.slots is not None:
            self.slots.release(self)
        # The iteration moves with the transition itself, so one persist records both.
        if event.event.name == "planned":
            self.status["iteration"] = 1  # iteration 1 is the first CODING → TRAINING → ANALYZING
        elif event.event.name == "iterate":
            self.status["iteration"] += 1
        if dest in (State.STOPPED, State.DONE, State.FAILED):
            self._kill_all("stopped", f"the run is {dest}")
            self.status["agent"] = self.status["training"] = None
        self.log.info("transition", trigger=event.event.name, src=src, dest=dest,
                      iteration=self.status["iteration"])

    def _after_change(self, event: Any) -> None:
        dest = event.transition.dest
        self._hook_threads = [t for t in self._hook_threads if t.is_alive()]
        self._hook_threads += run_hooks(self.dir, dest, event.transition.source,
                                        self.status["iteration"], self.config.hook_timeout,
                                        self.config.grace, self.log)

    def _finalize(self, event: Any) -> None:
        self._persist()

    def _persist(self) -> None:
        self.status["seq"] = int(self.status.get("seq", 0)) + 1
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
            self.status["complete"] = True
            self.log.info("run_done", reason=self.status.get("stop_reason"))
        else:
            self.log.error("run_failed", error=self.status.get("error"))
        self._mark_finished()

    def _mark_finished(self) -> None:
        self.finished.set()
        if self.on_finished:
            self.on_finished()

    def _enter_coding(self, event: Any) -> None:
        if self.status["iteration"] == 1 and check_product("code", self.dir / "train.py") is None:
            self.log.info("train_given", detail="train.py runs unchanged as the baseline")
            self._to_training()
            return
        self._start_agent("code")

    def _enter_agent_state(self, event: Any) -> None:
        role: Role = AGENT_ROLE[self.state]  # type: ignore[assignment]  # table holds Roles
        if role == "plan" and check_product("plan", self.dir / "PLAN.md") is None:
            self.log.info("plan_given", detail="PLAN.md is present: planning skipped")
            self.model.planned()
            return
        if role == "analyze" and check_product("analyze", self._run_dir("analyze")
                                               / "decision.json") is None:
            self._decide()
            return
        self._start_agent(role)

    # ----- agent steps -----------------------------------------------------------------
    def _run_dir(self, role: str) -> Path:
        if role == "plan":
            return self.dir / "logs" / "plan"
        if role == "report":
            return self.dir / "logs" / "report"
        return self.dir / "logs" / f"iter_{self.status['iteration']:03d}"

    def _prompt_context(self) -> dict[str, Any]:
        idea, _ = read_text_file(self.dir / "IDEA.md", "IDEA.md")
        return {"idea": idea or "", "history": history_markdown(self.status.get("history", []))}

    def _start_agent(self, role: Role) -> None:
        if self._stopping:
            return
        try:
            step = prepare_step(role, self.dir, self._run_dir(role), self.status["iteration"],
                                self.status.get("step_attempt", 0) + 1, self.config,
                                self._prompt_context())
        except OSError as exc:
            self._environment_error(f"cannot prepare the {role} step", exc)
            return
        run = AgentRun(self.backend(), step, self.post, self.log, self.clock,
                       stopping=lambda: self._stopping or self._shutting_down)
        try:
            rec = run.spawn()
        except OSError as exc:
            if exc.errno in DISK_ERRNOS:
                self._environment_error(f"cannot start the {role} agent", exc)
                return
            self._step_failed(role, AgentOutcome(
                ok=False, reason=f"the {role} agent could not start: {exc.strerror or exc}"))
            return
        self.current = run
        self.status["agent"] = {**rec.to_json(), "role": role, "transcript": str(step.transcript)}
        self._persist()
        self.log.info("agent_started", role=role, pid=rec.pid, attempt=step.attempt,
                      transcript=str(step.transcript))
        run.watch()

    def _agent_finished(self, outcome: AgentOutcome) -> None:
        role: Role = AGENT_ROLE[self.state]  # type: ignore[assignment]
        self.status["agent"] = None
        self.status["cost_usd"] = round(self.status.get("cost_usd", 0.0) + outcome.cost_usd, 6)
        self.log.info("agent_exited", role=role, ok=outcome.ok, reason=outcome.reason,
                      turns=outcome.turns, cost_usd=outcome.cost_usd)
        if not outcome.ok:
            self._step_failed(role, outcome)
            return
        self.status["error"] = None
        cost = self._cost_reason()
        if cost and role in ("plan", "code"):
            self.status["stop_reason"] = cost
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
        attempt = self.status.get("step_attempt", 0) + 1
        self.status["step_attempt"] = attempt
        self.status["agent"] = None
        self.status["error"] = outcome.reason
        if outcome.retryable and attempt <= self.config.agent_retries:
            delay = self.config.retry_backoff * 2 ** (attempt - 1)
            self.log.warning("agent_step_failed", role=role, attempt=attempt,
                             retry_in_s=delay, reason=outcome.reason)
            self._persist()
            self._schedule_retry(delay)
            return
        tries = f"after {attempt} attempt{'s' if attempt > 1 else ''}"
        self.status["error"] = f"the {role} step failed {tries}: {outcome.reason}"
        self.model.fail()

    def _environment_error(self, what: str, exc: OSError) -> None:
        """A full disk or the like: not the agent's fault; say so once and retry the action."""
        sentence = (f"{what}: {exc.strerror or exc}; retrying every {DIRTY_RETRY_S:g} s "
                    f"(free disk space or fix permissions in {self.dir})")
        if self.status.get("error") != sentence:
            self.status["error"] = sentence
            self.log.error("environment_error", detail=sentence)
        self._schedule_retry(DIRTY_RETRY_S)

    def _schedule_retry(self, delay: float) -> None:
        self._retry_token += 1
        event = Event(ev.RETRY, data={"token": self._retry_token, "state": self.state.value})
        self._retry_timer = threading.Timer(delay, self.post, args=(event,))
        self._retry_timer.daemon = True
        self._retry_timer.start()

    # ----- analysis and iterations -----------------------------------------------------
    def _decide(self) -> None:
        decision = read_decision(self._run_dir("analyze") / "decision.json")
        self.log.info("decision", iteration=self.status["iteration"],
                      decision=decision["decision"], reason=decision["reason"])
        if decision["decision"] == "finish":
            self.status["stop_reason"] = f"the agent decided to finish: {decision['reason']}"
            self.model.conclude()
            return
        budget = self._budget_reason()
        if budget:
            self.status["stop_reason"] = budget
            self.model.conclude()
            return
        self.model.iterate()

    # ----- training --------------------------------------------------------------------
    def _to_training(self) -> None:
        """CODING is done: train now, or wait in CODING for a slot (--max-parallel)."""
        if self.slots is not None and not self.slots.try_acquire(self, self.wake):
            if not self.status.get("waiting_for"):
                self.status["waiting_for"] = (
                    f"a training slot: {self.slots.in_use} of --max-parallel "
                    f"{self.slots.limit} experiments are training")
                self.log.info("waiting_for_slot", detail=self.status["waiting_for"])
                self._persist()
            return
        self.status["waiting_for"] = None
        self.model.coded()

    def _enter_training(self, event: Any) -> None:
        if self._stopping:
            return
        run = self._training_run()
        try:
            rec = run.spawn()
        except OSError as exc:
            self._environment_error("cannot start training", exc)
            return
        self.status["training"] = {**rec.to_json(), "run_dir": str(run.run_dir)}
        self._persist()
        if self._dirty:  # identity not on disk: never start what a restart could start twice
            run.cancel()
            self.status["training"] = None
            self._schedule_retry(DIRTY_RETRY_S)
            return
        self.current = run
        if (self.status.get("error") or "").startswith("cannot start training"):
            self.status["error"] = None
        run.release()
        self.log.info("training_started", iteration=self.status["iteration"], pid=rec.pid,
                      run_dir=str(run.run_dir))

    def _training_run(self) -> TrainingRun:
        return TrainingRun(self.dir, self._run_dir("code"), self.status["iteration"],
                           self.config, self.post, self.log, self.clock,
                           stopping=lambda: self._stopping or self._shutting_down)

    def _training_finished(self, exit_record: dict[str, Any]) -> None:
        self.status["training"] = None
        row = self._history_row(exit_record)
        self.status.setdefault("history", []).append(row)
        self._update_best(row)
        self.log.info("training_exited", **{k: v for k, v in row.items() if k != "iteration"},
                      iteration=row["iteration"])
        self.model.trained()

    def _history_row(self, exit_record: dict[str, Any]) -> dict[str, Any]:
        run_dir = self._run_dir("code")
        ok = exit_record.get("returncode") == 0 and exit_record.get("reason") == "exited"
        row: dict[str, Any] = {
            "iteration": self.status["iteration"], "outcome": "ok" if ok else "failed",
            "reason": exit_record.get("reason"), "returncode": exit_record.get("returncode"),
            "duration_s": exit_record.get("duration_s"), "metric": None, "value": None,
            "goal": None,
        }
        result = read_json_object(run_dir / "result.json") or {}
        metrics = result.get("metrics")
        if isinstance(metrics, dict) and metrics:
            name = self.config.objective or result.get("objective") or next(iter(metrics))
            value = metrics.get(name)
            row["metric"], row["goal"] = name, self.config.goal or result.get("goal") or "minimize"
            if isinstance(value, int | float) and math.isfinite(value):
                row["value"] = float(value)
        if ok and row["value"] is None:
            row["outcome"] = "no_result"
        return row

    def _update_best(self, row: dict[str, Any]) -> None:
        s = self.status
        # A run that exits cleanly without a result is not a failure (a plain script may not
        # call hooks.result); crashes, kills and non-zero exits are.
        s["failures"] = s.get("failures", 0) + 1 if row["outcome"] == "failed" else 0
        value, best = row["value"], s.get("best")
        if value is None:
            if best:
                s["since_best"] = s.get("since_best", 0) + 1
            return
        better = best is None or (value < best["value"] if row["goal"] == "minimize"
                                  else value > best["value"])
        if better:
            s["best"] = {"iteration": row["iteration"], "metric": row["metric"],
                         "value": value, "goal": row["goal"]}
            s["since_best"] = 0
        else:
            s["since_best"] = s.get("since_best", 0) + 1

    # ----- killing ---------------------------------------------------------------------
    def _records(self) -> list[tuple[str, ProcRecord]]:
        out = []
        for key in ("agent", "training"):
            doc = self.status.get(key)
            if isinstance(doc, dict):
                out.append((key, ProcRecord.from_json(doc)))
        run = self.current
        if run is not None and run.rec is not None and all(
                r.run_id != run.rec.run_id for _, r in out):
            out.append(("training" if isinstance(run, TrainingRun) else "agent", run.rec))
        return out

    def _kill_all(self, reason: str, detail: str) -> None:
        """Kill the agent's and the training's trees (TERM, grace, KILL); safe to repeat."""
        with self._kill_lock:  # the killer and the engine's sweep never kill in parallel
            self._kill_all_locked(reason, detail)

    def _kill_all_locked(self, reason: str, detail: str) -> None:
        run = self.current
        if run is not None:
            run.abandon()
        for key, rec in self._records():
            if key == "training":
                run_dir = Path((self.status.get("training") or {}).get("run_dir")
                               or self._run_dir("code"))
                if procs.same_process(rec):
                    write_kill_note(run_dir, reason, detail)
            found = procs.kill_tree(rec, self.config.grace)
            if found:
                self.log.info("tree_killed", kind=key, pid=rec.pid, processes=found,
                              reason=reason)
        if run is not None and run.popen is not None:
            with contextlib.suppress(Exception):
                procs.wait_exit(run.popen, 1)
        self.current = None

    # ----- restore and shutdown --------------------------------------------------------
    def _restore(self) -> None:
        """`on_enter` does not run for the initial state: reconcile it explicitly."""
        state = self.state
        self.log.info("daemon_started", state=state.value, iteration=self.status["iteration"],
                      pid=os.getpid())
        if state in (State.DONE, State.FAILED):
            self._mark_finished()
            return
        if (self.dir / "STOP").exists() or state == State.STOPPED:
            if (self.dir / "STOP").exists():
                self._stopping = True
            self._kill_all("stopped", "STOP is present")
            return
        if state == State.TRAINING:
            self._restore_training()
        elif state in AGENT_ROLE:
            self._restore_agent_state()

    def _restore_agent_state(self) -> None:
        agent = self.status.get("agent")
        if isinstance(agent, dict):
            rec = ProcRecord.from_json(agent)
            if procs.same_process(rec):
                self.log.warning("orphan_agent_killed", pid=rec.pid, role=agent.get("role"))
                procs.kill_tree(rec, self.config.grace)
            self.status["agent"] = None
        self._persist()
        self._run_action()

    def _restore_training(self) -> None:
        doc = self.status.get("training")
        run = self._training_run()
        if not isinstance(doc, dict):
            self._run_action()  # the previous daemon died before launching: launch now
            return
        rec = ProcRecord.from_json(doc)
        if not doc.get("interrupted") and procs.same_process(rec):
            self.log.info("training_reattached", pid=rec.pid, iteration=self.status["iteration"])
            if self.slots is not None:
                self.slots.force(self)
            self.current = run
            run.attach(rec, parse_iso(rec.started_at))
            return
        exit_record = read_exit(run.run_dir)
        if exit_record is not None and not doc.get("interrupted") \
                and exit_record.get("pid") in (rec.pid, None):
            self.log.info("training_ended_while_down", iteration=self.status["iteration"])
            self.current = None
            self._training_finished(exit_record)
            return
        why = "interrupted by the previous daemon's shutdown" if doc.get("interrupted") \
            else "lost: it ended while no daemon watched and left no exit.json"
        self.log.warning("training_rerun", iteration=self.status["iteration"], why=why)
        self.status["training"] = None
        self._run_action()

    def _shutdown(self) -> None:
        self._shutting_down = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        for key in ("agent", "training"):
            if isinstance(self.status.get(key), dict):
                self.status[key]["interrupted"] = True
        self._kill_all("shutdown", "the daemon is shutting down")
        self.status["daemon_pid"] = None
        self._persist()
        for thread in self._hook_threads:  # let an on-done notification finish (time-limited)
            thread.join(self.config.hook_timeout + self.config.grace + 1)
        self.log.info("daemon_stopped", state=self.state.value)
        self._sink.close()
        if self._lock_fh is not None:
            self._lock_fh.close()
