"""The training shim: wait for the daemon's go, run the training, record its exit in exit.json."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
NOT_STARTED = 75  # EX_TEMPFAIL: the daemon vanished before it recorded us; nothing ran


def _write_atomic(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _kill_note(run_dir: Path) -> dict[str, Any]:
    """Why the daemon is killing us, if it said so before it did (kill.json)."""
    try:
        note: dict[str, Any] = json.loads((run_dir / "kill.json").read_text(encoding="utf-8"))
        return note
    except (OSError, ValueError):
        return {}


def exit_record(returncode: int | None, started: float, run_dir: Path,
                detail: str | None = None) -> dict[str, Any]:
    """The exit.json document for a child that ended with `returncode`."""
    sig = None
    reason = "exited"
    if returncode is not None and returncode < 0:
        sig = signal.Signals(-returncode).name
        reason = "signal"
    record: dict[str, Any] = {
        "returncode": returncode, "signal": sig, "reason": reason, "detail": detail,
        "started_at": started, "ended_at": time.time(), "duration_s": time.time() - started,
        "pid": os.getpid(),
    }
    note = _kill_note(run_dir)
    if note.get("reason"):
        record["reason"] = note["reason"]
        record["detail"] = note.get("detail") or detail
        record["seconds"] = note.get("seconds")
    return record


def _wait_for_go() -> bool:
    """The daemon writes 'go' once our identity is persisted; EOF first means it died."""
    line = sys.stdin.buffer.readline()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return line.strip() == b"go"


def run(run_dir: Path, argv: list[str]) -> int:
    """Run `argv` to completion, forwarding signals, and record how it ended."""
    if not _wait_for_go():
        return NOT_STARTED
    started = time.time()
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    except OSError as exc:
        message = f"cannot start training command {argv[0]!r}: {exc.strerror or exc}"
        print(f"mlsm: {message}", file=sys.stderr, flush=True)
        _write_atomic(run_dir / "exit.json", exit_record(127, started, run_dir, message))
        return 127

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):
            child.send_signal(signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    returncode = child.wait()
    _write_atomic(run_dir / "exit.json", exit_record(returncode, started, run_dir))
    return returncode if returncode >= 0 else 128 - returncode


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m mlsm.hooks.shim RUN_DIR -- COMMAND...", file=sys.stderr)
        return 2
    return run(Path(args[0]), args[2:])


if __name__ == "__main__":
    sys.exit(main())
