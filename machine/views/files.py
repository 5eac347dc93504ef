"""Readers the views share: paths kept inside an experiment, followed files, metric lines."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from mlsm.hooks import rundir

FOLLOW_CAP = 4 << 20  # the most a follower reads of a growing file in one go
_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
MetricRow = tuple[float, float | None, dict[str, float]]  # (step, wall time, finite values)


def inside(exp_dir: Path, rel: str) -> Path | None:
    """`exp_dir/rel` when it is a regular file inside the directory, else None.

    Refused: absolute paths, `..`, hidden components (`.mlsm`, `.git`), and any symlink on
    the way, so nothing outside the experiment (or its private state) can be named.
    """
    if not rel or "\x00" in rel or rel.startswith(("/", "\\")):
        return None
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or p.startswith(".") for p in parts):
        return None
    path = exp_dir
    for part in parts:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            return None
    return path if stat.S_ISREG(mode) else None


def read_from(path: Path, offset: int, cap: int = FOLLOW_CAP) -> tuple[bytes, int, bool]:
    """(bytes, size, reset): what a file gained past `offset`, bounded and never blocking.

    `reset` is True when the file shrank or was replaced (start again from 0); a symlink or a
    special file reads as empty.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b"", 0, offset > 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b"", 0, offset > 0
        reset = st.st_size < offset
        start = 0 if reset else offset
        os.lseek(fd, start, os.SEEK_SET)
        return os.read(fd, min(cap, max(0, st.st_size - start))), st.st_size, reset
    except OSError:
        return b"", 0, False
    finally:
        os.close(fd)


def whole_lines(data: bytes) -> bytes:
    """`data` up to its last newline: a half-written last line waits for the next read."""
    end = data.rfind(b"\n")
    return data[:end + 1] if end >= 0 else b""


def metric_rows(data: bytes, first_index: int = 0) -> list[MetricRow]:
    """metrics.jsonl lines as (step, time, finite values); a line without a step gets its
    index. Torn or foreign lines are skipped."""
    rows: list[MetricRow] = []
    for k, line in enumerate(data.splitlines()):
        try:
            doc = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(doc, dict):
            continue
        step = rundir.finite(doc.get("step"))
        values = {key: v for key, raw in doc.items()
                  if key not in ("step", "t", "total_steps")
                  and (v := rundir.finite(raw)) is not None}
        if values:
            rows.append((first_index + k if step is None else step,
                         rundir.finite(doc.get("t")), values))
    return rows


def image_refs(markdown: str) -> list[str]:
    """The relative targets of Markdown images (`![plot](curves.png)`), in order, once each."""
    out: list[str] = []
    for target in _IMAGE.findall(markdown):
        if "://" not in target and not target.startswith(("data:", "/")) and target not in out:
            out.append(target)
    return out


def read_text(path: Path, cap: int = 1 << 20) -> str | None:
    """A small text file (bounded, no symlinks, no special files), or None."""
    data = rundir.read_capped(path, cap)
    return None if data is None else data.decode("utf-8", "replace")


def json_object(path: Path) -> dict[str, Any] | None:
    """A small JSON object file, or None."""
    return rundir.read_object(path)
