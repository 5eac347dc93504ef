"""Durable files: atomic writes, tolerant JSON readers, ISO timestamps, stray temp cleanup."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from mlsm.hooks import rundir
from mlsm.machine.core.errors import MlsmError


class StoreError(MlsmError):
    """status.json could not be written; the last good file is still on disk."""


def now_iso() -> str:
    """The current UTC time as ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def parse_iso(text: str | None) -> float | None:
    """An ISO 8601 timestamp as Unix seconds (None stays None)."""
    if not text or not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError):
        return None  # a garbage timestamp is treated as absent, never as an engine error


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Temp file in the same directory, fsync, os.replace, fsync the directory (the fsyncs
    only when `durable`: a file derived from another needs no trip to the disk)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if not durable:
        return
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when absent, special, oversized, torn, or not an object."""
    return rundir.read_object(path)


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


def remove_stray_temps(*folders: Path) -> list[Path]:
    """Delete temp files a crash left behind (ours are named `.<name>.<pid>.tmp`)."""
    removed = []
    for tmp in (t for folder in folders for t in folder.glob(".*.*.tmp")):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


