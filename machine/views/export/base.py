"""Export an experiment to a tracker from its files, after the fact, remembering what went out.

A target (`mlflow.py`, `wandb.py`) implements `Target`; `Exporter.sync` walks the files and
calls it. What was exported is kept in `.mlsm/export_<target>.json` (per destination), written
after every step, so a restarted daemon, or `mlsm export` run again, continues where the last
one stopped instead of sending anything twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Protocol

from mlsm.hooks import rundir
from mlsm.hooks.layout import Layout
from mlsm.machine.core.results import Row
from mlsm.machine.core.states import State
from mlsm.machine.core.status import Status, read_status
from mlsm.machine.core.store import write_json_atomic
from mlsm.machine.views.files import (
    MetricRow,
    image_refs,
    inside,
    metric_rows,
    read_from,
    read_text,
    whole_lines,
)

BATCH = 1000  # metric rows per call to the target
FINAL = frozenset({State.DONE.value, State.FAILED.value})


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What a target needs to name and describe one experiment."""

    dir: Path
    name: str
    status: Status


@dataclasses.dataclass(frozen=True)
class Finished:
    """One iteration as it ended: its row, params, result, decision and files to attach."""

    row: Row | None
    params: dict[str, Any]
    result: dict[str, float]
    tags: dict[str, str]
    artifacts: list[Path]
    ended: float | None = None


class Target(Protocol):
    """One tracker. Ids are strings the target chooses; every call may raise."""

    name: str
    destination: str  # the tracking URI or folder: state is kept per destination
    live: bool  # metrics of a running iteration go out while it trains (else when it ends)

    def open_parent(self, exp: Experiment, known: str | None) -> str:
        """Create (or, given `known`, reopen) the experiment's parent run; its id."""

    def open_iteration(self, exp: Experiment, parent: str, iteration: int,
                       known: str | None, started: float | None) -> str:
        """Create (or reopen) the run of one iteration, nested under `parent`; its id.
        `started` is when its training began (Unix seconds), where known."""

    def log_metrics(self, run: str, rows: list[MetricRow]) -> None:
        """Record metric rows (step, wall time, values) in the iteration's run."""

    def close_iteration(self, run: str, done: Finished) -> None:
        """Params, result, tags and artifacts of a finished iteration; end its run."""

    def close_parent(self, parent: str, exp: Experiment, tags: dict[str, str],
                     artifacts: list[Path]) -> None:
        """The experiment ended (DONE or FAILED): its tags and report; end the parent."""

    def set_state(self, parent: str, state: str) -> None:
        """The experiment's state changed (where the tracker can show it live)."""

    def shutdown(self) -> None:
        """Release what the target holds open (the daemon is stopping)."""


class Ledger:
    """`.mlsm/export_<target>.json`: per destination, the parent, each iteration's run and
    how far its metrics.jsonl was sent, and what ended."""

    def __init__(self, exp_dir: Path, target: str, destination: str) -> None:
        self.path = Layout(exp_dir).private / f"export_{target}.json"
        self.destination = destination
        self._all = rundir.read_object(self.path) or {}
        self.doc: dict[str, Any] = self._all.get(destination) or {"iterations": {}}

    def iteration(self, iteration: int) -> dict[str, Any]:
        entry: dict[str, Any] = self.doc["iterations"].setdefault(str(iteration), {})
        return entry

    def save(self) -> None:
        self._all[self.destination] = self.doc
        self.path.parent.mkdir(exist_ok=True)
        write_json_atomic(self.path, self._all)


