"""status.json as one typed document: its fields, validation, migration, atomic persistence."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mlsm.hooks import rundir
from mlsm.hooks.layout import STATUS
from mlsm.machine.core import results
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
        raise InputError(f"{path} has schema {doc.get('schema')!r}, this mlsm reads schemas "
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
    status.history = [Row.from_json(r) for r in doc.get("history") or [] if isinstance(r, dict)]
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
    if doc.get("state") not in _STATES:
        return f"unknown state {doc.get('state')!r}"
    prev = doc.get("previous_state")
    if prev is not None and prev not in _STATES:
        return f"unknown previous_state {prev!r}"
    iteration = doc.get("iteration")
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        return f"iteration must be a whole number >= 0, got {iteration!r}"
    for key, types in _TYPES.items():
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            return f"{key} has the wrong type ({type(value).__name__})"
    if doc.get("state") == State.STOPPED and prev is None:
        return "state is stopped but previous_state is missing, so it cannot resume"
    return None


def _adopt_seed(path: Path, doc: dict[str, Any]) -> Status:
    """A status.json in the seed template's shape (iteration, timestamp, complete)."""
    iteration = doc.get("iteration", 0)
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise InputError(f"{path}: iteration must be a whole number, got {iteration!r}")
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
