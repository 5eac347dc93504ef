"""status.json as one typed document: its fields, validation, migration, atomic persistence."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mlsm.hooks import rundir
from mlsm.hooks.layout import STATUS
from mlsm.machine.core import results
from mlsm.machine.core.config import OPTIONS_BY_NAME
from mlsm.machine.core.errors import InputError
from mlsm.machine.core.results import Objective, Row
from mlsm.machine.core.states import State
from mlsm.machine.core.store import StoreError, now_iso, write_json_atomic

SCHEMA = 2
STATUS_CAP = 64 << 20  # a status.json larger than this is not ours
_STATES = frozenset(s.value for s in State)


@dataclasses.dataclass
class Status:
    """The persisted state of one experiment. `best` is derived from history and objective."""

    state: str = State.IDLE.value
    previous_state: str | None = None
    iteration: int = 0
    seq: int = 0
    timestamp: str = dataclasses.field(default_factory=now_iso)
    complete: bool = False
    started_at: str | None = None
    started_boot: dict[str, Any] | None = None  # {"boot_id", "t"}: CLOCK_BOOTTIME at start
    given: list[str] | None = None  # the person's own products (None: not known)
    idea_sha: str | None = None  # IDEA.md as the run started from it
    entered_at: str = dataclasses.field(default_factory=now_iso)
    max_iterations: int = 10
    objective: Objective | None = None
    training: dict[str, Any] | None = None  # a launcher's handle, plus the run folder
    agent: dict[str, Any] | None = None  # a launcher's handle, plus role and transcript
    step_attempt: int = 0
    cost_usd: float = 0.0
    history: list[Row] = dataclasses.field(default_factory=list)
    stop_reason: str | None = None
    error: str | None = None
    waiting_for: str | None = None
    failed_state: str | None = None
    daemon_pid: int | None = None

    @property
    def best(self) -> dict[str, Any] | None:
        return results.best_json(self.history, self.objective)

    def to_json(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        doc["objective"] = self.objective.to_json() if self.objective else None
        doc["history"] = [row.to_json() for row in self.history]
        doc["best"] = self.best
        doc["schema"] = SCHEMA
        return doc


def read_status(exp_dir: Path) -> Status | None:
    """The persisted document, None when there is none; a clear InputError when unusable."""
    path = exp_dir / STATUS
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir():
        raise InputError(f"{path} is a directory: remove it (mlsm writes this file itself)")
    raw = rundir.read_capped(path, STATUS_CAP)
    if raw is None:
        raise InputError(f"cannot read {path} (not a regular file, unreadable, or over "
                         f"{STATUS_CAP >> 20} MB): move it aside to start over")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(
            f"{path} is corrupt ({_why(exc)}): restore it, or move it aside "
            f"(mv {path} {path}.bad) to start this experiment over"
        ) from None
    return parse(path, doc)


def _why(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "not JSON"


def parse(path: Path, doc: Any) -> Status:
    """A Status from a decoded document of any schema mlsm has written (or the seed's)."""
    if not isinstance(doc, dict):
        raise InputError(f"{path} is corrupt (not a JSON object): restore it or move it aside")
    if "schema" not in doc:
        return _adopt_seed(path, doc)
    if doc.get("schema") not in (1, SCHEMA):
        raise InputError(f"{path} has schema {_short(doc.get('schema'))}, this mlsm reads schemas "
                         f"1 and {SCHEMA}: use a matching mlsm version")
    problem = _field_problem(doc)
    if problem:
        raise InputError(f"{path} is corrupt ({problem}): restore it or move it aside")
    return _build(doc)


def _build(doc: dict[str, Any]) -> Status:
    status = Status()
    for f in dataclasses.fields(Status):
        if f.name in doc and f.name not in ("objective", "history"):
            setattr(status, f.name, doc[f.name])
    status.history = [Row.from_json(r) for r in doc.get("history") or []]
    status.objective = Objective.from_json(doc.get("objective")) or _schema1_objective(doc)
    return status


def _schema1_objective(doc: dict[str, Any]) -> Objective | None:
    """Schema 1 kept no objective: take the one its best (or its last valued row) used."""
    rows = [doc.get("best"), *reversed(doc.get("history") or [])]
    for row in rows:
        if isinstance(row, dict) and isinstance(row.get("metric"), str) \
                and row.get("goal") in results.GOALS:
            return Objective(row["metric"], row["goal"], "result")
    return None


_TYPES: dict[str, tuple[type, ...]] = {
    "seq": (int,), "max_iterations": (int,), "step_attempt": (int,), "cost_usd": (int, float),
    "complete": (bool,), "history": (list,), "training": (dict,), "agent": (dict,),
    "objective": (dict,), "started_boot": (dict,), "started_at": (str,), "entered_at": (str,),
    "stop_reason": (str,),
    "error": (str,), "waiting_for": (str,), "failed_state": (str,), "daemon_pid": (int,),
    "timestamp": (str,), "given": (list,), "idea_sha": (str,),
}


def _field_problem(doc: dict[str, Any]) -> str | None:
    state, prev = doc.get("state"), doc.get("previous_state")
    if not isinstance(state, str) or state not in _STATES:
        return f"unknown state {_short(state)}"
    if prev is not None and (not isinstance(prev, str) or prev not in _STATES):
        return f"unknown previous_state {_short(prev)}"
    iteration = rundir.whole(doc.get("iteration"))
    if iteration is None or iteration < 0:
        return f"iteration must be a whole number >= 0, got {_short(doc.get('iteration'))}"
    problem = _types_problem(doc, _TYPES, "") or _numbers_problem(doc) or _history_problem(doc)
    for key in ("training", "agent"):
        problem = problem or _handle_problem(key, doc.get(key))
    if problem:
        return problem
    if state == State.STOPPED and prev is None:
        return "state is stopped but previous_state is missing, so it cannot resume"
    return None


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or rundir.whole(value) is not None \
        else "a number too large"
    return text if len(text) <= 80 else text[:77] + "..."


def _types_problem(doc: dict[str, Any], types: dict[str, tuple[type, ...]],
                   prefix: str) -> str | None:
    for key, allowed in types.items():
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, allowed) or (bool not in allowed and isinstance(value, bool)):
            return f"{prefix}{key} has the wrong type ({type(value).__name__})"
    return None