class Exporter:
    """Follows one experiment's files into one target; `sync` is one pass, safe to repeat."""

    def __init__(self, exp_dir: Path, target: Target) -> None:
        self.dir = exp_dir
        self.target = target
        self.ledger = Ledger(exp_dir, target.name, target.destination)
        self._attached: set[str] = set()  # runs opened (or reopened) by this process

    def sync(self) -> bool:
        """Export what is new; True when the experiment has ended and everything went out."""
        status = read_status(self.dir)
        if status is None:
            return False
        exp = Experiment(self.dir, self.dir.name, status)
        doc = self.ledger.doc
        if doc.get("parent") not in self._attached:
            doc["parent"] = self.target.open_parent(exp, doc.get("parent"))
            self._attached.add(doc["parent"])
            self.ledger.save()
        if doc.get("state") != status.state:
            self.target.set_state(doc["parent"], status.state)
            doc["state"] = status.state
            self.ledger.save()
        for it in self._iterations(status):
            self._iteration(exp, it)
        return self._maybe_end(exp)

    def _iterations(self, status: Status) -> list[int]:
        known = {row.iteration for row in status.history}
        if status.training is not None and status.iteration > 0:
            known.add(status.iteration)
        return sorted(known)

    def _iteration(self, exp: Experiment, it: int) -> None:
        entry = self.ledger.iteration(it)
        row = next((r for r in exp.status.history if r.iteration == it), None)
        if entry.get("closed") or (row is None and not self.target.live):
            return
        run_dir = Layout(self.dir).iteration_dir(it)
        if entry.get("run") not in self._attached:
            entry["run"] = self.target.open_iteration(exp, self.ledger.doc["parent"], it,
                                                      entry.get("run"), started(run_dir))
            self._attached.add(entry["run"])
            self.ledger.save()
        if self._replaced(entry, run_dir / rundir.METRICS):
            entry = self._new_attempt(exp, it, entry)
        self._metrics(entry, run_dir / rundir.METRICS)
        if row is not None and _settled(exp.status, row):
            self.target.close_iteration(entry["run"], finished(run_dir, row))
            entry["closed"] = True
            self.ledger.save()

    @staticmethod
    def _replaced(entry: dict[str, Any], path: Path) -> bool:
        """metrics.jsonl is another file than the one followed (an interrupted attempt was
        moved aside and the step runs again)."""
        try:
            st = path.stat()
        except OSError:
            return False
        if "ino" not in entry:
            entry["ino"] = st.st_ino
            return False
        return bool(st.st_ino != entry["ino"] or st.st_size < int(entry.get("offset", 0)))

    def _new_attempt(self, exp: Experiment, it: int, entry: dict[str, Any]) -> dict[str, Any]:
        """End the interrupted attempt's run and start a fresh one for the rerun."""
        self.target.close_iteration(entry["run"], Finished(
            None, {}, {}, {"mlsm.outcome": "interrupted", "mlsm.iteration": str(it)}, []))
        attempts = [*entry.get("attempts", []), entry["run"]]
        fresh: dict[str, Any] = {"attempts": attempts, "run": self.target.open_iteration(
            exp, self.ledger.doc["parent"], it, None, None)}
        self._attached.add(fresh["run"])
        self.ledger.doc["iterations"][str(it)] = fresh
        self.ledger.save()
        return fresh

    def _metrics(self, entry: dict[str, Any], path: Path) -> None:
        while True:
            chunk, _size, _reset = read_from(path, int(entry.get("offset", 0)))
            body = whole_lines(chunk)
            if not body:
                return
            rows = metric_rows(body, int(entry.get("lines", 0)))
            for k in range(0, len(rows), BATCH):
                self.target.log_metrics(entry["run"], rows[k:k + BATCH])
            entry["offset"] = int(entry.get("offset", 0)) + len(body)
            entry["lines"] = int(entry.get("lines", 0)) + body.count(b"\n")
            entry.setdefault("ino", path.stat().st_ino)
            self.ledger.save()

    def _maybe_end(self, exp: Experiment) -> bool:
        doc = self.ledger.doc
        state = exp.status.state
        if state not in FINAL:
            doc.pop("ended", None)
            return False
        if doc.get("ended") == exp.status.seq:
            return True
        if any(not self.ledger.iteration(r.iteration).get("closed")
               for r in exp.status.history):
            return False
        self.target.close_parent(doc["parent"], exp, parent_tags(exp.status),
                                 report_files(self.dir))
        doc["ended"] = exp.status.seq
        self.ledger.save()
        return True


def _settled(status: Status, row: Row) -> bool:
    """An iteration is complete when its decision is in, or the experiment moved past it."""
    return (row.decision is not None or status.iteration > row.iteration
            or status.state in FINAL or status.state == State.REPORTING)


def started(run_dir: Path) -> float | None:
    """When the iteration's training began: exit.json, else the first metrics line."""
    record = rundir.read_exit(run_dir) or {}
    t = rundir.finite(record.get("started_at"))
    if t is None:
        chunk, _size, _reset = read_from(run_dir / rundir.METRICS, 0, 4096)
        rows = metric_rows(whole_lines(chunk))
        t = rows[0][1] if rows else None
    return t


def finished(run_dir: Path, row: Row) -> Finished:
    """Everything to record about an iteration that has ended."""
    params = rundir.read_object(run_dir / rundir.PARAMS_USED) or \
        rundir.read_object(run_dir / rundir.PARAMS) or {}
    metrics = (rundir.read_result(run_dir) or {}).get("metrics") or {}
    result = {k: v for k, raw in metrics.items() if (v := rundir.finite(raw)) is not None}
    tags = {"mlsm.outcome": row.outcome, "mlsm.exit": str(row.reason or ""),
            "mlsm.iteration": str(row.iteration)}
    if row.decision:
        tags["mlsm.decision"] = row.decision
        tags["mlsm.decision_reason"] = (row.decision_reason or "")[:500]
    if row.commit:
        tags["mlsm.commit"] = row.commit
    files = [run_dir / name for name in (rundir.TRAIN, rundir.RESULT, rundir.EXIT,
                                         rundir.DECISION, rundir.ANALYSIS)]
    ended = rundir.finite((rundir.read_exit(run_dir) or {}).get("ended_at"))
    return Finished(row, {str(k): v for k, v in params.items()}, result, tags,
                    [f for f in files if f.is_file() and not f.is_symlink()], ended)


def parent_tags(status: Status) -> dict[str, str]:
    tags = {"mlsm.state": status.state, "mlsm.iterations": str(status.iteration)}
    if status.stop_reason:
        tags["mlsm.stop_reason"] = status.stop_reason[:500]
    if status.error:
        tags["mlsm.error"] = status.error[:500]
    best = status.best
    if best:
        tags["mlsm.best_iteration"] = str(best["iteration"])
        tags["mlsm.best"] = f"{best['metric']}={best['value']:.6g}"
    return tags


def report_files(exp_dir: Path) -> list[Path]:
    """REPORT.md, the images it shows, PLAN.md and results.tsv (those that exist)."""
    layout = Layout(exp_dir)
    out = [p for p in (layout.report, layout.plan, layout.ledger)
           if p.is_file() and not p.is_symlink()]
    text = read_text(layout.report) or ""
    for ref in image_refs(text):
        path = inside(exp_dir, ref)
        if path is not None and path not in out:
            out.append(path)
    return out


def sync_quietly(exporter: Exporter) -> tuple[bool, str | None]:
    """One pass; (ended, the error it met or None)."""
    try:
        return exporter.sync(), None
    except Exception as exc:  # a tracker is foreign code on the network: any failure
        with contextlib.suppress(OSError):
            exporter.ledger.doc["last_error"] = f"{type(exc).__name__}: {exc}"[:1000]
            exporter.ledger.save()
        return False, f"{type(exc).__name__}: {exc}"

