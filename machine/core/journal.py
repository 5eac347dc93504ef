"""Per-experiment structlog loggers: logs/events.jsonl, logs/runner.log, and the console."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def _hidden(*modules: str) -> Iterator[None]:
    """Make `modules` unimportable for the duration (an import of one raises ImportError)."""
    hidden = [m for m in modules if m not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            sys.modules.pop(name, None)


# structlog imports rich (and, through it, pygments and attrs) whenever rich is installed, for
# pretty tracebacks this module never asks for: 4 MB of the idle daemon's memory
# (tests/bench_core.py). rich stays importable afterwards for the views that draw with it.
with _hidden("rich", "better_exceptions"):
    import structlog

_console_lock = threading.Lock()
_LEVEL_ORDER = {"debug": 0, "info": 1, "warning": 2, "error": 3, "critical": 4}


class ExperimentSink:
    """A structlog 'logger' that writes each event dict to the journal, the log and the console."""

    def __init__(self, logs_dir: Path, console: IO[str] | None, console_level: str = "info"):
        self.logs_dir = logs_dir
        self.console = console
        self.console_level = _LEVEL_ORDER.get(console_level, 1)
        self._lock = threading.Lock()
        self._files: tuple[IO[str], IO[str]] | None = None
        self._failed = False
        self._renderer = structlog.dev.ConsoleRenderer(
            colors=bool(console and console.isatty()), pad_event_to=0,
            exception_formatter=structlog.dev.plain_traceback,
        )

    def _open(self) -> tuple[IO[str], IO[str]]:
        if self._files is None:
            self.logs_dir.mkdir(exist_ok=True)  # never recreate a deleted experiment root
            self._files = (
                (self.logs_dir / "events.jsonl").open("a", encoding="utf-8", buffering=1),
                (self.logs_dir / "runner.log").open("a", encoding="utf-8", buffering=1),
            )
        return self._files

    def write(self, **event: Any) -> None:
        with self._lock:
            self._write_files(event)
        level = _LEVEL_ORDER.get(str(event.get("level", "info")), 1)
        if self.console is not None and level >= self.console_level:
            line = self._renderer(None, "", dict(event))
            with _console_lock:
                print(line, file=self.console, flush=True)

    def _write_files(self, event: dict[str, Any]) -> None:
        try:
            journal, runner = self._open()
            journal.write(json.dumps(event, default=str, sort_keys=False) + "\n")
            runner.write(_human(event) + "\n")
            self._failed = False
        except OSError as exc:
            if not self._failed:  # one complaint per outage, not one per event
                print(f"mlsm: cannot write logs in {self.logs_dir}: {exc}", file=sys.stderr)
            self._failed = True
            self._files = None

    def close(self) -> None:
        with self._lock:
            if self._files:
                for fh in self._files:
                    fh.close()
                self._files = None

    msg = info = debug = warning = error = critical = write


def _human(event: dict[str, Any]) -> str:
    rest = " ".join(
        f"{k}={v}" for k, v in event.items() if k not in ("timestamp", "level", "event", "exp")
    )
    return f"{event.get('timestamp', '')} {str(event.get('level', '')).upper():7} " \
           f"{event.get('event', '')} {rest}".rstrip()


def _timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    t = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
    event["timestamp"] = f"{stamp}.{int(t % 1 * 1000):03d}Z"
    return event


def _finalise(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event


def make_logger(
    logs_dir: Path, exp: str, console: IO[str] | None = sys.stderr, console_level: str = "info"
) -> tuple[Any, ExperimentSink]:
    """A bound structlog logger for one experiment, and its sink (close it at exit)."""
    sink = ExperimentSink(logs_dir, console, console_level)
    logger = structlog.wrap_logger(
        sink,
        processors=[structlog.processors.add_log_level, _timestamp,
                    structlog.processors.format_exc_info, _finalise],
        cache_logger_on_first_use=False,
    )
    return logger.bind(exp=exp), sink
