"""The UI server's memory of the files: overview rows kept fresh by file events, curves."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from mlsm.hooks import rundir
from mlsm.hooks.layout import Layout
from mlsm.machine.core.states import WORKING
from mlsm.machine.views.catalog import Catalog
from mlsm.machine.views.files import metric_rows, read_from, whole_lines
from mlsm.machine.views.status import daemon_running
from mlsm.machine.views.ui import data
from mlsm.machine.views.ui.watch import Watcher

LIST_S = 2.0  # how often roots are listed where there is no inotify (else on its events)
LIVE_S = 2.0  # how often a working experiment's lock and processes are looked at again
QUIET_S = 30.0  # ... a quiet one's lock (is its daemon still holding it?)
ORPHAN_S = 5.0  # ... and the lock of one without a daemon (has one come?)
SWEEP_S = 30.0  # how often every experiment is looked at, file events or not
CURVE_BUDGET = 1500  # points per series sent to a browser
RAW_CAP = 200_000  # points per series kept in memory before it is thinned
_WORKING = frozenset(s.value for s in WORKING)


def stat_of(path: Path | str) -> tuple[int, int, int] | None:
    """(mtime, size, inode), or None when absent: what tells a file changed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def row_json(row: dict[str, Any]) -> str:
    """A row as the JSON the page gets (no NaN), with `<` escaped so it can sit in HTML."""
    text = json.dumps(data.finite_or_none(row), default=str, allow_nan=False)
    return text.replace("<", "\\u003c")


class Board:
    """Every experiment's overview row and its JSON; `poll` returns what changed.

    A quiet experiment costs nothing until an inotify event names it (or the sweep every
    SWEEP_S comes); then two stat calls (status.json, whose inode changes with every atomic
    write, and STOP) decide whether its row is read again. A working one is looked at on
    every poll: its heartbeat and metrics, and every LIVE_S its lock and processes.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.rows: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, str] = {}
        self.paths: dict[str, Path] = {}
        self.version = 0
        self.watcher = Watcher()
        self._sigs: dict[str, tuple[Any, ...]] = {}
        self._locks: dict[str, tuple[bool, float]] = {}
        self._files: dict[str, tuple[str, str]] = {}
        self._next_list = 0.0
        self._next_sweep = 0.0

    def start(self) -> bool:
        """Follow file events from now on; False where there are none (everything polled)."""
        return self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()

    @property
    def busy(self) -> bool:
        """Something must be looked at every tick: a working experiment, one without a
        daemon (has one come?), or one without a watch."""
        return bool(self.watcher.failed) or any(
            r.get("state") in _WORKING or not r.get("daemon_running") for r in self.rows.values())

    def path(self, key: str) -> Path | None:
        """The directory of the experiment with URL key `key`."""
        if key not in self.paths:
            self.paths = self.catalog.keyed()
        return self.paths.get(key)

    def poll(self) -> tuple[list[str], list[str]]:
        """(keys whose rows changed, keys removed); call from one thread at a time.

        Looked at: what file events named, working experiments, directories without a
        watch, and every SWEEP_S everything (events are hints, not the truth)."""
        mono = time.monotonic()
        self.watcher.read()
        dirty, listing, everything = self.watcher.take()
        if listing or everything or mono >= self._next_list:
            self._relist(mono)
        sweep = everything or mono >= self._next_sweep
        if sweep:
            self._next_sweep = mono + SWEEP_S
        changed = [row for key, path in self.paths.items()
                   if self._due(key, path, mono, sweep, dirty)
                   and (row := self._refresh(key, path, mono, force=path in dirty)) is not None]
        removed = [k for k in self.rows if k not in self.paths]
        if changed or removed:
            self._commit(changed, removed)
        return [r["key"] for r in changed], removed

    def _relist(self, mono: float) -> None:
        self.paths = self.catalog.keyed()
        self.watcher.follow(self.paths.values(), [*self.catalog.roots, *self.catalog.waiting()])
        self._next_list = mono + (LIST_S if self.watcher.fileno() < 0 else SWEEP_S)

    def _due(self, key: str, path: Path, mono: float, sweep: bool, dirty: set[Path]) -> bool:
        old = self.rows.get(key)
        return (sweep or old is None or path in dirty or path in self.watcher.failed
                or old.get("state") in _WORKING or mono >= self._locks[key][1])

    def _commit(self, changed: list[dict[str, Any]], removed: list[str]) -> None:
        rows = {**self.rows, **{r["key"]: r for r in changed}}
        blobs = {**self.blobs, **{r["key"]: row_json(r) for r in changed}}
        for key in removed:
            rows.pop(key, None)
            blobs.pop(key, None)
            self._sigs.pop(key, None)
            self._files.pop(key, None)
        self.rows, self.blobs = rows, blobs  # reference swaps: other threads see old or new
        self.version += 1

    def _refresh(self, key: str, path: Path, mono: float,
                 force: bool = False) -> dict[str, Any] | None:
        old = self.rows.get(key)
        working = old is not None and old.get("state") in _WORKING
        running, due = self._locks.get(key, (False, 0.0))
        if mono >= due or force:
            running = daemon_running(path) if os.path.exists(Layout(path).lock) else False
            due = mono + (LIVE_S if working else QUIET_S if running else ORPHAN_S)
            self._locks[key] = (running, due)
        files = self._files.get(key)
        if files is None:
            files = self._files[key] = (str(Layout(path).status), str(Layout(path).stop))
        sig: tuple[Any, ...] = (stat_of(files[0]), os.path.exists(files[1]), running)
        if working and old is not None:
            run_dir = Layout(path).iteration_dir(int(old.get("iteration") or 0))
            sig += (stat_of(run_dir / rundir.HEARTBEAT), stat_of(run_dir / rundir.METRICS),
                    due)  # processes may have died: look again every LIVE_S
        if sig == self._sigs.get(key) and not force:
            return None
        self._sigs[key] = sig
        return data.overview_row(key, path, time.time())

    def full_json(self) -> str:
        """Every row, sorted by name, as one JSON array."""
        keys = sorted(self.rows, key=lambda k: (self.rows[k]["name"], k))
        blobs = self.blobs
        return "[" + ",".join(blobs[k] for k in keys if k in blobs) + "]"


@dataclasses.dataclass
class Track:
    """One iteration's metrics.jsonl as series, read incrementally; `generation` changes when
    the series were rebuilt (file replaced, or thinned past RAW_CAP)."""

    offset: int = 0
    lines: int = 0
    generation: int = 0
    series: dict[str, tuple[list[float], list[float]]] = dataclasses.field(default_factory=dict)

    def update(self, path: Path) -> bool:
        """Read what the file gained; True when something changed."""
        changed = False
        for _ in range(16):  # at most 16 reads of FOLLOW_CAP a call; the rest on the next
            chunk, _size, reset = read_from(path, self.offset)
            if reset:
                self.offset, self.lines, self.series = 0, 0, {}
                self.generation += 1
                changed = True
                continue
            body = whole_lines(chunk)
            if not body:
                return changed
            self._add(body)
            self.offset += len(body)
            changed = True
        return changed

    def _add(self, body: bytes) -> None:
        rows = metric_rows(body, self.lines)
        self.lines += body.count(b"\n")
        for name, (xs, ys) in data.series(rows).items():
            old_x, old_y = self.series.setdefault(name, ([], []))
            old_x += xs
            old_y += ys
            if len(old_x) > RAW_CAP:
                self.series[name] = data.downsample(old_x, old_y, RAW_CAP // 4)
                self.generation += 1


class Curves:
    """Tracks shared by every viewer, keyed by (experiment, iteration)."""

    def __init__(self) -> None:
        self._tracks: dict[tuple[Path, int], Track] = {}

    def track(self, exp_dir: Path, iteration: int) -> Track:
        key = (exp_dir, iteration)
        if key not in self._tracks:
            self._tracks[key] = Track()
        t = self._tracks[key]
        t.update(Layout(exp_dir).iteration_dir(iteration) / rundir.METRICS)
        return t

    def forget(self, exp_dir: Path) -> None:
        """Drop an experiment's tracks (nobody is looking at it)."""
        for key in [k for k in self._tracks if k[0] == exp_dir]:
            del self._tracks[key]


