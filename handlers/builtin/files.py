"""Tolerant reads of the files a run leaves, and atomic writes of the agent's products."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mlsm.machine.core.store import read_jsonl, write_atomic

_SPECIAL = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf,
            "infinity": math.inf, "-infinity": -math.inf}


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """Write a product atomically (temp file beside it, fsync, os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def write_text(path: Path, text: str) -> None:
    """Write a text product atomically."""
    write_atomic_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write strict JSON atomically; NaN or infinity in `obj` is a bug and raises."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is absent, unreadable or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def read_object(path: Path) -> dict[str, Any] | None:
    """Like `read_json`, but only a JSON object counts."""
    doc = read_json(path)
    return doc if isinstance(doc, dict) else None


def number(value: Any) -> float | None:
    """A metric value as a float: numbers, and the strings "nan", "inf", "-inf"; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return _SPECIAL.get(value.strip().lower())
    return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a torn or bad line (a killed run) is skipped."""
    return read_jsonl(path)


def last_error_line(path: Path, limit: int = 240) -> str | None:
    """The line of stderr that best says why a run failed: the last exception line, else the
    last non-empty line; None when the file is absent or empty."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    errors = [line for line in lines if _looks_like_exception(line)]
    line = errors[-1] if errors else lines[-1]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _looks_like_exception(line: str) -> bool:
    head = line.split(":", 1)[0]
    return (":" in line and " " not in head
            and (head.endswith(("Error", "Exception", "Interrupt")) or head == "Killed"))
