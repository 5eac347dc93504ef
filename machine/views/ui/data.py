"""What the web UI shows, as pure functions of the files: rows, pages, curves, timeline."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlsm.hooks import rundir
from mlsm.hooks.layout import Layout, iteration_dir_name
from mlsm.machine.core import results
from mlsm.machine.core.errors import InputError
from mlsm.machine.core.status import read_status
from mlsm.machine.core.store import parse_iso
from mlsm.machine.views.files import MetricRow, read_text
from mlsm.machine.views.status import snapshot

ROW_KEYS = ("state", "previous_state", "iteration", "max_iterations", "best", "objective",
            "cost_usd", "stop_reason", "error", "waiting_for", "daemon_running", "stop_file",
            "time_in_state_s", "heartbeat_age_s", "step", "total_steps", "eta_s",
            "latest_metrics", "agent", "training")
DIFF_CAP = 1 << 20


def overview_row(key: str, exp_dir: Path, now: float) -> dict[str, Any]:
    """One overview row: what `mlsm status --json` says, plus the key and the time it was read.

    An unreadable experiment is a row in state "unreadable" whose error says why.
    """
    row: dict[str, Any] = {"key": key, "name": exp_dir.name, "dir": str(exp_dir), "at": now}
    try:
        doc = snapshot(exp_dir, now)
    except InputError as exc:
        return {**row, "state": "unreadable", "error": str(exc)}
    row.update({k: doc.get(k) for k in ROW_KEYS})
    return row


def history(exp_dir: Path) -> list[dict[str, Any]]:
    """The iteration table (the rows results.tsv is written from), the best one marked."""
    status = read_status(exp_dir)
    if status is None:
        return []
    top = results.best(status.history, status.objective)
    out = []
    for row in status.history:
        doc = row.to_json()
        doc["best"] = top is not None and row.iteration == top.iteration
        doc["commit"] = (row.commit or "")[:12] or None
        out.append(doc)
    return out


def experiment_doc(key: str, exp_dir: Path, now: float,
                   events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Everything the experiment page shows except curves and logs (they stream); `events`
    are the journal's transitions."""
    layout = Layout(exp_dir)
    doc = overview_row(key, exp_dir, now)
    doc["history"] = history(exp_dir) if doc["state"] != "unreadable" else []
    doc["timeline"] = timeline(events, now)
    doc["iterations"] = iterations(exp_dir)
    doc["files"] = {path.name: path.is_file()
                    for path in (layout.plan, layout.report, layout.idea, layout.train)}
    return doc


def iterations(exp_dir: Path) -> list[int]:
    """The iterations that have a run folder (logs/iter_NNN), in order."""
    try:
        names = [p.name for p in Layout(exp_dir).logs.iterdir()]
    except OSError:
        return []
    return sorted(int(n[5:]) for n in names if n.startswith("iter_") and n[5:].isdigit())


def transitions(journal: bytes) -> list[dict[str, Any]]:
    """The `transition` events of logs/events.jsonl, in order (other lines skipped unparsed)."""
    out = []
    for line in journal.splitlines():
        if b'"transition"' not in line:
            continue
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(event, dict) and event.get("event") == "transition":
            out.append(event)
    return out


def timeline(events: Sequence[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Segments of time spent in each state: state, start, end (None while in it), iteration,
    and the trigger that entered it."""
    segments: list[dict[str, Any]] = []
    for event in events:
        start = parse_iso(str(event.get("timestamp", "")).replace("Z", "+00:00"))
        if start is None:
            continue
        if segments:
            segments[-1]["end"] = start
        segments.append({"state": event.get("dest"), "start": start, "end": None,
                         "iteration": event.get("iteration"), "trigger": event.get("trigger")})
    if segments and segments[-1]["state"] in ("done", "failed", "stopped"):
        segments[-1]["end"] = segments[-1]["start"]
    return segments


def downsample(xs: Sequence[float], ys: Sequence[float],
               budget: int) -> tuple[list[float], list[float]]:
    """At most about `budget` points that keep the shape: per bucket its first, min and max
    points in x order (spikes survive, which averaging would hide)."""
    n = len(xs)
    if n <= budget or budget < 6:
        return list(xs), list(ys)
    buckets = max(1, budget // 3)
    size = n / buckets
    out_x: list[float] = []
    out_y: list[float] = []
    for b in range(buckets):
        lo, hi = int(b * size), min(n, int((b + 1) * size))
        if lo >= hi:
            continue
        span = range(lo, hi)
        keep = sorted({lo, min(span, key=ys.__getitem__), max(span, key=ys.__getitem__)})
        out_x += [xs[i] for i in keep]
        out_y += [ys[i] for i in keep]
    if out_x[-1] != xs[-1]:
        out_x.append(xs[-1])
        out_y.append(ys[-1])
    return out_x, out_y


def series(rows: Sequence[MetricRow]) -> dict[str, tuple[list[float], list[float]]]:
    """Per metric name, its (steps, values)."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for step, _t, values in rows:
        for name, value in values.items():
            xs, ys = out.setdefault(name, ([], []))
            xs.append(step)
            ys.append(value)
    return out


def train_diff(exp_dir: Path, a: int, b: int) -> str:
    """A unified diff of the train.py that iterations `a` and `b` ran (their snapshots)."""
    texts = []
    for it in (a, b):
        path = Layout(exp_dir).iteration_dir(it) / rundir.TRAIN
        text = read_text(path, DIFF_CAP)
        if text is None:
            raise InputError(f"iteration {it} has no train.py snapshot")
        texts.append(text)
    lines = difflib.unified_diff(
        texts[0].splitlines(keepends=True), texts[1].splitlines(keepends=True),
        f"{iteration_dir_name(a)}/train.py", f"{iteration_dir_name(b)}/train.py")
    return "".join(lines) or "(no change)\n"


def finite_or_none(value: Any) -> Any:
    """JSON cannot carry NaN: replace non-finite floats with None, deeply."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value