@dataclasses.dataclass
class Sent:
    """What one viewer has of one track: the generation, the raw points it has seen per series,
    and how many points it holds (thinned ones count once)."""

    generation: int = -1
    upto: dict[str, int] = dataclasses.field(default_factory=dict)
    held: dict[str, int] = dataclasses.field(default_factory=dict)

    def needs_reset(self, track: Track) -> bool:
        if self.generation != track.generation:
            return True
        for name, (xs, _ys) in track.series.items():
            new = len(xs) - self.upto.get(name, 0)
            if new > CURVE_BUDGET or self.held.get(name, 0) + new > 3 * CURVE_BUDGET:
                return True
        return False


def points_update(track: Track, sent: Sent) -> dict[str, Any] | None:
    """What a viewer lacks of `track`: all of it thinned (`reset`), or just the new points."""
    reset = sent.needs_reset(track)
    out: dict[str, list[list[float]]] = {}
    for name, (xs, ys) in track.series.items():
        if reset:
            px, py = data.downsample(xs, ys, CURVE_BUDGET)
            sent.held[name] = len(px)
        else:
            have = sent.upto.get(name, 0)
            if len(xs) <= have:
                continue
            px, py = xs[have:], ys[have:]
            sent.held[name] = sent.held.get(name, 0) + len(px)
        sent.upto[name] = len(xs)
        out[name] = [list(px), list(py)]
    sent.generation = track.generation
    if not out and not reset:
        return None
    return {"reset": reset, "series": out}


class Journal:
    """The transitions of one experiment's logs/events.jsonl, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.events: list[dict[str, Any]] = []

    def update(self) -> bool:
        changed = False
        for _ in range(64):
            chunk, _size, reset = read_from(self.path, self.offset)
            if reset:
                self.offset, self.events = 0, []
                changed = True
                continue
            body = whole_lines(chunk)
            if not body:
                return changed
            self.events += data.transitions(body)
            self.offset += len(body)
            changed = True
        return changed
