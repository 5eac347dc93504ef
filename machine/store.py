"""status.json: read and validated, written atomically; the experiment's persisted state."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from mlsm.machine.errors import InputError, MlsmError
from mlsm.machine.states import State

SCHEMA = 1
STATUS = "status.json"


class StoreError(MlsmError):
    """status.json could not be written; the last good file is still on disk."""


def now_iso() -> str:
    """The current UTC time as ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def parse_iso(text: str | None) -> float | None:
    """An ISO 8601 timestamp as Unix seconds (None stays None)."""
    if not text:
        return None
    return dt.datetime.fromisoformat(text).timestamp()


def new_status(max_iterations: int) -> dict[str, Any]:
    """The document of an experiment that has not started."""
    return {
        "schema": SCHEMA, "seq": 0, "state": State.IDLE.value, "previous_state": None,
        "iteration": 0, "timestamp": now_iso(), "complete": False, "started_at": None,
        "entered_at": now_iso(), "max_iterations": max_iterations, "best": None,
        "training": None, "agent": None, "step_attempt": 0, "cost_usd": 0.0,
        "failures": 0, "since_best": 0, "history": [], "stop_reason": None, "error": None,
        "waiting_for": None, "failed_state": None,
        "daemon_pid": None,
    }


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, os.replace, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when absent, unreadable, torn, or not an object."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON object line of a file; torn, blank or non-JSON lines are skipped."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    rows: list[dict[str, Any]] = []
    for line in lines:
        if not line.lstrip().startswith("{"):
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def write_json_atomic(path: Path, obj: Any) -> None:
    """Serialise `obj` and write it with `write_atomic`."""
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def remove_stray_temps(exp_dir: Path) -> list[Path]:
    """Delete temp files a crash left behind (ours are named `.<name>.<pid>.tmp`)."""
    removed = []
    for tmp in exp_dir.glob(f".{STATUS}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def read_status(exp_dir: Path) -> dict[str, Any] | None:
    """The persisted document, None when there is none; a clear InputError when unusable."""
    path = exp_dir / STATUS
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir():
        raise InputError(f"{path} is a directory: remove it (mlsm writes this file itself)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror}): fix its permissions") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{path} is corrupt ({_why(exc)}): restore it, or move it aside "
            f"(mv {path} {path}.bad) to start this experiment over"
        ) from None
    return _validate(path, doc)


def _why(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return "not UTF-8 text"


def _validate(path: Path, doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise InputError(f"{path} is corrupt (not a JSON object): restore it or move it aside")
    if "schema" not in doc:
        return _adopt_seed(doc)
    if doc.get("schema") != SCHEMA:
        raise InputError(
            f"{path} has schema {doc.get('schema')!r}, this mlsm reads schema {SCHEMA}: "
            f"use a matching mlsm version"
        )
    problem = _field_problem(doc)
    if problem:
        raise InputError(f"{path} is corrupt ({problem}): restore it or move it aside")
    merged = new_status(int(doc.get("max_iterations") or 10))
    merged.update(doc)
    return merged


def _field_problem(doc: dict[str, Any]) -> str | None:
    states = {s.value for s in State}
    if doc.get("state") not in states:
        return f"unknown state {doc.get('state')!r}"
    prev = doc.get("previous_state")
    if prev is not None and prev not in states:
        return f"unknown previous_state {prev!r}"
    iteration = doc.get("iteration")
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        return f"iteration must be a whole number >= 0, got {iteration!r}"
    for key in ("training", "agent", "best"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            return f"{key} must be an object or null, got {doc[key]!r}"
    return None


def _adopt_seed(doc: dict[str, Any]) -> dict[str, Any]:
    """A status.json in the seed template's shape (iteration, timestamp, complete)."""
    iteration = doc.get("iteration", 0)
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise InputError(f"status.json: iteration must be a whole number, got {iteration!r}")
    status = new_status(10)
    status["iteration"] = iteration
    status["state"] = State.DONE.value if doc.get("complete") else State.IDLE.value
    status["complete"] = bool(doc.get("complete"))
    return status


def write_status(exp_dir: Path, status: dict[str, Any]) -> None:
    """Persist `status` atomically; StoreError (one sentence) when the disk refuses."""
    status["timestamp"] = now_iso()
    try:
        write_json_atomic(exp_dir / STATUS, status)
    except OSError as exc:
        raise StoreError(
            f"cannot write {exp_dir / STATUS} ({exc.strerror or exc}); the last good state is "
            f"kept and the write will be retried: free disk space or fix permissions"
        ) from None
