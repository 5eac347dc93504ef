"""`--notify URL`: a JSON POST (Slack-compatible `text`) when a run ends, is killed or runs out.

The notifier follows each experiment's logs/events.jsonl on its own thread and posts from a
second one, with retries and a timeout; an engine never waits for it. It reads files only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from mlsm.hooks.layout import Layout
from mlsm.machine.core.errors import ConfigError, InputError
from mlsm.machine.core.status import Status, read_status
from mlsm.machine.core.store import parse_iso
from mlsm.machine.views.catalog import Catalog
from mlsm.machine.views.files import read_from, whole_lines

POLL_S = 0.5
TIMEOUT_S = 10.0
RETRIES = 4  # attempts in all
BACKOFF_S = 1.0  # doubles after each failed attempt
DRAIN_S = 20.0  # the most a stopping daemon waits for messages still queued
BUDGET_FLAGS = ("--max-iterations", "--max-failures", "--patience", "--max-hours",
                "--max-cost-usd")
KINDS = {"done": "✅ DONE", "failed": "❌ FAILED", "stale_heartbeat": "💤 stale heartbeat",
         "budget_stop": "⏱ budget spent"}


def check_url(url: str) -> str:
    """The URL, when it is http(s) with a host; else a ConfigError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--notify needs an http:// or https:// URL, got {_shown(url)!r}")
    return url