def _numbers_problem(doc: dict[str, Any]) -> str | None:
    """Whole numbers fit 64 bits; cost_usd is a finite number >= 0."""
    for key, allowed in _TYPES.items():
        if allowed == (int,) and doc.get(key) is not None and rundir.whole(doc[key]) is None:
            return f"{key} is not a sane whole number"
    cost = doc.get("cost_usd")
    if cost is not None and (rundir.finite(cost) is None or cost < 0):
        return "cost_usd must be a finite number >= 0"
    return None


def _history_problem(doc: dict[str, Any]) -> str | None:
    for k, row in enumerate(doc.get("history") or []):
        if not isinstance(row, dict):
            return f"history[{k}] is not an object"
        iteration = rundir.whole(row.get("iteration"))
        if iteration is None or iteration < 0 or not isinstance(row.get("outcome"), str):
            return f"history[{k}] needs a whole-number iteration and an outcome"
    return None


_HANDLE_TYPES: dict[str, tuple[type, ...]] = {
    "launcher": (str,), "pid": (int,), "pgid": (int,), "start_ticks": (int,),
    "boot_id": (str,), "run_id": (str,), "cmd": (list,), "started_at": (str,),
    "experiment": (str,), "run_dir": (str,), "role": (str,), "transcript": (str,),
    "job_id": (str, int), "script": (str,), "tag": (str,),
}
_LAUNCHERS = OPTIONS_BY_NAME["launcher"].choices


def _handle_problem(key: str, handle: Any) -> str | None:
    """A recorded process: known fields of the right types, a launcher mlsm has."""
    if not isinstance(handle, dict):
        return None
    problem = _types_problem(handle, _HANDLE_TYPES, f"{key}.")
    for name in ("pid", "pgid", "start_ticks"):
        if problem is None and handle.get(name) is not None and rundir.whole(handle[name]) is None:
            problem = f"{key}.{name} is not a sane whole number"
    launcher = handle.get("launcher")
    if problem is None and launcher is not None and launcher not in _LAUNCHERS:
        problem = f"{key}.launcher {_short(launcher)} is not one of {', '.join(_LAUNCHERS)}"
    return problem


def _adopt_seed(path: Path, doc: dict[str, Any]) -> Status:
    """A status.json in the seed template's shape (iteration, timestamp, complete)."""
    iteration = rundir.whole(doc.get("iteration", 0))
    if iteration is None or iteration < 0:
        raise InputError(f"{path}: iteration must be a whole number, got "
                         f"{_short(doc.get('iteration'))}")
    done = bool(doc.get("complete"))
    return Status(iteration=iteration, complete=done,
                  state=State.DONE.value if done else State.IDLE.value)


def write_status(exp_dir: Path, status: Status) -> None:
    """Persist `status` atomically; StoreError (one sentence) when the disk refuses."""
    status.timestamp = now_iso()
    try:
        write_json_atomic(exp_dir / STATUS, status.to_json())
    except OSError as exc:
        raise StoreError(
            f"cannot write {exp_dir / STATUS} ({exc.strerror or exc}); the last good state is "
            f"kept and the write will be retried: free disk space or fix permissions"
        ) from None
