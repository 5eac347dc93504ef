"""Start over on purpose: move an attempt's files into `.mlsm/archive/<time>/`, keep yours."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterable
from pathlib import Path

from mlsm.hooks import layout
from mlsm.hooks.layout import Layout

PRODUCTS = (layout.PLAN, layout.TRAIN, layout.NOTES, layout.REPORT)
"""Files an attempt's agent may have written; the person's own copies (listed in status.json's
`given` when the run started) stay."""
MLSM_FILES = (layout.STATUS, layout.LEDGER, layout.LOGS, layout.STOP, layout.RETRY,
              layout.RESTART)


def archive_dir(exp_dir: Path, label: str = "") -> Path:
    """A new, unused `.mlsm/archive/<UTC time>[-label]/`."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    base = Layout(exp_dir).private / "archive" / (stamp + (f"-{label}" if label else ""))
    path, k = base, 2
    while path.exists():
        path, k = base.with_name(f"{base.name}.{k}"), k + 1
    path.mkdir(parents=True)
    return path


def archive_attempt(exp_dir: Path, given: Iterable[str] | None) -> Path:
    """Move the attempt's own files aside (never IDEA.md, mlsm.toml, or a product the person
    wrote; when that is not known, every product but REPORT.md stays); returns the folder."""
    kept = set(PRODUCTS) - {layout.REPORT} if given is None else set(given)
    names = [*MLSM_FILES, *(p for p in PRODUCTS if p not in kept)]
    names += [p.name for p in exp_dir.glob("report_*.png")]
    return _move(exp_dir, names, archive_dir(exp_dir))


def archive_stale_logs(exp_dir: Path) -> Path | None:
    """logs/ left by an attempt whose status.json is gone: never read them as this run's."""
    logs = Layout(exp_dir).logs
    stale = [p for p in logs.glob("*") if p.is_dir()] if logs.is_dir() else []
    if not stale:
        return None
    return _move(logs, [p.name for p in stale], archive_dir(exp_dir, "stale-logs"))


def _move(folder: Path, names: Iterable[str], dest: Path) -> Path:
    for name in names:
        src = folder / name
        if src.exists() or src.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                os.replace(src, dest / name)
    return dest