def _shown(url: str) -> str:
    """A webhook URL is a secret: show its host only."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}/…" if parts.hostname else "…"


def is_budget(reason: str | None) -> bool:
    """A stop_reason that names a budget flag (results.budget_reason's sentences)."""
    return bool(reason) and any(flag in str(reason) for flag in BUDGET_FLAGS)


def message(kind: str, exp_dir: Path, status: Status | None,
            event: dict[str, Any]) -> dict[str, Any]:
    """The JSON body: `text` for Slack-compatible hooks, and the fields for everything else."""
    name = exp_dir.name
    best = status.best if status else None
    reason = {"done": status.stop_reason if status else None,
              "failed": status.error if status else event.get("error"),
              "stale_heartbeat": event.get("detail"),
              "budget_stop": status.stop_reason if status else None}.get(kind)
    iteration = event.get("iteration", status.iteration if status else None)
    text = f"{KINDS.get(kind, kind)}: {name}"
    if iteration is not None:
        text += f" (iteration {iteration})"
    if best:
        text += f" · best {best['metric']}={best['value']:.6g} @ {best['iteration']}"
    if reason:
        text += f" · {str(reason)[:300]}"
    return {"text": text, "kind": kind, "experiment": name, "dir": str(exp_dir),
            "state": status.state if status else None, "iteration": iteration, "best": best,
            "reason": reason, "event": event.get("event"), "timestamp": event.get("timestamp"),
            "host": socket.gethostname()}


def classify(event: dict[str, Any]) -> str | None:
    """Which notification an event is (None: none). A budget stop is only a candidate: its
    reason is read from status.json once the transition is persisted."""
    name = event.get("event")
    if name == "run_done":
        return "done"
    if name == "run_failed":
        return "failed"
    if name == "training_killed" and event.get("reason") == "stale_heartbeat":
        return "stale_heartbeat"
    if name == "transition" and event.get("trigger") == "conclude":
        return "budget_stop?"
    return None


@dataclasses.dataclass
class _Follow:
    offset: int
    ino: int | None = None
    pending: list[tuple[float, str, dict[str, Any]]] = dataclasses.field(default_factory=list)


def post(url: str, body: dict[str, Any], timeout: float = TIMEOUT_S, retries: int = RETRIES,
         backoff: float = BACKOFF_S, stop: threading.Event | None = None) -> str | None:
    """POST `body` as JSON; retry on a network error, a timeout, 429 or 5xx. None when
    delivered, else the last problem."""
    data = json.dumps(body, default=str).encode()
    problem = None
    for attempt in range(retries):
        request = urllib.request.Request(url, data=data, method="POST", headers={
            "content-type": "application/json", "user-agent": "mlsm-notify"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read(4096)
            return None
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
            if exc.code != 429 and exc.code < 500:
                return problem  # the receiver refused the message itself: do not insist
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            problem = str(getattr(exc, "reason", exc))
        if attempt + 1 < retries and stop is not None and stop.wait(backoff * 2 ** attempt):
            backoff = 0.0  # stopping: the remaining attempts go out without waiting
    return problem


class Notifier:
    """Follows the journals of a catalog's experiments and posts what matters to `url`."""

    def __init__(self, catalog: Catalog, url: str, console: IO[str] | None = sys.stderr,
                 backoff: float = BACKOFF_S, timeout: float = TIMEOUT_S) -> None:
        self.catalog = catalog
        self.url = check_url(url)
        self.console = console
        self.backoff, self.timeout = backoff, timeout
        self.since = time.time()
        self._files: dict[Path, _Follow] = {}
        self._outbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.sent: list[dict[str, Any]] = []

    def start(self) -> None:
        for d in self.catalog.experiments():
            self._follow(d)  # existing journals count from their end
        for target, name in ((self._watch, "mlsm-notify-watch"), (self._send, "mlsm-notify")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        if self._threads:
            self._threads[0].join(5)
            self._outbox.put(None)
            self._threads[1].join(DRAIN_S)

    # ----- following the journals --------------------------------------------------------
    def _follow(self, d: Path) -> _Follow:
        if d not in self._files:
            try:
                st = os.stat(Layout(d).journal)
                fresh = st.st_mtime >= self.since
                self._files[d] = _Follow(0 if fresh else st.st_size, st.st_ino)
            except OSError:
                self._files[d] = _Follow(0)
        return self._files[d]

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            self.poll()
        self.poll()

    def poll(self) -> None:
        """Read what every journal gained; queue the notifications it holds."""
        for d in self.catalog.experiments():
            follow = self._follow(d)
            for event in self._new_events(d, follow):
                kind = classify(event)
                if kind is not None:
                    follow.pending.append((time.monotonic(), kind, event))
            follow.pending = [p for p in follow.pending if not self._settle(d, *p)]

    def _new_events(self, d: Path, follow: _Follow) -> list[dict[str, Any]]:
        path = Layout(d).journal
        with contextlib.suppress(OSError):
            ino = os.stat(path).st_ino
            if follow.ino is not None and ino != follow.ino:
                follow.offset = 0  # a new journal (the directory was replaced)
            follow.ino = ino
        chunk, _size, reset = read_from(path, follow.offset)
        if reset:
            follow.offset = 0
            chunk, _size, _ = read_from(path, 0)
        body = whole_lines(chunk)
        follow.offset += len(body)
        events = []
        for line in body.splitlines():
            with contextlib.suppress(ValueError, RecursionError):
                event = json.loads(line)
                stamp = parse_iso(str(event.get("timestamp", "")).replace("Z", "+00:00"))
                if isinstance(event, dict) and (stamp is None or stamp >= self.since - 1):
                    events.append(event)
        return events

    def _settle(self, d: Path, seen: float, kind: str, event: dict[str, Any]) -> bool:
        """Queue `event`'s message once its status is on disk; True when done with it."""
        status = _status(d)
        if kind == "budget_stop?":
            persisted = status is not None and status.state not in ("planning", "coding",
                                                                     "analyzing")
            if not persisted and time.monotonic() - seen < 10:
                return False  # the transition is journaled before status.json is written
            if not is_budget(status.stop_reason if status else None):
                return True
            kind = "budget_stop"
        self._outbox.put(message(kind, d, status, event))
        return True

    # ----- sending -----------------------------------------------------------------------
    def _send(self) -> None:
        while True:
            body = self._outbox.get()
            if body is None:
                return
            problem = post(self.url, body, self.timeout, RETRIES, self.backoff, self._stop)
            if problem is None:
                self.sent.append(body)
            elif self.console is not None:
                print(f"mlsm: notification to {_shown(self.url)} not delivered ({problem}): "
                      f"{body['text']}", file=self.console, flush=True)


def _status(d: Path) -> Status | None:
    try:
        return read_status(d)
    except InputError:
        return None
